"""Where a tensor dataset keeps its arrays and how raw values scale: decided once, no torch.

Used by :class:`~reprodl.data.datasets.TensorDataSet`, the creators and the operations
(``info``, ``split``, ``stats``), which must agree on both.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from reprodl import keys
from reprodl.errors import DatasetFormatError
from reprodl.store import StoredDataSet


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
