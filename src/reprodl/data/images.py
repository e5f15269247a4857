"""Reading images of any Pillow mode into float arrays, and checking image files.

No torch here: creators and the CLI use these without paying for a torch import; Pillow is
imported where an image is read, so a training script on tensors does not load it.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import numpy as np

from reprodl import keys
from reprodl.errors import InputDataError

if TYPE_CHECKING:
    from PIL import Image

GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F", "La"}
SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


_CHANNELS = {"L": 1, "RGB": 3, "RGBA": 4}


def channels_for_mode(mode: str) -> int:
    """Channels of a target mode ("L" 1, "RGB" 3, "RGBA" 4); any other mode is refused."""
    return _CHANNELS.get(mode, 0) or _bad_mode(mode)


def _bad_mode(mode: str) -> int:
    raise InputDataError(f"target image mode {mode!r} is not supported: use 'L', 'RGB' or 'RGBA'")


def target_mode_for(source_mode: str) -> str:
    """The mode reprodl stores a source mode as: gray stays one channel, colour becomes RGB."""
    return "L" if source_mode in GRAY_MODES else "RGB"


def to_array(image: Image.Image, mode: str) -> np.ndarray:
    """Float32 array (C, H, W) in [0, 1] from an image of any Pillow mode.

    16-bit and 32-bit integer images are scaled by 65535 rather than clipped at 255 (which
    Pillow's ``convert("L")`` would do); palette, CMYK, LA and RGBA images go through
    Pillow's own conversion; alpha is dropped unless ``mode == "RGBA"``.
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
        return np.ascontiguousarray(arr)
    image = convert(image, mode)
    arr = np.asarray(image, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[None]
    else:
        arr = arr.transpose(2, 0, 1)
    return arr.astype(np.float32) * np.float32(1 / 255)


def read_batch(paths: Iterable[str | os.PathLike[str]], mode: str, size: tuple[int, int] | None) -> np.ndarray | None:
    """Decode images into one float32 (N, C, H, W) array in [0, 1].

    Bit for bit what stacking ``to_array(resize(open_image(p), size), mode)`` over the
    paths gives, at less cost per image: the decompression-bomb guard is armed once, and
    8-bit images contribute their raw bytes, scaled to float in one vectorised step for the
    whole batch (16-bit and float images still go through :func:`to_array` one by one).
    Returns None when there are no paths or the images' sizes differ (the caller reports
    that); raises :class:`InputDataError` for an unreadable image, as :func:`open_image`.
    """
    channels = channels_for_mode(mode)
    size = None if size is None else (int(size[0]), int(size[1]))
    chunks: list[bytes] = []
    wide: dict[int, np.ndarray] = {}  # row -> to_array() of a 16-bit or float image
    first: tuple[int, int] | None = None
    with bomb_guard():
        for row, path in enumerate(paths):
            image = open_image(path, guarded=False)
            if size is not None and image.size != size:
                image = resize(image, size)
            if first is None:
                first = image.size
            elif image.size != first:
                return None
            src = image.mode
            if src in SIXTEEN_BIT or src == "F":
                wide[row] = to_array(image, mode)
                chunks.append(bytes(first[0] * first[1] * channels))
                continue
            if src != mode:
                image = convert(image, mode)
            chunks.append(image.tobytes())  # what np.asarray(image) reads: (H, W[, C]) uint8
    if first is None:
        return None
    width, height = first
    raw = np.frombuffer(b"".join(chunks), dtype=np.uint8).reshape(len(chunks), height, width, channels)
    out = np.empty((len(chunks), channels, height, width), dtype=np.float32)
    # uint8 -> float32 times float32(1/255), as to_array's astype(np.float32) * np.float32(1 / 255).
    np.multiply(raw.transpose(0, 3, 1, 2), np.float32(1 / 255), out=out)
    for row, arr in wide.items():
        out[row] = arr
    return out


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
        from PIL import Image

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
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


def open_image(path: str | os.PathLike[str], *, guarded: bool = True) -> Image.Image:
    """Open and fully decode an image, turning Pillow's errors into :class:`InputDataError`.

    Images over Pillow's pixel limit are refused. ``guarded=False`` is for callers that
    already hold :func:`bomb_guard`; without it the limit would only warn.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with bomb_guard() if guarded else contextlib.nullcontext():
            image = Image.open(path)
            image.load()
        return image
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputDataError(
            f"{path}: image is too large ({exc}); Pillow's limit is "
            f"{Image.MAX_IMAGE_PIXELS} pixels (a decompression bomb guard)"
        ) from None
    except FileNotFoundError:
        raise InputDataError(
            f"{path}: no such image file; check the path (in a dataset, `reprodl dataset verify` "
            "names every missing item)"
        ) from None
    except IsADirectoryError:
        raise InputDataError(f"{path} is a directory, not an image file") from None
    except UnidentifiedImageError:
        raise InputDataError(f"{path}: not an image Pillow can read") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputDataError(f"{path}: corrupt or truncated image ({exc})") from None


def resize(image: Image.Image, size: tuple[int, int] | None) -> Image.Image:
    """Resize to (width, height) with a fixed filter, so results are deterministic."""
    if size is None or image.size == tuple(size):
        return image
    if len(size) != 2 or not all(0 < int(s) <= keys.MAX_IMAGE_SIDE for s in size):
        raise InputDataError(
            f"cannot resize to {tuple(size)}: each side should be from 1 to "
            f"{keys.MAX_IMAGE_SIDE} pixels (check the size given or the dataset's image_dimensions)"
        )
    if image.mode in SIXTEEN_BIT:
        image = image.convert("I")  # resize works on 32-bit ints
    from PIL import Image

    return image.resize((int(size[0]), int(size[1])), Image.Resampling.BILINEAR)
