"""The catalog's file (reprodl.catalog.db) and the `reprodl catalog` commands, on real datasets and models.

The world they run on (tests/catalog_world.py) is shared with the tests of each catalog module:
test_scan.py (indexing), test_query.py, test_where.py, test_catalog_graph.py, test_exchange.py
(export and import) and test_catalog_check.py.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

pytest.register_assert_rewrite("train_fixtures")

from train_fixtures import path_of

from reprodl import keys
from reprodl.catalog import (
    Catalog,
    Entry,
    Link,
    build_graph,
    default_path,
    descendants,
    export_jsonl,
    import_jsonl,
    search,
    write_graph,
)
from reprodl.errors import CatalogError

pytest_plugins = ["train_fixtures", "catalog_world"]


def _names(nodes: list[dict[str, Any]]) -> list[str]:
    return sorted(n["name"] for n in nodes)


# --- the command line -----------------------------------------------------------------------
def test_cli_commands_answer_in_json(cli: Any, world: dict[str, Any], tmp_path: Path) -> None:
    db = str(tmp_path / "cli.sqlite")
    for base in ("data", "models", "claims"):
        assert cli("catalog", "add", str(world["root"] / base), "--catalog", db, "-q").exit_code == 0
    res = cli("catalog", "ls", "--kind", "model", "--where", "epochs>=3", "--json", "--catalog", db)
    assert sorted(e["name"] for e in json.loads(res.stdout)) == sorted(["digits-model", Path(world["repro"]).name])
    res = cli("catalog", "models-trained-on", "more-digits", "--json", "--catalog", db)
    assert [n["name"] for n in json.loads(res.stdout)] == ["digits-ft"]
    res = cli("catalog", "reproductions", world["model"], "--catalog", db)
    assert res.exit_code == 0 and "identical" in res.stdout
    res = cli("catalog", "lineage", "digits-ft", "--catalog", db)
    assert "parent: model digits-model" in res.stdout
    assert cli("catalog", "graph", "-o", str(tmp_path / "g.html"), "--catalog", db).exit_code == 0
    assert cli("catalog", "export", "-o", str(tmp_path / "e.jsonl"), "--catalog", db).exit_code == 0
    res = cli("catalog", "import", str(tmp_path / "e.jsonl"), "--json", "--catalog", str(tmp_path / "b.sqlite"))
    assert json.loads(res.stdout)["catalog_entries"] == 6
    res = cli("catalog", "check", "--json", "--catalog", db)
    assert res.exit_code == 0 and json.loads(res.stdout)["ok"] is True
    res = cli("catalog", "ls", "--where", "name='x' OR 1=1", "--catalog", db)
    assert res.exit_code == 2 and "FIELD OP VALUE" in res.stderr


def test_the_default_catalog_is_in_the_data_directory_or_the_env_var(
    cli: Any, world: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(keys.CATALOG_ENV, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_path() == tmp_path / "xdg" / "reprodl" / "catalog.sqlite"
    monkeypatch.setenv(keys.CATALOG_ENV, str(tmp_path / "env.sqlite"))
    assert cli("catalog", "add", world["claim"], "-q").exit_code == 0
    assert sqlite3.connect(tmp_path / "env.sqlite").execute("SELECT name FROM entries").fetchall() == [("a-vs-b",)]


def test_entries_put_directly_link_up(tmp_path: Path) -> None:
    with Catalog(":memory:") as catalog:
        catalog.put(Entry("d", "dataset", "data", "m", uris=["s3://b/d"]))
        catalog.put(Entry("c", "claim", "claim", "m", uris=["s3://b/c"], links=[Link("member", None, "s3://b/m")]))
        catalog.put(Entry("m", "model", "net", "m", uris=["s3://b/m"], links=[Link("trained_on", "d", role="train")]))
        catalog.resolve_links()
        assert _names(descendants(catalog, "data")) == ["claim", "net"]


# --- the full-text index keeps no second copy of the READMEs (issue 22 item 5) ---------------
# The catalog a reprodl before schema version 2 made: its full-text index held its own copy of
# every name, README and annotation text.
_V1_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE entries (
    id INTEGER PRIMARY KEY, uuid TEXT NOT NULL, manifest_digest TEXT NOT NULL, kind TEXT NOT NULL,
    name TEXT NOT NULL, readme TEXT NOT NULL DEFAULT '', readme_fields TEXT NOT NULL DEFAULT '{}',
    annotations TEXT NOT NULL DEFAULT '{}', record_digest TEXT, created_at TEXT, creator TEXT,
    verdict TEXT, indexed_at TEXT, UNIQUE (uuid, manifest_digest)
);
CREATE VIRTUAL TABLE search USING fts5 (name, readme, annotations, tokenize = 'unicode61');
INSERT INTO meta VALUES ('schema_version', '1');
INSERT INTO entries (uuid, manifest_digest, kind, name, readme) VALUES ('u1', 'm', 'dataset', 'digits', 'a README');
INSERT INTO search (rowid, name, readme, annotations) VALUES (1, 'digits', 'a README', '');
"""


