"""reprodl.exports.croissant: a dataset as Croissant JSON-LD, loaded with mlcroissant."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from train_fixtures import TrainedModel

from reprodl.errors import DatasetFormatError
from reprodl.exports import export

pytest_plugins = ["train_fixtures"]


def test_croissant_of_an_image_dataset_loads_and_yields_its_images_and_labels(image_uri: str) -> None:
    import mlcroissant

    from reprodl.store import local_path

    root = local_path(image_uri)
    assert root is not None
    out = root / "croissant.json"  # paths in the file are relative to the dataset's root
    export(image_uri, "croissant", out)
    doc = json.loads(out.read_text())
    assert doc["conformsTo"] == "http://mlcommons.org/croissant/1.1"
    (manifest,) = [d for d in doc["distribution"] if d["@type"] == "cr:FileObject"]
    assert len(manifest["sha256"]) == 64
    dataset = mlcroissant.Dataset(jsonld=str(out))
    assert [r.name for r in dataset.metadata.record_sets] == ["categories", "samples"]
    records = list(dataset.records("samples"))
    labels = sorted(r["samples/label"].decode() for r in records)  # mlcroissant yields text as bytes
    assert labels == ["ant"] * 3 + ["bee"] * 2 + ["cat"] * 4
    assert records[0]["samples/image"].size == (6, 5)
    categories = [(r["categories/name"], r["categories/index"]) for r in dataset.records("categories")]
    assert categories == [("ant", 0), ("bee", 1), ("cat", 2)]


def test_croissant_of_a_tensor_dataset_hashes_its_arrays(digits_split_master: str, tmp_path: Path) -> None:
    import mlcroissant
    from train_fixtures import item_file

    out = tmp_path / "digits.json"
    export(digits_split_master, "croissant", out)
    dataset = mlcroissant.Dataset(jsonld=str(out))
    assert [r.name for r in dataset.metadata.record_sets] == ["categories", "images", "labels"]
    files = {f.name: f for f in dataset.metadata.distribution}
    want = hashlib.sha256(item_file(digits_split_master, "data.npy").read_bytes()).hexdigest()
    assert files["data.npy"].sha256 == want
    image = json.loads(out.read_text())["recordSet"][1]["field"][0]
    assert image["isArray"] is True and image["arrayShape"] == "8,8" and image["dataType"] == "cr:UInt8"


def test_croissant_refuses_a_model(trained_model: TrainedModel, tmp_path: Path) -> None:
    with pytest.raises(DatasetFormatError, match="is a reprodl model, not training data"):
        export(trained_model.uri, "croissant", tmp_path / "c.json")
    assert list(tmp_path.iterdir()) == []
