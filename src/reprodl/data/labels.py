"""Bounds on labels and category encodings read from a dataset.

A label's value must never size an allocation: a dataset whose labels go up to 10^12
would otherwise make ``range(max + 1)`` or ``np.bincount`` ask for terabytes. Labels read
from a dataset are checked against its category encoding (or, where there is none, against
:data:`reprodl.keys.MAX_CATEGORIES`) before anything is sized by them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from reprodl import keys
from reprodl.errors import DatasetFormatError


def checked_encoding(encoding: Any, *, uri: str) -> dict[str, int]:
    """``category_encoding`` as {name: label}: a mapping of distinct labels in [0, MAX_CATEGORIES)."""
    if not isinstance(encoding, Mapping):
        raise DatasetFormatError(
            f"{uri}: its {keys.CATEGORY_ENCODING} annotation is a "
            f"{type(encoding).__name__}, not a mapping of category name to label"
        )
    if len(encoding) > keys.MAX_CATEGORIES:
        raise DatasetFormatError(
            f"{uri}: its {keys.CATEGORY_ENCODING} has {len(encoding):,} categories, "
            f"more than reprodl's limit of {keys.MAX_CATEGORIES:,}"
        )
    out: dict[str, int] = {}
    for name, value in encoding.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value < keys.MAX_CATEGORIES:
            raise DatasetFormatError(
                f"{uri}: its {keys.CATEGORY_ENCODING} gives category {name!r} the label {value!r}; labels "
                f"are integers from 0 to {keys.MAX_CATEGORIES - 1:,}. Recreate the dataset's annotation"
            )
        out[str(name)] = int(value)
    if len(set(out.values())) != len(out):
        raise DatasetFormatError(f"{uri}: its {keys.CATEGORY_ENCODING} gives two categories the same label: {out}")
    return out


def check_labels(labels: np.ndarray, allowed: Any, *, uri: str) -> None:
    """Refuse labels outside ``allowed`` (the encoding's labels, or a count: range(count))."""
    if not len(labels):
        return
    lo, hi = int(labels.min()), int(labels.max())
    if isinstance(allowed, int):
        if lo < 0 or hi >= allowed:
            bad = lo if lo < 0 else hi
            raise DatasetFormatError(
                f"{uri} has the label {bad}, outside 0..{allowed - 1:,}; labels must be "
                "in its category encoding (recreate the dataset with integer labels 0..K-1)"
            )
        return
    values = np.fromiter(allowed, dtype=np.int64)
    unknown = np.setdiff1d(np.unique(labels), values)
    if len(unknown):
        raise DatasetFormatError(
            f"{uri} has labels {unknown[:5].tolist()} that are not in its category "
            f"encoding (labels {sorted(values.tolist())[:10]}...): recreate the dataset"
        )


def default_names(labels: np.ndarray, *, uri: str) -> list[str]:
    """Category names "0".."max" for a dataset without an encoding (dtoolAI's tensor datasets)."""
    check_labels(labels, keys.MAX_CATEGORIES, uri=uri)
    return [str(v) for v in range(int(labels.max()) + 1)] if len(labels) else []
