"""reprodl.catalog.query: search, lineage, descendants, models trained on a dataset, reproductions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from reprodl.catalog import (
    Catalog,
    Entry,
    descendants,
    lineage,
    models_trained_on,
    reproductions,
    search,
)
from reprodl.errors import CatalogEntryNotFoundError, CatalogError

pytest_plugins = ["train_fixtures", "catalog_world"]


def _names(nodes: list[dict[str, Any]]) -> list[str]:
    return sorted(n["name"] for n in nodes)


def test_search_finds_names_readmes_and_annotations(cat: Catalog) -> None:
    assert {e.name for e in search(cat, "digits")} >= {"digits", "more-digits", "digits-model"}
    assert [e.name for e in search(cat, "GenNet", kind="model")]  # an annotation's value
    assert [e.kind for e in search(cat, "paired runs")] == ["claim"]  # the claim's README
    same = [e.name for e in search(cat, "digits")]
    assert [e.name for e in search(cat, '"digits* (^')] == same  # FTS5 syntax in the text: only its words count
    with pytest.raises(CatalogError, match="no words"):
        search(cat, "**")


def test_models_trained_on_a_dataset_include_those_fine_tuned_from_them(cat: Catalog, world: dict[str, Any]) -> None:
    found = {n["name"]: n for n in models_trained_on(cat, "digits")}
    assert set(found) == {"digits-model", "digits-ft", Path(world["repro"]).name}
    assert found["digits-model"]["depth"] == 1 and found["digits-model"]["relation"] == "trained_on"
    assert found["digits-ft"]["depth"] == 2 and found["digits-ft"]["relation"] == "parent"
    assert _names(models_trained_on(cat, "more-digits")) == ["digits-ft"]


def test_lineage_lists_parents_and_every_dataset_above(cat: Catalog, world: dict[str, Any]) -> None:
    nodes = lineage(cat, world["ft"])
    assert [(n["name"], n["relation"], n["depth"]) for n in nodes] == [
        ("more-digits", "trained_on", 1),
        ("digits-model", "parent", 1),
        ("digits", "trained_on", 2),
    ]
    assert all(n["in_catalog"] for n in nodes)


def test_descendants_of_a_dataset_reach_fine_tunes_reproductions_and_claims(
    cat: Catalog, world: dict[str, Any]
) -> None:
    nodes = descendants(cat, world["mirror"])  # any URI of the entry names it
    assert _names(nodes) == sorted(["digits-model", "digits-ft", Path(world["repro"]).name, "a-vs-b"])
    assert _names(descendants(cat, "digits-ft")) == ["a-vs-b"]


def test_reproductions_give_each_verdict_and_the_claims_holding_the_model(cat: Catalog, world: dict[str, Any]) -> None:
    result = reproductions(cat, "digits-model")
    assert [(r["uris"], r["verdict"]) for r in result["reproductions"]] == [([world["repro"]], "identical")]
    (group,) = result["replications"]
    assert group["kind"] == "claim" and group["verdict"] == "A better"
    assert [m["uri"] for m in group["members"]] == [world["ft"]]


def test_unknown_and_ambiguous_names_are_refused(cat: Catalog, world: dict[str, Any]) -> None:
    with pytest.raises(CatalogEntryNotFoundError, match="nothing in the catalog is called 'nope'"):
        lineage(cat, "nope")
    cat.put(Entry(uuid="other", kind="model", name="digits-model", manifest_digest="m", uris=["file://x/y"]))
    with pytest.raises(CatalogError, match="names 2 catalog entries"):
        lineage(cat, "digits-model")
    assert lineage(cat, world["model"])  # its URI is unique
