"""reprodl.catalog.exchange: a catalog exported and imported as JSON lines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reprodl import keys
from reprodl.catalog import (
    Catalog,
    Entry,
    export_jsonl,
    import_jsonl,
    reproductions,
)
from reprodl.errors import CatalogError

pytest_plugins = ["train_fixtures", "catalog_world"]


def test_export_and_import_round_trip(cat: Catalog, tmp_path: Path) -> None:
    assert export_jsonl(cat, tmp_path / "a.jsonl") == 6
    with Catalog(tmp_path / "other.sqlite") as other:
        assert import_jsonl(other, tmp_path / "a.jsonl") == 6
        assert import_jsonl(other, tmp_path / "a.jsonl") == 6 and len(other) == 6  # idempotent
        export_jsonl(other, tmp_path / "b.jsonl")
        assert reproductions(other, "digits-model")["reproductions"][0]["verdict"] == "identical"
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()
    line = json.loads((tmp_path / "a.jsonl").read_text().splitlines()[0])
    assert line["format"] == keys.CATALOG_EXPORT_FORMAT and {"uuid", "uris", "readme", "annotations"} <= set(line)


def test_import_refuses_a_line_that_is_not_an_entry(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(Entry("u", "model", "m", "d").to_dict()) + "\n[1, 2]\n")
    with Catalog(":memory:") as catalog, pytest.raises(CatalogError, match=r"bad.jsonl line 2 holds a JSON list"):
        import_jsonl(catalog, bad)
    bad.write_text(json.dumps({"uuid": "u", "kind": "weights"}) + "\n")
    with Catalog(":memory:") as catalog, pytest.raises(CatalogError, match="line 1: .*kind"):
        import_jsonl(catalog, bad)
