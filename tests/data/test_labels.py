"""Issue 8.3: one rule decides a dataset's category encoding, so every reader agrees.

``reprodl dataset info`` (np.unique of the labels) and :class:`TensorDataSet` (0..max) used to
disagree on a tensor dataset without an encoding; an image dataset opened for one usetype
encoded only that usetype's categories; a gapped encoding gave a model too few outputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import gray_pixels
from PIL import Image

from reprodl import keys, store
from reprodl.data.creators import create_from_arrays
from reprodl.data.datasets import ImageDataSet, TensorDataSet
from reprodl.data.labels import category_encoding, dataset_encoding
from reprodl.data.ops import dataset_info, dataset_stats
from reprodl.errors import DatasetFormatError, InputDataError


def _tensor_dataset(base: Path, name: str, labels: list[int], *, encoding: dict[str, int] | None = None) -> str:
    """A frozen tensor dataset with exactly these labels (and this encoding annotation, if any)."""
    with store.create_dataset(str(base), name, readme="name: x\n") as writer:
        for arr, rel in (
            (np.zeros((len(labels), 4), np.uint8), keys.TENSOR_DATA_FILE),
            (np.asarray(labels, np.int64), keys.TENSOR_LABELS_FILE),
        ):
            with writer.item_file(rel) as path:
                np.save(path, arr, allow_pickle=False)
        writer.put_annotation(keys.INPUT_TYPE, keys.INPUT_TYPE_TENSOR)
        if encoding is not None:
            writer.put_annotation(keys.CATEGORY_ENCODING, encoding)
    assert writer.uri is not None
    return writer.uri


def test_labels_with_gaps_and_no_encoding_give_the_same_classes_everywhere(base_dir):
    uri = _tensor_dataset(base_dir, "gaps", [0, 2, 5, 5, 0])
    ds = TensorDataSet(uri)
    info = dataset_info(uri)
    expected = ["0", "1", "2", "3", "4", "5"]  # label v is category "v": 5 is the sixth output
    assert ds.categories == info["classes"] == expected
    assert ds.n_classes == 6
    assert ds.cat_encoding == {c: int(c) for c in expected}
    counts = {"0": 2, "1": 0, "2": 1, "3": 0, "4": 0, "5": 2}
    assert ds.label_counts() == info["class_counts"] == dataset_stats(uri)["class_counts"] == counts


def test_an_encoding_with_a_gap_is_refused_by_every_reader(base_dir):
    uri = _tensor_dataset(base_dir, "gapped", [0, 2], encoding={"a": 0, "b": 2})
    match = r"has no category for the label\(s\) \[1\]"
    with pytest.raises(DatasetFormatError, match=match):
        TensorDataSet(uri)
    with pytest.raises(DatasetFormatError, match=match):
        dataset_info(uri)


def test_an_encoding_annotation_is_what_every_reader_uses(base_dir):
    encoding = {"zero": 0, "one": 1, "two": 2}  # "two" has no samples: still a class
    uri = _tensor_dataset(base_dir, "named", [1, 0, 1], encoding=encoding)
    ds = TensorDataSet(uri)
    assert ds.cat_encoding == encoding
    assert ds.categories == dataset_info(uri)["classes"] == ["zero", "one", "two"]
    assert ds.label_counts() == dataset_info(uri)["class_counts"] == {"zero": 1, "one": 2, "two": 0}


def _image_dataset_without_encoding(base: Path, tmp: Path) -> str:
    """ant/bee/cat images; only bee and cat have test items; no category_encoding annotation."""
    items = {"ant/0.png": "train", "bee/0.png": "test", "bee/1.png": "train", "cat/0.png": "test"}
    with store.create_dataset(str(base), "noenc", readme="name: x\n") as writer:
        for k, (rel, usetype) in enumerate(items.items()):
            path = tmp / f"{k}.png"
            Image.fromarray(gray_pixels(k)).save(path)
            writer.put_item(path, rel)
            writer.set_item_label(keys.CATEGORY_OVERLAY, rel, rel.split("/")[0])
            writer.set_item_label(keys.USETYPE_OVERLAY, rel, usetype)
        writer.put_annotation(keys.INPUT_TYPE, keys.INPUT_TYPE_IMAGE)
    assert writer.uri is not None
    return writer.uri


def test_an_image_usetype_is_encoded_with_every_category_of_the_dataset(base_dir, tmp_path):
    uri = _image_dataset_without_encoding(base_dir, tmp_path)
    test = ImageDataSet(uri, "test")
    train = ImageDataSet(uri, "train")
    assert test.cat_encoding == train.cat_encoding == {"ant": 0, "bee": 1, "cat": 2}
    assert test.categories == dataset_info(uri)["classes"]
    assert test.labels.tolist() == [1, 2]  # bee, cat: the labels train used for them
    assert train.labels.tolist() == [0, 1]


def test_dataset_encoding_rules():
    assert dataset_encoding(None, uri="u", labels=np.array([3, 1])) == {"0": 0, "1": 1, "2": 2, "3": 3}
    assert dataset_encoding(None, uri="u", labels=np.array([], np.int64)) == {}
    assert dataset_encoding(None, uri="u", names=["b", "10", "2"]) == category_encoding(["b", "10", "2"])
    assert dataset_encoding({"x": 1, "y": 0}, uri="u", names=["x"]) == {"x": 1, "y": 0}
    with pytest.raises(DatasetFormatError, match=r"categories \['z'\] are not in its category_encoding"):
        dataset_encoding({"x": 0}, uri="u", names=["x", "z"])
    with pytest.raises(DatasetFormatError, match=r"labels \[4\] that are not in its category encoding"):
        dataset_encoding({"x": 0, "y": 1}, uri="u", labels=np.array([0, 4]))


def test_creating_with_a_category_name_given_twice_is_refused(base_dir):
    with pytest.raises(InputDataError, match=r"category names \['a'\] are given to more than one label"):
        create_from_arrays(np.zeros((2, 4), np.uint8), np.array([0, 1]), str(base_dir), "twice", categories=["a", "a"])
    assert list(base_dir.iterdir()) == []
