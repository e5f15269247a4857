"""An image or ``.npy`` item that is not a regular file of the dataset (a named pipe, a link to
``/dev/zero``, a link out of it) is refused by name, quickly, without reading it, by the readers
that feed training (``ImageDataSet``, ``TensorDataSet``; see ``tests/hostile_items.py``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hostile_items import SPECIAL, bounded_call, make_special
from train_fixtures import item_file

from reprodl import keys
from reprodl.data.creators import create_from_arrays
from reprodl.store import open_dataset

READ_IMAGES = """
from reprodl.data import ImageDataSet
data = ImageDataSet(args[0])
for i in range(len(data)):
    data[i]
"""

READ_TENSORS = """
from reprodl.data import TensorDataSet
TensorDataSet(args[0])
"""


@pytest.mark.parametrize("what", SPECIAL)
def test_an_image_item_that_is_not_a_regular_file_is_refused_by_name(image_uri: str, what: str) -> None:
    ds = open_dataset(image_uri)
    relpath = ds.relpath(ds.identifiers[0])
    make_special(item_file(image_uri, relpath), what)
    out = bounded_call(READ_IMAGES, image_uri, timeout=30)
    assert out.startswith("DatasetFormatError") and repr(relpath) in out and "refused" in out, out


@pytest.mark.parametrize("relpath", [keys.TENSOR_DATA_FILE, keys.TENSOR_LABELS_FILE])
@pytest.mark.parametrize("what", SPECIAL)
def test_an_npy_item_that_is_not_a_regular_file_is_refused_by_name(base_dir: Path, what: str, relpath: str) -> None:
    data = np.arange(24, dtype=np.float32).reshape(6, 4)
    uri = create_from_arrays(data, np.array([0, 1, 0, 1, 0, 1]), str(base_dir), "arrays")
    make_special(item_file(uri, relpath), what)
    out = bounded_call(READ_TENSORS, uri, timeout=30)
    assert out.startswith("DatasetFormatError") and repr(relpath) in out and "refused" in out, out
