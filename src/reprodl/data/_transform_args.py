"""The checks on a transform's arguments and inputs (package-private to ``reprodl.data``).

Each raises :class:`~reprodl.errors.TransformError` naming the transform, the argument or input, its
value and what it should be. The transforms themselves are in :mod:`reprodl.data.transforms`.
"""

from __future__ import annotations

from typing import Any

import torch

from reprodl import keys
from reprodl.errors import TransformError


def _pair(size: Any, who: str, arg: str) -> tuple[int, int]:
    values = [size, size] if isinstance(size, int) and not isinstance(size, bool) else size
    try:
        a, b = (int(v) for v in values)
        if a <= 0 or b <= 0 or any(isinstance(v, bool) or int(v) != v for v in values):
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        raise TransformError(
            f"{who} {arg} should be a positive integer or a pair of them, but got {arg}={size!r}"
        ) from None
    if max(a, b) > keys.MAX_IMAGE_SIDE:
        raise TransformError(
            f"{who} {arg} should be at most {keys.MAX_IMAGE_SIDE} pixels per side, but got "
            f"{arg}={size!r}: reprodl refuses sizes that large (a record could exhaust memory)"
        )
    return a, b


def _floats(value: Any, who: str, arg: str) -> tuple[float, ...]:
    values = [value] if isinstance(value, (int, float)) else value
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        out = ()
    if not out:
        raise TransformError(
            f"{who} {arg} should be a number or a list of numbers (one per channel), but got {arg}={value!r}"
        )
    return out


def _per_channel(values: tuple[float, ...]) -> torch.Tensor:
    t = torch.tensor(values, dtype=torch.float32)
    return t.reshape(-1, 1, 1) if len(values) > 1 else t.reshape(())


def _probability(p: Any) -> float:
    try:
        value = float(p)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0.0 <= value <= 1.0:
        raise TransformError(f"p should be a probability between 0 and 1, but got p={p!r}")
    return value


def _is_image(x: Any) -> bool:
    return hasattr(x, "mode") and hasattr(x, "size") and hasattr(x, "transpose") and not isinstance(x, torch.Tensor)


def _need_image(x: Any, who: object) -> None:
    if not _is_image(x):
        raise TransformError(
            f"{type(who).__name__} takes a PIL image, but got {type(x).__name__}: put it before "
            "ToTensor in a Compose, and use it with ImageDataSet (TensorDataSet samples are tensors)"
        )


def _need_tensor(x: Any, who: object) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    if _is_image(x):
        raise TransformError(
            f"{type(who).__name__} takes a (C, H, W) tensor, but got a PIL image: put ToTensor() before it in a Compose"
        )
    return torch.as_tensor(x)


def _fits(x: torch.Tensor, size: tuple[int, int], who: object) -> tuple[int, int]:
    h, w = size
    if x.dim() < 2 or x.shape[-2] < h or x.shape[-1] < w:
        raise TransformError(
            f"{type(who).__name__} of (height, width) {size} does not fit a sample of shape {tuple(x.shape)}"
        )
    return h, w
