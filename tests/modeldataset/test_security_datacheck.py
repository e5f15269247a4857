"""Metadata that changes what the data mean is part of the data check (issue 7, point 6).

A frozen dataset's items are fixed by its manifest, but its annotations and overlays stay
writable: a swapped ``category_encoding``, another ``value_scale`` or ``image_dimensions``, or
an edited usetype split changes what the model learnt from without touching an item. Each is
edited here after training, through the store API, as an attacker or an accident would; then
``verify --data`` must fail naming the field, and ``reproduce`` must refuse naming it (never
``identical``, never "non-determinism").
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from reprodl import keys
from reprodl.errors import IntegrityError
from reprodl.modeldataset.verify import verify_model
from reprodl.reproduction.rerun import reproduce
from reprodl.store import canonical_json, open_dataset

pytest.register_assert_rewrite("train_fixtures")

from train_fixtures import TinyNet, path_of, rewrite_model, small_params, train_digits

pytest_plugins = ["train_fixtures"]


@pytest.fixture(scope="module")
def tensor_model(digits_split_master: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """(model URI, data URI): GenNet trained one epoch on this module's own copy of the digits."""
    data = tmp_path_factory.mktemp("datacheck-data") / "digits"
    shutil.copytree(path_of(digits_split_master), data)
    uri, _ = train_digits(tmp_path_factory.mktemp("datacheck-models"), "digits-model", str(data), valid=False)
    return uri, str(data)


@contextlib.contextmanager
def edited_annotation(data_uri: str, name: str, value: Any) -> Iterator[None]:
    """Set an annotation of a frozen dataset for the block, then put the old value back."""
    ds = open_dataset(data_uri)
    old = ds.get_annotation(name)
    ds.put_annotation(name, value)
    try:
        yield
    finally:
        open_dataset(data_uri).put_annotation(name, old)


def _data_failure(uri: str) -> str:
    result = verify_model(uri, data=True)
    assert not result.ok
    failed = {c.name: c.detail for c in result.checks if not c.ok}
    assert list(failed) == [next(n for n in failed if n.startswith("train data digits"))], failed
    return next(iter(failed.values()))


def _swapped_usetype(data_uri: str) -> list[str]:
    split = list(open_dataset(data_uri).get_annotation(keys.TENSOR_USETYPE))
    first_train, first_test = split.index("train"), split.index("test")
    split[first_train], split[first_test] = "test", "train"  # same counts, other samples
    return split


# (annotation, new value, or a function of the data URI giving it; the change named)
EDITS = {
    "category_encoding": (
        keys.CATEGORY_ENCODING,
        {**{str(i): i for i in range(10)}, "3": 5, "5": 3},
        "category_encoding changed: '3' 3->5, '5' 5->3",
    ),
    "value_scale": (keys.VALUE_SCALE, 1.0, "value_scale changed: 255->1"),
    "image_dimensions": (keys.IMAGE_DIMENSIONS, [1, 4, 16], r"image_dimensions changed: \[1, 8, 8\]->\[1, 4, 16\]"),
    "usetype split": (
        keys.TENSOR_USETYPE,
        _swapped_usetype,
        r"usetype split changed: usetype 'train' now selects 1438 samples \(recorded 1438\)",
    ),
}


@pytest.mark.parametrize("field", list(EDITS))
def test_an_edited_annotation_fails_verify_data_naming_the_field(tensor_model, field):
    uri, data = tensor_model
    assert verify_model(uri, data=True).ok
    name, value, named = EDITS[field]
    with edited_annotation(data, name, value(data) if callable(value) else value):
        detail = _data_failure(uri)
        assert re.search(named, detail), detail
        assert detail.startswith("train dataset digits: ")
    assert verify_model(uri, data=True).ok  # the old value back: nothing else is blamed


@pytest.mark.parametrize("field", list(EDITS))
def test_reproduce_refuses_data_whose_meaning_changed_naming_the_field(tensor_model, field, tmp_path):
    uri, data = tensor_model
    name, value, named = EDITS[field]
    expected = r"refusing to reproduce: the training data changed since training:\n  the train dataset digits: " + named
    with (
        edited_annotation(data, name, value(data) if callable(value) else value),
        pytest.raises(IntegrityError, match=expected) as caught,
    ):
        reproduce(uri, output=str(tmp_path))
    assert "non-determinism" not in str(caught.value)
    assert list(tmp_path.iterdir()) == []  # refused before any training


def test_cli_verify_data_and_reproduce_name_the_swapped_encoding(tensor_model, cli):
    uri, data = tensor_model
    swapped = {**{str(i): i for i in range(10)}, "3": 5, "5": 3}
    with edited_annotation(data, keys.CATEGORY_ENCODING, swapped):
        result = cli("verify", uri, "--data")
        assert result.exit_code == 1
        assert "category_encoding changed: '3' 3->5, '5' 5->3" in result.stdout
        assert "All checks passed" not in result.stdout
        as_json = json.loads(cli("verify", uri, "--data", "--json").stdout)
        data_check = next(c for c in as_json["checks"] if c["name"].startswith("train data"))
        assert data_check["ok"] is False and "category_encoding" in data_check["detail"]
        result = cli("reproduce", uri, "--quiet")
        assert result.exit_code != 0
        assert "the train dataset digits: category_encoding changed: '3' 3->5, '5' 5->3" in result.stderr


