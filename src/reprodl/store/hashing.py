"""Hashes and canonical JSON: md5 as dtool's manifests record it, sha256 for digests."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from typing import Any

_HASH_CHUNK = 1 << 20

Progress = Callable[[int], None]  # called with the number of units just done


def _file_sha(path: str | os.PathLike[str], algorithm: str = "md5") -> str:
    hasher = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            hasher.update(chunk)
    return hasher.hexdigest()


def file_md5(path: str | os.PathLike[str]) -> str:
    """md5 of a file, as dtool's manifest records it."""
    return _file_sha(path, "md5")


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a file."""
    return _file_sha(path, "sha256")


def canonical_json(obj: Any) -> bytes:
    """The canonical JSON bytes of ``obj`` (sorted keys, no spaces), used for digests."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