def test_a_readme_is_stored_once_in_the_catalog_file(tmp_path: Path) -> None:
    readme = "- " * 500_000  # 1 MB of text and no word: the index of it is empty, any copy of it is not
    path = tmp_path / "c.sqlite"
    with Catalog(path) as catalog:
        catalog.put(Entry("u1", "dataset", "digits", "m", uris=["s3://b/d"], readme=readme))
        catalog.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        assert catalog.entries()[0].readme == readme
    assert 1_000_000 < path.stat().st_size < 1_400_000  # twice over 2 MB with the index's own copy


def test_search_follows_entries_replaced_and_forgotten(tmp_path: Path) -> None:
    with Catalog(tmp_path / "c.sqlite") as catalog:
        net = {"uuid": "u1", "kind": "model", "name": "net", "manifest_digest": "m", "uris": ["s3://b/m"]}
        catalog.put(Entry(**net, readme="zebra stripes", annotations={"owner": "alice"}))
        catalog.put(Entry("u2", "model", "other", "m", uris=["s3://b/o"], readme="zebra"))
        catalog.put(Entry(**net, readme="lion mane", annotations={"owner": "bob"}))
        assert [e.name for e in search(catalog, "zebra")] == ["other"]
        assert [e.name for e in search(catalog, "lion")] == [e.name for e in search(catalog, "bob")] == ["net"]
        assert search(catalog, "stripes") == [] and search(catalog, "alice") == []
        catalog.remove_location("s3://b/o")
        assert search(catalog, "zebra") == [] and len(catalog) == 1
        # FTS5 compares its index with the text in entries: no stale or missing token anywhere.
        catalog.db.execute("INSERT INTO search (search) VALUES ('integrity-check')")
    with Catalog(tmp_path / "c.sqlite") as catalog:  # opened again: the schema check passes
        assert [e.name for e in search(catalog, "mane")] == ["net"]


def test_a_catalog_an_older_reprodl_made_is_refused_with_how_to_build_it_again(cli: Any, tmp_path: Path) -> None:
    db = tmp_path / "v1.sqlite"
    with sqlite3.connect(db) as old:
        old.executescript(_V1_SCHEMA)
    res = cli("catalog", "ls", "--catalog", str(db))
    assert res.exit_code != 0, res.stdout
    assert f"v1.sqlite has schema version 1, this reprodl reads {keys.CATALOG_SCHEMA_VERSION}" in res.stderr
    assert "reprodl catalog add URI" in res.stderr and "reprodl catalog import" in res.stderr
    assert sqlite3.connect(db).execute("SELECT name FROM search").fetchall() == [("digits",)]  # left as it was


