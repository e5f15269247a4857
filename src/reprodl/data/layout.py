"""Where a tensor dataset keeps its arrays and how raw values scale: decided once, no torch.

Used by :class:`~reprodl.data.datasets.TensorDataSet`, the creators and the operations
(``info``, ``split``, ``stats``), which must agree on both.
"""

from __future__ import annotations

import os
import tokenize
from typing import Any

import numpy as np

from reprodl import keys
from reprodl.errors import DatasetFormatError, ReprodlError
from reprodl.store import StoredDataSet

# What np.load raises for a damaged or hostile .npy header, besides ValueError and OSError
# (numpy parses the header's dict with ast.literal_eval).
NPY_HEADER_ERRORS = (EOFError, SyntaxError, tokenize.TokenError, MemoryError, OverflowError, TypeError)


def load_npy(path: str, *, uri: str, mmap: bool = True) -> np.ndarray:
    """An .npy item, memory-mapped unless ``mmap=False``; never unpickles (object arrays are
    refused); :class:`DatasetFormatError` for anything that is not a readable .npy array."""
    name = os.path.basename(path)
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "Python objects" in str(exc):
            raise DatasetFormatError(
                f"{uri}: {name} cannot be read without unpickling ({exc}); reprodl refuses pickled arrays from a URI"
            ) from None
        raise DatasetFormatError(f"{uri}: {name} is not a .npy array reprodl reads ({exc})") from None
    except (OSError, *NPY_HEADER_ERRORS) as exc:
        raise DatasetFormatError(f"{uri}: {name} is not a .npy array ({type(exc).__name__}: {exc})") from None


def check_real_dtype(dtype: Any, *, what: str = "data", error: type[ReprodlError] = DatasetFormatError) -> None:
    """Refuse data a model cannot read as real numbers: a complex dtype (a cast to float drops the
    imaginary part) or a non-numeric one; ``what`` names the data in the message."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.complexfloating):
        raise error(
            f"{what} has the complex dtype {dtype}: store real values (e.g. np.abs(data), or the real and "
            "imaginary parts as two channels)"
        )
    if not (np.issubdtype(dtype, np.number) or dtype == np.bool_):
        raise error(f"{what} must be numeric, got dtype {dtype}")


def default_value_scale(dtype: Any) -> float:
    """Raw values divide by this to become model inputs: 255 for uint8 (as dtoolAI did), else 1."""
    return 255.0 if np.dtype(dtype) == np.uint8 else 1.0


def value_scale(ds: StoredDataSet, dtype: Any) -> float:
    """The dataset's recorded value scale, or the default for its dtype."""
    scale = ds.get_annotation(keys.VALUE_SCALE)
    return float(scale) if scale is not None else default_value_scale(dtype)


def tensor_item_ids(ds: StoredDataSet) -> tuple[str, str]:
    """(data, labels) item identifiers: from the annotations, else ``data.npy``/``labels.npy``."""
    try:
        data_idn = ds.get_annotation(keys.TENSOR_FILE_IDN) or ds.identifier_of(keys.TENSOR_DATA_FILE)
        labels_idn = ds.get_annotation(keys.LABELS_FILE_IDN) or ds.identifier_of(keys.TENSOR_LABELS_FILE)
    except KeyError:
        raise DatasetFormatError(
            f"{ds.uri} is not a tensor dataset: it has no {keys.TENSOR_DATA_FILE} and "
            f"{keys.TENSOR_LABELS_FILE} items (create one with `reprodl dataset create-from-arrays`)"
        ) from None
    return data_idn, labels_idn