@pytest.mark.parametrize(
    "name, value",
    [
        ("notes", "an annotation that means nothing to the data"),
        (keys.VALUE_SCALE, 255.0),  # written out, but what the default already was
        (keys.CATEGORY_ENCODING, {str(i): i for i in range(10)}),  # the same encoding, written again
    ],
)
def test_annotations_that_keep_the_meaning_do_not_fail_the_check(tensor_model, name, value):
    uri, data = tensor_model
    with edited_annotation(data, name, value):
        result = verify_model(uri, data=True)
        assert result.ok, [c for c in result.checks if not c.ok]


@pytest.mark.parametrize("value", ["eight by eight", [1, "x", 8], {"C": 1}])
def test_a_garbled_annotation_is_reported_not_raised(tensor_model, value):
    uri, data = tensor_model
    with edited_annotation(data, keys.IMAGE_DIMENSIONS, value):
        detail = _data_failure(uri)
        assert "image_dimensions" in detail or "cannot be read as the training read it" in detail


def test_a_record_from_before_these_fields_still_verifies_and_still_names_the_encoding(tensor_model, tmp_path):
    uri, data = tensor_model

    def drop_new_fields(raw: dict[str, Any]) -> None:
        """As an older reprodl wrote it: without the fields, digest over what is there."""
        for ref in raw["data"]:
            ref.pop("labels_digest")
            ref.pop("image_dimensions")
        body = {k: v for k, v in raw.items() if k != "digest"}
        raw["digest"] = "sha256:" + hashlib.sha256(canonical_json(body)).hexdigest()

    old = rewrite_model(uri, tmp_path, "old-record", edit=drop_new_fields, reseal=False)
    assert verify_model(old, data=True).ok
    with edited_annotation(data, keys.IMAGE_DIMENSIONS, [1, 4, 16]):
        assert "image_dimensions changed: input shape [1, 8, 8]->[1, 4, 16]" in _data_failure(old)
    with edited_annotation(data, keys.CATEGORY_ENCODING, {**{str(i): i for i in range(10)}, "3": 5, "5": 3}):
        assert "category_encoding changed: '3' 3->5, '5' 5->3" in _data_failure(old)


def test_the_record_holds_what_gives_the_data_meaning(tensor_model):
    from reprodl.modeldataset.read import load_record

    ref = load_record(tensor_model[0]).data[0]
    assert ref.image_dimensions == [1, 8, 8] and ref.input_shape == [1, 8, 8]
    assert ref.value_scale == 255.0 and ref.category_encoding == {str(i): i for i in range(10)}
    assert ref.usetype == "train" and ref.selection_digest.startswith("sha256:")
    assert ref.labels_digest.startswith("sha256:")


# --- image datasets: labels live in overlays, which stay writable too -----------------------------


@pytest.fixture
def image_model(image_uri: str, tmp_path: Path) -> tuple[str, str]:
    """(model URI, data URI): a linear model trained on the tiny ant/bee/cat image dataset (8x8)."""
    from reprodl import DerivedDataSet, ImageDataSet, train_model_with_metadata_capture
    from reprodl.data.ops import split_dataset

    split_dataset(image_uri, test=0.34, seed=0)
    train = ImageDataSet(image_uri, "train", mode="L", size=(8, 8))
    params = small_params(batch_size=2, init_params={"input_dim": 8, "n_outputs": 3})
    torch.manual_seed(0)
    net = TinyNet(8, 3)
    (tmp_path / "models").mkdir()
    with DerivedDataSet(str(tmp_path / "models"), "tiny", train) as out:
        train_model_with_metadata_capture(
            net, train, torch.optim.SGD(net.parameters(), lr=0.1), torch.nn.NLLLoss(), params, out, progress=False
        )
    return out.uri, image_uri


def test_image_dataset_swapped_encoding_and_relabelled_item_are_named(image_model, tmp_path):
    uri, data = image_model
    assert verify_model(uri, data=True, allow=[TinyNet.__module__]).ok
    with edited_annotation(data, keys.CATEGORY_ENCODING, {"ant": 1, "bee": 0, "cat": 2}):
        assert "category_encoding changed: 'ant' 0->1, 'bee' 1->0" in _image_failure(uri)
        with pytest.raises(IntegrityError, match="category_encoding changed: 'ant' 0->1, 'bee' 1->0"):
            reproduce(uri, output=str(tmp_path / "out"))
    ds = open_dataset(data)
    categories = ds.get_overlay(keys.CATEGORY_OVERLAY)
    usetypes = ds.get_overlay(keys.USETYPE_OVERLAY)
    train_item = next(i for i, u in usetypes.items() if u == "train" and categories[i] == "ant")
    ds.put_overlay(keys.CATEGORY_OVERLAY, {**categories, train_item: "bee"})
    assert "category overlay changed" in _image_failure(uri)
    ds.put_overlay(keys.CATEGORY_OVERLAY, categories)
    test_item = next(i for i, u in usetypes.items() if u == "test")
    ds.put_overlay(keys.USETYPE_OVERLAY, {**usetypes, test_item: "train"})
    n_train = sum(1 for u in usetypes.values() if u == "train")
    assert (
        f"usetype split changed: usetype 'train' now selects {n_train + 1} samples (recorded {n_train})"
        in _image_failure(uri)
    )
    ds.put_overlay(keys.USETYPE_OVERLAY, usetypes)
    assert verify_model(uri, data=True, allow=[TinyNet.__module__]).ok


def _image_failure(uri: str) -> str:
    result = verify_model(uri, data=True, allow=[TinyNet.__module__])
    assert not result.ok
    return "; ".join(c.detail for c in result.checks if not c.ok)
