"""reprodl.catalog.scan: what `add` indexes from each kind of dataset, model and claim."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

pytest.register_assert_rewrite("train_fixtures")

from train_fixtures import path_of

from reprodl import keys
from reprodl.catalog import (
    Catalog,
    add,
    check,
    ls,
    models_trained_on,
)
from reprodl.errors import DatasetNotFoundError

pytest_plugins = ["train_fixtures", "catalog_world"]


def test_add_indexes_every_kind_and_adding_again_changes_nothing(world: dict[str, Any], tmp_path: Path) -> None:
    with Catalog(tmp_path / "c.sqlite") as catalog:
        first = add(catalog, str(world["root"] / "models"))
        assert sorted(i["kind"] for i in first.indexed) == ["model"] * 3 and first.new_entries == 3
        again = add(catalog, str(world["root"] / "models"))
        assert again.new_entries == 0 and len(catalog) == 3 and len(catalog.locations()) == 3
        add(catalog, world["claim"])  # one dataset's URI, not a base
        assert [e.kind for e in catalog.find("a-vs-b")] == ["claim"]


def test_a_copy_on_another_base_is_one_entry_with_both_uris(cat: Catalog, world: dict[str, Any]) -> None:
    (entry,) = cat.find("digits")
    assert entry.uris == sorted([world["digits"], world["mirror"]])
    assert entry.kind == "dataset" and entry.fields["n_items"] == 2 and entry.creator


def test_model_entry_keeps_record_digest_readme_fields_and_links(cat: Catalog, world: dict[str, Any]) -> None:
    (entry,) = cat.find(world["model"])
    assert entry.record_digest and entry.record_digest.startswith("sha256:")
    assert entry.fields["epochs"] == 3 and entry.fields["record_digest_ok"] == 1
    assert 0 < float(entry.fields["valid_accuracy"]) <= 1
    assert {(k.relation, k.role) for k in entry.links} == {("trained_on", "train"), ("trained_on", "valid")}
    assert entry.annotations[keys.MODEL_KIND] == "model" and entry.readme


def test_a_dataset_that_cannot_be_read_is_listed_and_the_others_indexed(tmp_path: Path, world: dict[str, Any]) -> None:
    from reprodl.store import create_dataset

    base = tmp_path / "mixed"
    base.mkdir()
    shutil.copytree(path_of(world["claim"]), base / "claim")
    with create_dataset(str(base), "broken-model") as writer:
        writer.put_bytes(b"{not json", keys.PROVENANCE_FILE)
    with Catalog(tmp_path / "c.sqlite") as catalog:
        report = add(catalog, str(base))
    assert [i["name"] for i in report.indexed] == ["a-vs-b"]
    assert len(report.failed) == 1 and "broken-model" in report.failed[0]["uri"]
    with pytest.raises(DatasetNotFoundError, match="nothing at"):
        add(catalog, str(tmp_path / "nowhere"))


def test_a_model_made_by_the_original_dtoolai_is_indexed_from_its_annotations(
    world: dict[str, Any], tmp_path: Path
) -> None:
    from reprodl.store import create_dataset, open_dataset

    digits = open_dataset(world["digits"])
    with create_dataset(str(tmp_path), "dtoolai-model") as writer:
        writer.put_bytes(b"weights", "model.pt")
        writer.put_annotation(keys.MODEL_NAME, "simpleScalingCNN")
        writer.put_annotation(keys.MODEL_PARAMETERS, {"n_epochs": 1, "learning_rate": 0.01})
        writer.put_annotation(keys.SOURCE_DATASET_URI, digits.uri)
        writer.put_annotation(keys.SOURCE_DATASET_UUID, digits.uuid)
        writer.put_annotation(keys.SOURCE_DATASET_NAME, digits.name)
    with Catalog(tmp_path / "c.sqlite") as catalog:
        add(catalog, world["digits"])
        add(catalog, str(tmp_path / "dtoolai-model"))
        (entry,) = catalog.find("dtoolai-model")
        assert entry.kind == "model" and entry.record_digest is None and entry.fields["made_by"] == "dtoolAI"
        assert [n["name"] for n in models_trained_on(catalog, "digits")] == ["dtoolai-model"]
        assert {r.status for r in check(catalog)} == {"ok"}


def test_architecture_matches_the_class_name_after_the_colon(cat: Catalog) -> None:
    models = {e.name for e in ls(cat, kind="model")}
    (arch,) = {e.fields["architecture"] for e in ls(cat, kind="model")}
    assert str(arch).endswith(":GenNet")
    assert {e.name for e in ls(cat, where="architecture=GenNet")} == models
    assert {e.name for e in ls(cat, where=f"architecture='{arch}'")} == models
    assert ls(cat, where="architecture!=GenNet") == [] and ls(cat, where="architecture=Net") == []


def test_datasets_index_their_sample_count_beside_their_dtool_items(cat: Catalog) -> None:
    (digits,) = ls(cat, kind="dataset", where="name=digits")
    assert digits.fields["n_items"] == 2 and digits.fields["n_samples"] == 1797
