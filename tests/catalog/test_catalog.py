"""The catalog on real datasets and models made by reprodl: indexing, queries, graph, export, check.

One module-scoped world: the digits (and a second digits dataset for a fine-tuning), the
session's trained model, a model fine-tuned from it, a kept reproduction of it (with its
verdict), a claim over both models, and a copy of the digits on another base URI.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

pytest.register_assert_rewrite("train_fixtures")

from train_fixtures import TrainedModel, flip_byte, item_file, path_of, small_params

from reprodl import keys
from reprodl.catalog import (
    Catalog,
    Entry,
    Link,
    add,
    build_graph,
    check,
    default_path,
    descendants,
    export_jsonl,
    import_jsonl,
    lineage,
    ls,
    models_trained_on,
    parse_where,
    reproductions,
    search,
    write_graph,
)
from reprodl.catalog.where import compile_where
from reprodl.errors import CatalogEntryNotFoundError, CatalogError, DatasetNotFoundError

pytest_plugins = ["train_fixtures", "remote_servers"]


def _finetune(base: Path, name: str, data_uri: str, parent: str) -> str:
    """A model fine-tuned from ``parent`` on ``data_uri``'s train split (the record names the parent)."""
    import torch
    from torch import nn

    from reprodl import DerivedDataSet, GenNet, TensorDataSet, train_model_with_metadata_capture

    params = small_params()
    train_ds = TensorDataSet(data_uri, usetype="train")
    torch.manual_seed(0)
    net = GenNet(**params.init_params)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    with DerivedDataSet(str(base), name, train_ds, parent=parent) as out:
        train_model_with_metadata_capture(net, train_ds, opt, nn.NLLLoss(), params, out, progress=False)
    assert out.uri is not None
    return out.uri


def _claim(base: Path, a: str, b: str) -> str:
    from reprodl.modeldataset.read import load_record
    from reprodl.reproduction.claims import Comparison, RunValue, write_claim

    ra, rb = load_record(a), load_record(b)
    runs = {
        "a": [RunValue(0, float(ra.results.final["train_loss"]), a, str(ra.digest))],
        "b": [RunValue(0, float(rb.results.final["train_loss"]), b, str(rb.digest))],
    }
    comparison = Comparison(1.0, 1.0, 1.0, "A better", "train_loss", 1, ["init", "order"], runs, {"a": "A", "b": "B"})
    return write_claim(comparison, str(base), "a-vs-b")


