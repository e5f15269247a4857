"""Reading images of any Pillow mode into float arrays, and checking image files.

No torch here: creators and the CLI use these without paying for a torch import.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from reprodl.errors import InputDataError

GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F", "La"}
SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


_CHANNELS = {"L": 1, "RGB": 3, "RGBA": 4}


def channels_for_mode(mode: str) -> int:
    return _CHANNELS.get(mode, 0) or _bad_mode(mode)


def _bad_mode(mode: str) -> int:
    raise InputDataError(f"target image mode {mode!r} is not supported: use 'L', 'RGB' or 'RGBA'")


def target_mode_for(source_mode: str) -> str:
    """The mode reprodl stores a source mode as: gray stays one channel, colour becomes RGB."""
    return "L" if source_mode in GRAY_MODES else "RGB"


_INV_255 = np.float32(1 / 255)


def to_array(image: Image.Image, mode: str, out: np.ndarray | None = None) -> np.ndarray:
    """Float32 array (C, H, W) in [0, 1] from an image of any Pillow mode.

    16-bit and 32-bit integer images are scaled by 65535 rather than clipped at 255 (which
    Pillow's ``convert("L")`` would do); palette, CMYK, LA and RGBA images go through
    Pillow's own conversion; alpha is dropped unless ``mode == "RGBA"``.

    With ``out`` (a float32 array of the result's shape, e.g. one row of a batch) the
    values are written there and ``out`` is returned: the same values, no temporaries.
    """
    channels_for_mode(mode)
    src = image.mode
    if src in SIXTEEN_BIT or src == "F":
        arr = np.asarray(image, dtype=np.float32)
        if src != "F":
            arr = np.clip(arr / 65535.0, 0.0, 1.0)
        arr = arr[None]
        if mode != "L":
            arr = np.repeat(arr, channels_for_mode(mode), axis=0)
            if mode == "RGBA":
                arr[3] = 1.0
        if out is not None:
            _check_out(out, arr.shape)
            out[...] = arr
            return out
        return np.ascontiguousarray(arr)
    if src != mode:
        image = convert(image, mode)
    arr = np.asarray(image, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[None]
    else:
        arr = arr.transpose(2, 0, 1)
    # One pass, uint8 -> float32 times float32(1/255): bit for bit the same as
    # ``arr.astype(np.float32) * np.float32(1 / 255)`` without the temporary.
    if out is not None:
        _check_out(out, arr.shape)
        return np.multiply(arr, _INV_255, out=out)
    return np.multiply(arr, _INV_255, dtype=np.float32)


def _check_out(out: np.ndarray, shape: tuple[int, ...]) -> None:
    if out.shape != shape or out.dtype != np.float32:
        raise ValueError(f"out is {out.dtype} {out.shape}; this image needs float32 {shape}")


def convert(image: Image.Image, mode: str) -> Image.Image:
    """The image in ``mode`` ("L", "RGB", "RGBA"), as :func:`to_array` reads it.

    16-bit and float images are scaled to 8 bits (not clipped at 255); a palette image's
    transparency is applied before alpha is dropped.
    """
    channels_for_mode(mode)
    src = image.mode
    if src == mode:
        return image
    if src in SIXTEEN_BIT or src == "F":
        arr = np.round(np.clip(to_array(image, mode), 0.0, 1.0) * 255.0).astype(np.uint8)
        return Image.fromarray(arr[0] if mode == "L" else np.ascontiguousarray(arr.transpose(1, 2, 0)), mode)
    if src == "P" and "transparency" in image.info and mode != "RGBA":
        image = image.convert("RGBA")
    return image.convert(mode)


@contextlib.contextmanager
def bomb_guard() -> Iterator[None]:
    """Make Pillow's DecompressionBombWarning an error while the block runs.

    :func:`open_image` sets this up for each image; a loop over many images (a batch) can
    hold it once and call ``open_image(path, guarded=False)``, which saves the cost of
    re-arming the warnings filter per image (a measurable share of a small image's read).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


def open_image(path: str | os.PathLike[str], *, guarded: bool = True) -> Image.Image:
    """Open and fully decode an image, turning Pillow's errors into :class:`InputDataError`.

    Images over Pillow's pixel limit are refused. ``guarded=False`` is for callers that
    already hold :func:`bomb_guard`; without it the limit would only warn.
    """
    try:
        if guarded:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = Image.open(path)
                image.load()
        else:
            image = Image.open(path)
            image.load()
        return image
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputDataError(
            f"{path}: image is too large ({exc}); Pillow's limit is "
            f"{Image.MAX_IMAGE_PIXELS} pixels (a decompression bomb guard)"
        ) from None
    except UnidentifiedImageError:
        raise InputDataError(f"{path}: not an image Pillow can read") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputDataError(f"{path}: corrupt or truncated image ({exc})") from None


def image_summary(path: str | os.PathLike[str]) -> dict[str, Any]:
    image = open_image(path)
    return {"mode": image.mode, "size": image.size}


def resize(image: Image.Image, size: tuple[int, int] | None) -> Image.Image:
    """Resize to (width, height) with a fixed filter, so results are deterministic."""
    if size is None or image.size == tuple(size):
        return image
    if image.mode in SIXTEEN_BIT:
        image = image.convert("I")  # resize works on 32-bit ints
    return image.resize(tuple(size), Image.Resampling.BILINEAR)
