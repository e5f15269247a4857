"""dtoolAI's image helper: a PIL image to a model's input format."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from reprodl.errors import InputDataError

_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


def coerce_to_target_dim(im: Any, input_format: Sequence[int]) -> Any:
    """``im`` resized to (W, H) and converted to the mode of C channels, for ``input_format`` = (C, W, H).

    Raises:
        InputDataError: an image mode other than L, RGB, RGBA, or a channel count other than 1, 3, 4.
    """
    if im.mode not in _MODES.values():
        raise InputDataError(f"Unknown image mode: {im.mode} (convert the image to L, RGB or RGBA)")
    ch, tdimw, tdimh = (int(v) for v in input_format)
    if ch not in _MODES:
        raise InputDataError(f"Unsupported input format: {list(input_format)} (channels must be 1, 3 or 4)")
    if tuple(im.size) != (tdimw, tdimh):
        im = im.resize((tdimw, tdimh))
    if _MODES[ch] != im.mode:
        im = im.convert(_MODES[ch])
    return im