@pytest.fixture(scope="module")
def world(trained_model: TrainedModel, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from reprodl.data.creators import create_digits
    from reprodl.data.ops import split_dataset
    from reprodl.reproduction.rerun import reproduce
    from reprodl.store import copy_dataset, normalise_uri

    root = tmp_path_factory.mktemp("catalog-world")
    for d in ("data", "models", "claims", "mirror"):
        (root / d).mkdir()
    shutil.copytree(path_of(trained_model.data_uri), root / "data" / "digits")
    more = create_digits(str(root / "data"), "more-digits")
    split_dataset(more, test=0.2, seed=1)
    shutil.copytree(trained_model.path, root / "models" / "digits-model")
    model = normalise_uri(str(root / "models" / "digits-model"))
    ft = _finetune(root / "models", "digits-ft", more, model)
    report = reproduce(model, output=str(root / "models"))
    assert report.reproduction_uri is not None and report.verdict == "identical"
    claim = _claim(root / "claims", model, ft)
    mirror = copy_dataset(normalise_uri(str(root / "data" / "digits")), str(root / "mirror"))
    return {
        "root": root,
        "digits": normalise_uri(str(root / "data" / "digits")),
        "more": more,
        "model": model,
        "ft": ft,
        "repro": report.reproduction_uri,
        "claim": claim,
        "mirror": mirror,
    }


@pytest.fixture
def cat(world: dict[str, Any], tmp_path: Path) -> Any:
    """A catalog of the whole world, on tmp_path."""
    with Catalog(tmp_path / "catalog.sqlite") as catalog:
        for base in ("data", "models", "claims", "mirror"):
            add(catalog, str(world["root"] / base))
        yield catalog


def _names(nodes: list[dict[str, Any]]) -> list[str]:
    return sorted(n["name"] for n in nodes)


# --- indexing -------------------------------------------------------------------------------
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


# --- queries ---------------------------------------------------------------------------------
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


def test_ls_where_filters_on_fields_and_columns(cat: Catalog) -> None:
    models = ls(cat, kind="model")
    accuracy = sorted(float(e.fields["valid_accuracy"]) for e in models if "valid_accuracy" in e.fields)
    above = ls(cat, kind="model", where=f"valid_accuracy>{accuracy[0]}")
    assert len(above) == len([a for a in accuracy if a > accuracy[0]])
    assert [e.name for e in ls(cat, where="name='digits-ft' and epochs>=1")] == ["digits-ft"]
    assert [e.name for e in ls(cat, where="kind=claim and verdict='A better'")] == ["a-vs-b"]
    assert ls(cat, kind="dataset", where="n_items=2 AND input_type=TensorDataSet") != []


def test_a_field_no_entry_has_is_named_with_those_there_are(cat: Catalog) -> None:
    with pytest.raises(CatalogError, match=r"no catalogued entry has a field 'valid_acuracy'.*valid_accuracy"):
        ls(cat, where="valid_acuracy>0.5")


def test_where_clause_cannot_inject_sql(cat: Catalog) -> None:
    n = len(cat)
    with pytest.raises(CatalogError, match="FIELD OP VALUE"):
        ls(cat, where="name='x' OR 1=1")
    with pytest.raises(CatalogError, match="FIELD OP VALUE"):
        ls(cat, where="valid_accuracy>0; DROP TABLE entries")
    assert ls(cat, where='name="x\'; DROP TABLE entries; --"') == []
    assert len(cat) == n and cat.db.execute("SELECT count(*) FROM entries").fetchone()[0] == n


def test_where_grammar_compiles_to_parameters_only() -> None:
    conds = parse_where('valid_accuracy >= 0.9 and params.learning_rate<1e-2 AND name = "a b" and x != y')
    sql, args = compile_where(conds)
    assert args == ["valid_accuracy", 0.9, "params.learning_rate", 0.01, "a b", "x", "y"]
    assert "a b" not in sql and "valid_accuracy" not in sql and sql.count("?") == len(args)
    with pytest.raises(CatalogError, match="cannot read the condition 'accuracy'"):
        parse_where("accuracy")


def test_unknown_and_ambiguous_names_are_refused(cat: Catalog, world: dict[str, Any]) -> None:
    with pytest.raises(CatalogEntryNotFoundError, match="nothing in the catalog is called 'nope'"):
        lineage(cat, "nope")
    cat.put(Entry(uuid="other", kind="model", name="digits-model", manifest_digest="m", uris=["file://x/y"]))
    with pytest.raises(CatalogError, match="names 2 catalog entries"):
        lineage(cat, "digits-model")
    assert lineage(cat, world["model"])  # its URI is unique


# --- graph, export, import -----------------------------------------------------------------
def test_graph_is_written_as_dot_svg_and_html(cat: Catalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("reprodl.catalog.graph.shutil.which", lambda name: None)  # our own layout, not Graphviz
    graph = build_graph(cat)
    assert len(graph.nodes) == 6 and ("fine-tuned" in {label for _, _, label in graph.edges})
    dot = write_graph(graph, tmp_path / "g.dot").read_text()
    assert dot.startswith("digraph lineage {") and dot.count("->") == len(graph.edges)
    svg = ET.parse(write_graph(graph, tmp_path / "g.svg")).getroot()
    assert svg.tag.endswith("svg") and len(svg.findall(".//{http://www.w3.org/2000/svg}rect")) == 6
    page = write_graph(graph, tmp_path / "g.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<svg" in page and "digits-ft" in page and "src=" not in page
    focused = build_graph(cat, focus="more-digits")
    assert {n.name for n in focused.nodes.values()} >= {"more-digits", "digits-ft", "a-vs-b"}
    with pytest.raises(CatalogError, match=r"name it \.dot, \.svg or \.html"):
        write_graph(graph, tmp_path / "g.png")


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


# --- check ------------------------------------------------------------------------------------
def test_check_says_which_moved_vanished_or_changed(world: dict[str, Any], tmp_path: Path) -> None:
    base = tmp_path / "models"
    for name in ("digits-model", "digits-ft", Path(world["repro"]).name):
        shutil.copytree(path_of(world["model"]).parent / name, base / name)
    with Catalog(tmp_path / "c.sqlite") as catalog:
        add(catalog, str(base))
        assert {r.status for r in check(catalog)} == {"ok"}
        (base / "digits-ft").rename(base / "digits-ft-moved")
        shutil.rmtree(base / Path(world["repro"]).name)
        flip_byte(item_file(str(base / "digits-model"), keys.PROVENANCE_FILE), offset=-40, keep_mtime=True)
        results = {r.name: r for r in check(catalog)}
        assert results["digits-ft"].status == "moved" and results["digits-ft"].new_uri.endswith("/digits-ft-moved")
        assert results[Path(world["repro"]).name].status == "vanished"
        assert results["digits-model"].status == "changed" and "record" in results["digits-model"].detail
        check(catalog, update=True)
        assert {r.name: r.status for r in check(catalog)} == {"digits-ft": "ok", "digits-model": "changed"}


def test_check_sees_another_manifest_at_the_uri(world: dict[str, Any], tmp_path: Path) -> None:
    from reprodl.store import create_dataset

    with create_dataset(str(tmp_path), "d") as writer:
        writer.put_bytes(b"one", "a.txt")
    with Catalog(tmp_path / "c.sqlite") as catalog:
        add(catalog, str(tmp_path / "d"))
        shutil.rmtree(tmp_path / "d")
        shutil.copytree(path_of(world["more"]), tmp_path / "d")
        (result,) = check(catalog)
    assert result.status == "changed" and "another dataset is there" in result.detail


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


@pytest.mark.slow
def test_a_copy_on_s3_is_the_same_entry_and_checks_ok(s3_bucket: Any, world: dict[str, Any], tmp_path: Path) -> None:
    from reprodl.store import copy_dataset

    s3_uri = copy_dataset(world["more"], s3_bucket.base_uri)
    with Catalog(tmp_path / "c.sqlite") as catalog:
        add(catalog, world["more"])
        report = add(catalog, s3_bucket.base_uri)  # a base URI: every dataset in the bucket
        assert report.new_entries == 0 and [i["uri"] for i in report.indexed] == [s3_uri]
        (entry,) = catalog.find("more-digits")
        assert entry.uris == sorted([world["more"], s3_uri])
        assert {r.uri: r.status for r in check(catalog)} == {world["more"]: "ok", s3_uri: "ok"}


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


def test_where_refuses_text_for_a_number_and_ordering_on_text(cat: Catalog) -> None:
    with pytest.raises(CatalogError, match=r"'valid_accuracy' is a number, so '>' compares it with numbers.*'abc'"):
        ls(cat, where="valid_accuracy>abc")
    with pytest.raises(CatalogError, match=r"--where name>5: the field 'name' is text, and '>' orders numbers only"):
        ls(cat, where="name>5")
    with pytest.raises(CatalogError, match=r"'architecture' is text, and '<=' orders numbers only"):
        ls(cat, where="architecture<=x")
    assert ls(cat, where="created_at>2000-01-01") != []  # ISO 8601 time orders as text


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
