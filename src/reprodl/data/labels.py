"""Bounds on labels and category encodings read from a dataset.

A label's value must never size an allocation: a dataset whose labels go up to 10^12
would otherwise make ``range(max + 1)`` or ``np.bincount`` ask for terabytes. Labels read
from a dataset are checked against its category encoding (or, where there is none, against
:data:`reprodl.keys.MAX_CATEGORIES`) before anything is sized by them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
    if sorted(out.values()) != list(range(len(out))):
        missing = sorted(set(range(max(out.values()) + 1)) - set(out.values()))
        raise DatasetFormatError(
            f"{uri}: its {keys.CATEGORY_ENCODING} {out} has no category for the label(s) {missing[:5]}; labels "
            f"are 0..K-1 with none missing (a model's outputs are numbered by them). Rewrite the annotation "
            "with the labels 0..K-1, or recreate the dataset"
        )
    return out


def label_array(raw: Any, *, uri: str) -> np.ndarray:
    """A tensor dataset's labels item as int64 class indices, refusing values no class index can
    be (NaN, infinity), which a cast would turn into -2^63."""
    values = np.asarray(raw).reshape(-1)
    if values.dtype.kind in "fc":
        bad = np.flatnonzero(~np.isfinite(values))
        if len(bad):
            raise DatasetFormatError(
                f"{uri}: its {keys.TENSOR_LABELS_FILE} holds {len(bad):,} non-finite label(s) (row {bad[0]} is "
                f"{values[bad[0]]}); labels are class indices 0..K-1. The item was edited or damaged: recreate "
                "the dataset from its source (`reprodl dataset create-from-arrays`), or use an intact copy"
            )
    return values.astype(np.int64)


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


def category_encoding(names: Sequence[str]) -> dict[str, int]:
    """Deterministic encoding of category names: sorted (digit names numerically), labels 0..K-1."""
    ordered = sorted(set(names), key=lambda n: (0, int(n), n) if n.isdigit() else (1, 0, n))
    return {name: i for i, name in enumerate(ordered)}


def dataset_encoding(
    annotation: Any,
    *,
    uri: str,
    names: Sequence[str] | None = None,
    labels: np.ndarray | None = None,
) -> dict[str, int]:
    """The category encoding of a dataset: the one rule every reader of labels uses.

    Give the image dataset's category ``names`` (of every labelled item, not of a
    selection) or the tensor dataset's integer ``labels`` (every row).

    * With a ``category_encoding`` ``annotation``, that encoding (checked: labels 0..K-1,
      each once), and every name or label must be in it.
    * Without one, an image dataset's names sorted (:func:`category_encoding`), and a
      tensor dataset's labels 0..max as the categories "0".."max" (dtoolAI's tensor
      datasets): label v is category "v", and a class with no samples does not shift the
      others' labels.

    Raises:
        DatasetFormatError: a hostile or gapped encoding, or names/labels outside it.
    """
    if names is not None:
        encoding = category_encoding(names) if annotation is None else checked_encoding(annotation, uri=uri)
        unknown = sorted(set(names) - set(encoding))
        if unknown:
            raise DatasetFormatError(
                f"{uri}: categories {unknown[:5]} are not in its {keys.CATEGORY_ENCODING} annotation: "
                "add them to it, or recreate the dataset"
            )
        return encoding
    if labels is None:
        raise TypeError("dataset_encoding needs names= (image datasets) or labels= (tensor datasets)")
    if annotation is None:
        check_labels(labels, keys.MAX_CATEGORIES, uri=uri)
        return {str(v): v for v in range(int(labels.max()) + 1)} if len(labels) else {}
    encoding = checked_encoding(annotation, uri=uri)
    check_labels(labels, encoding.values(), uri=uri)
    return encoding
