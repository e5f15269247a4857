"""What a weights file is, from its bytes: safetensors, a pickle, a zip, or unknown.

A safetensors file starts with an 8-byte little-endian header length, so its first byte is
anything at all: 0x80 for a header of 128 bytes (the pickle protocol-2+ opcode), ``PK`` for
one of 19,280 + 65,536k bytes (the zip magic of ``torch.save``). The header is therefore
parsed first; only a file that is not valid safetensors is checked for pickle or zip magic.
No torch here, and no bytes make these functions raise anything but a reprodl error.

Example:
    >>> sniff_weights("model.safetensors")        # doctest: +SKIP
    'safetensors'
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from typing import Any, Literal

from reprodl.errors import ModelLoadError
from reprodl.files import open_regular

WeightsKind = Literal["safetensors", "pickle", "zip", "unknown"]

MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit on the JSON header
_LENGTH_BYTES = 8
PICKLE_MAGIC = b"\x80"  # PROTO opcode: every pickle of protocol 2 or later starts with it
ZIP_MAGIC = b"PK"  # torch.save's default (zip) format


def safetensors_problem(path: str | os.PathLike[str]) -> str | None:
    """Why the file at ``path`` is not a safetensors file (None when its header is valid).

    Checks the 8-byte header length (at least 2, at most 100 MB and within the file), that
    the header is a UTF-8 JSON object, and that every tensor entry names a dtype, a shape
    and data offsets inside the file. The tensor bytes themselves are left to safetensors.
    """
    try:
        size = os.path.getsize(path)
        with open_regular(path, what=f"the weights file {os.fspath(path)!r}", error=ModelLoadError) as fh:
            head = fh.read(_LENGTH_BYTES)
            if len(head) < _LENGTH_BYTES:
                return f"the file has {size} bytes, fewer than the 8-byte header length"
            (n,) = struct.unpack("<Q", head)
            if n < 2 or n > MAX_HEADER_BYTES or n > size - _LENGTH_BYTES:
                return (
                    f"its header length {n} is not between 2 and "
                    f"{min(MAX_HEADER_BYTES, size - _LENGTH_BYTES)} (the file has {size} bytes)"
                )
            raw = fh.read(n)
    except OSError as exc:
        raise ModelLoadError(f"cannot read the weights file {os.fspath(path)!r}: {exc}") from None
    return _header_problem(raw, size - _LENGTH_BYTES - n)


def _header_problem(raw: bytes, data_size: int) -> str | None:
    try:
        header: Any = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return "its header is not UTF-8 JSON"
    if not isinstance(header, dict):
        return "its header is not a JSON object"
    for name, entry in header.items():
        if name == "__metadata__":
            if not isinstance(entry, dict):
                return "its __metadata__ is not a JSON object"
            continue
        if not isinstance(entry, dict) or not isinstance(entry.get("dtype"), str):
            return f"its header entry {name[:80]!r} names no dtype"
        shape, offsets = entry.get("shape"), entry.get("data_offsets")
        if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
            return f"its header entry {name[:80]!r} has no valid shape"
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(_is_count(o) for o in offsets)
            or not offsets[0] <= offsets[1] <= data_size
        ):
            return f"its header entry {name[:80]!r} has data offsets outside the file"
    return None


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def sniff_weights(path: str | os.PathLike[str]) -> WeightsKind:
    """What the file at ``path`` holds: "safetensors" (a valid header), else "pickle" or
    "zip" by their magic bytes, else "unknown". Raises only :class:`ModelLoadError` (an
    unreadable file)."""
    if safetensors_problem(path) is None:
        return "safetensors"
    try:
        with open_regular(path, what=f"the weights file {os.fspath(path)!r}", error=ModelLoadError) as fh:
            head = fh.read(len(ZIP_MAGIC))
    except OSError as exc:
        raise ModelLoadError(f"cannot read the weights file {os.fspath(path)!r}: {exc}") from None
    if head.startswith(PICKLE_MAGIC):
        return "pickle"
    if head.startswith(ZIP_MAGIC):
        return "zip"
    return "unknown"


def state_dict_sha256(state: dict[str, Any]) -> str:
    """sha256 over a state dict's names, dtypes, shapes and bytes, in name order."""
    import torch

    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return "sha256:" + h.hexdigest()


#: The safetensors dtypes read as NumPy arrays (:func:`reprodl.modeldataset.read.load_weight_arrays`), by
#: NumPy's name, with the name torch gives each (the digest hashes it). Others (bfloat16, float8, the unsigned
#: integers torch barely supports) are read with torch.
NUMPY_DTYPES = {
    "F64": ("float64", "torch.float64"),
    "F32": ("float32", "torch.float32"),
    "F16": ("float16", "torch.float16"),
    "I64": ("int64", "torch.int64"),
    "I32": ("int32", "torch.int32"),
    "I16": ("int16", "torch.int16"),
    "I8": ("int8", "torch.int8"),
    "U8": ("uint8", "torch.uint8"),
    "BOOL": ("bool", "torch.bool"),
}
_TORCH_NAMES = dict(NUMPY_DTYPES.values())


def numpy_readable(path: str | os.PathLike[str]) -> bool:
    """Whether every tensor of the safetensors file at ``path`` (its header valid) has a NumPy dtype of
    :data:`NUMPY_DTYPES`."""
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(_LENGTH_BYTES))
        header: dict[str, Any] = json.loads(fh.read(n).decode("utf-8"))
    return all(entry["dtype"] in NUMPY_DTYPES for name, entry in header.items() if name != "__metadata__")


def arrays_sha256(state: dict[str, Any]) -> str:
    """:func:`state_dict_sha256` of the same weights read as NumPy arrays (dtypes of :data:`NUMPY_DTYPES`),
    without torch: the same names, torch's dtype names, shapes and bytes."""
    h = hashlib.sha256()
    for name in sorted(state):
        a = state[name]
        h.update(f"{name}|{_TORCH_NAMES[a.dtype.name]}|{tuple(a.shape)}|".encode())
        h.update(a.tobytes())
    return "sha256:" + h.hexdigest()