def test_a_file_that_is_not_a_catalog_is_refused_with_the_fix(tmp_path: Path) -> None:
    bad = tmp_path / "notes.sqlite"
    bad.write_text("not a database, just notes\n" * 100)
    with pytest.raises(CatalogError, match=r"cannot open the catalog .*notes.sqlite.*--catalog"):
        Catalog(bad)
    with Catalog(tmp_path / "old.sqlite") as catalog:
        catalog.db.execute("UPDATE meta SET value = '0' WHERE key = 'schema_version'")
        catalog.db.commit()
    reads = f"schema version 0, this reprodl reads {keys.CATALOG_SCHEMA_VERSION}: build it again"
    with pytest.raises(CatalogError, match=reads):
        Catalog(tmp_path / "old.sqlite")
    with Catalog(":memory:") as catalog:
        with pytest.raises(CatalogError, match="could not write the export"):
            export_jsonl(catalog, tmp_path / "no-such-dir" / "e.jsonl")
        with pytest.raises(CatalogError, match="no catalog export at"):
            import_jsonl(catalog, tmp_path / "missing.jsonl")


# --- a new user's review: outputs, --where types, architecture, n_samples, check -q, paths ----
def test_graph_and_export_refuse_an_existing_file_unless_overwrite(cat: Catalog, tmp_path: Path, cli: Any) -> None:
    import os

    graph, out, dump = build_graph(cat), tmp_path / "g.dot", tmp_path / "e.jsonl"
    for path in (out, dump):
        path.write_text("keep me")
    with pytest.raises(CatalogError, match=r"g\.dot already exists: .* --overwrite"):
        write_graph(graph, out)
    with pytest.raises(CatalogError, match=r"e\.jsonl already exists: .* --overwrite"):
        export_jsonl(cat, dump)
    assert out.read_text() == dump.read_text() == "keep me"
    res = cli("catalog", "export", "-o", dump, "--catalog", cat.path)
    assert res.exit_code != 0 and "--overwrite" in res.stderr and dump.read_text() == "keep me"
    old = os.umask(0o022)
    try:
        assert write_graph(graph, out, overwrite=True).read_text().startswith("digraph")
        res = cli("catalog", "export", "-o", dump, "--overwrite", "--catalog", cat.path)
    finally:
        os.umask(old)
    assert res.exit_code == 0 and len(dump.read_text().splitlines()) == len(cat)
    assert (out.stat().st_mode & 0o777, dump.stat().st_mode & 0o777) == (0o644, 0o644)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == []


def test_check_quiet_prints_only_problems(cli: Any, world: dict[str, Any], tmp_path: Path) -> None:
    shutil.copytree(path_of(world["more"]), tmp_path / "d" / "more")
    shutil.copytree(path_of(world["claim"]), tmp_path / "d" / "claim")
    db = str(tmp_path / "c.sqlite")
    assert cli("catalog", "add", tmp_path / "d", "--catalog", db, "-q").exit_code == 0
    res = cli("catalog", "check", "-q", "--catalog", db)
    assert res.exit_code == 0 and res.stdout.splitlines() == ["2/2 locations ok"]
    shutil.rmtree(tmp_path / "d" / "claim")
    res = cli("catalog", "check", "-q", "--catalog", db)
    lines = res.stdout.splitlines()
    assert res.exit_code == 1 and len(lines) == 2 and lines[0].startswith("vanished") and lines[1] == "1/2 locations ok"


def test_a_catalog_whose_directory_is_missing_is_refused(
    cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "no" / "dir" / "x.sqlite"
    with pytest.raises(CatalogError, match=r"its directory .*no/dir does not exist.*create it"):
        Catalog(missing)
    res = cli("catalog", "ls", "--catalog", missing)
    assert res.exit_code != 0 and "does not exist" in res.stderr and not (tmp_path / "no").exists()
    monkeypatch.delenv(keys.CATALOG_ENV, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    with Catalog() as catalog:  # the default, in the data directory: created
        assert Path(catalog.path) == tmp_path / "xdg" / "reprodl" / "catalog.sqlite"
