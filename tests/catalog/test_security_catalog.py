"""Hostile catalog input (issue 17, items 7 and 8), through the real ``reprodl catalog`` commands.

A catalog file is data, not code: one holding a trigger, a view or a table that is not of
reprodl's schema is refused before anything reads it. ``catalog import`` refuses a malformed
line by its number. A reproduction counts as verified only when the record digest it names is
the catalogued original's; an annotation naming a made-up digest shows as unverified.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.register_assert_rewrite("train_fixtures")

from train_fixtures import TrainedModel, rewrite_model

from reprodl import keys
from reprodl.catalog import Catalog, Entry

pytest_plugins = ["train_fixtures"]

MADE_UP_DIGEST = "sha256:" + "0" * 64


def _catalog_with(tmp_path: Path, *statements: str, name: str = "hostile.sqlite") -> Path:
    """A catalog file reprodl made (one entry), then edited with raw SQL as an attacker would."""
    path = tmp_path / name
    with Catalog(path) as cat:
        cat.put(Entry("u1", "dataset", "digits", "m", uris=["file:///data/digits"]))
    db = sqlite3.connect(path)
    db.executescript(";\n".join(statements))
    db.commit()
    db.close()
    return path


def _export_line(tmp_path: Path, **fields: Any) -> Path:
    path = tmp_path / "in.jsonl"
    path.write_text(
        json.dumps(Entry("u2", "model", "net", "m2", uris=["file:///models/net"], **fields).to_dict()) + "\n"
    )
    return path


# --- item 8: a catalog file with objects reprodl did not create -------------------------------
def test_a_catalog_with_a_trigger_that_rewrites_rows_is_refused(cli: Any, tmp_path: Path) -> None:
    db = _catalog_with(
        tmp_path,
        "CREATE TRIGGER forge AFTER INSERT ON entries BEGIN "
        "UPDATE entries SET name = 'trusted-model', verdict = 'identical' WHERE id = new.id; END",
    )
    res = cli("catalog", "import", str(_export_line(tmp_path)), "--catalog", str(db))
    assert res.exit_code != 0, res.stdout
    assert "trigger 'forge'" in res.stderr and "hostile.sqlite" in res.stderr
    rows = sqlite3.connect(db).execute("SELECT name, verdict FROM entries ORDER BY id").fetchall()
    assert rows == [("digits", None)]  # nothing was written, so the trigger never ran


def test_a_catalog_with_a_recursive_view_is_refused_not_hung(tmp_path: Path) -> None:
    # Every command reads the schema version from meta: as an endless view, it hung them all.
    db = _catalog_with(
        tmp_path,
        "DROP TABLE meta",
        "CREATE VIEW meta (key, value) AS WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) "
        "SELECT 'k' || n, 'v' FROM r",
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    for command in (["ls"], ["search", "digits"], ["export", "-o", str(tmp_path / "e.jsonl")]):
        done = subprocess.run(
            [sys.executable, "-c", "from reprodl.cli import main; main()", "catalog", *command, "--catalog", str(db)],
            capture_output=True,
            text=True,
            timeout=60,  # a regression fails here instead of hanging the suite
            env=env,
        )
        assert done.returncode != 0, done.stdout
        assert "view 'meta'" in done.stderr, done.stderr


def test_a_catalog_with_an_extra_table_is_refused(cli: Any, tmp_path: Path) -> None:
    db = _catalog_with(tmp_path, "CREATE TABLE notes (text TEXT)")
    res = cli("catalog", "ls", "--catalog", str(db))
    assert res.exit_code != 0 and "table 'notes'" in res.stderr
    db = _catalog_with(
        tmp_path, "DROP INDEX entries_kind", "CREATE INDEX entries_kind ON entries (kind, name)", name="b"
    )
    res = cli("catalog", "ls", "--catalog", str(db))
    assert res.exit_code != 0 and "index 'entries_kind'" in res.stderr


def test_a_catalog_reprodl_made_still_opens_and_answers(cli: Any, tmp_path: Path) -> None:
    db = _catalog_with(tmp_path)  # no edit
    for _ in range(2):  # a second open finds the schema it made
        res = cli("catalog", "ls", "--json", "--catalog", str(db))
        assert res.exit_code == 0, res.stderr
        assert [e["name"] for e in json.loads(res.stdout)] == ["digits"]


# --- item 8: catalog import refuses malformed lines by number ---------------------------------
@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('{"uuid": "u3", "kind": "dataset", "name": "d", "manifest_digest": "m", "uris": "file:/x"}', "uris"),
        ('{"uuid": "u3", "kind": "model", "name": "d", "manifest_digest": "m", "fields": {"acc": 1e999}}', "acc"),
        ('{"uuid": "u3", "kind": "model", "name": "d", "manifest_digest": "m", "annotations": {"a": [NaN]}}', "NaN"),
        (
            '{"uuid": "u3", "kind": "model", "name": "d", "manifest_digest": "m", "links": [{"relation": "reproduces", '
            '"uuid": ["u1"]}]}',
            "uuid",
        ),
        ('{"uuid": "u3", "kind": "model", "name": 7, "manifest_digest": "m"}', "name"),
        ("[1, 2]", "JSON list"),
        ('"an entry"', "JSON str"),
        ('{"uuid": "u3", "kind":', "not valid JSON"),
    ],
)
def test_import_refuses_a_malformed_line_by_its_number(cli: Any, tmp_path: Path, line: str, problem: str) -> None:
    good = json.dumps(Entry("u2", "dataset", "ok", "m2").to_dict())
    path = tmp_path / "team.jsonl"
    path.write_text(f"{good}\n\n{line}\n")
    db = str(tmp_path / "c.sqlite")
    res = cli("catalog", "import", str(path), "--catalog", db)
    assert res.exit_code != 0, res.stdout
    message = " ".join(res.stderr.split())
    assert "team.jsonl line 3" in message and problem in message, message
    res = cli("catalog", "ls", "--json", "--catalog", db)
    assert json.loads(res.stdout) == []  # nothing of the file was imported
    assert "Infinity" not in res.stdout


# --- item 7: a reproduction counts only when the original's record digest matches -------------
@pytest.fixture(scope="module")
def repro_world(trained_model: TrainedModel, tmp_path_factory: pytest.TempPathFactory, cli: Any) -> dict[str, Any]:
    """The trained model, a reproduction `reprodl reproduce` kept, and a model whose annotation
    claims an identical reproduction of it under a made-up record digest; all catalogued."""
    from reprodl.store import normalise_uri, open_dataset

    root = tmp_path_factory.mktemp("repro-world")
    models = root / "models"
    models.mkdir()
    shutil.copytree(trained_model.path, models / "digits-model")
    model = normalise_uri(str(models / "digits-model"))
    res = cli("reproduce", model, "--output", str(models), "--json")
    assert res.exit_code == 0, res.stderr
    genuine = json.loads(res.stdout)["reproduction_uri"]
    forged = rewrite_model(model, models, "forged-model")
    original = open_dataset(model)
    open_dataset(forged).put_annotation(
        keys.REPRODUCTION_RESULT,
        {
            "verdict": "identical",
            "mode": "in-process",
            "original_uri": model,
            "original_uuid": original.uuid,
            "original_record_digest": MADE_UP_DIGEST,
            "reasons": [],
        },
    )
    db = str(root / "catalog.sqlite")
    assert cli("catalog", "add", str(models), "-q", "--catalog", db).exit_code == 0
    return {
        "db": db,
        "model": model,
        "uuid": original.uuid,
        "genuine": open_dataset(genuine).uuid,
        "forged": open_dataset(forged).uuid,
        "root": root,
    }


@pytest.fixture(scope="module")
def cli() -> Any:
    from typer.testing import CliRunner

    import reprodl.cli

    reprodl.cli._register()
    runner = CliRunner()

    def invoke(*args: str) -> Any:
        return runner.invoke(reprodl.cli.app, [str(a) for a in args])

    return invoke


def test_reproductions_mark_a_forged_annotation_unverified(cli: Any, repro_world: dict[str, Any]) -> None:
    w = repro_world
    res = cli("catalog", "reproductions", w["model"], "--json", "--catalog", w["db"])
    found = {r["uuid"]: r for r in json.loads(res.stdout)["reproductions"]}
    assert set(found) == {w["genuine"], w["forged"]}
    assert found[w["genuine"]]["verified"] is True and found[w["genuine"]]["verdict"] == "identical"
    assert found[w["forged"]]["verified"] is False
    text = cli("catalog", "reproductions", w["model"], "--catalog", w["db"]).stdout
    (forged_line,) = [line for line in text.splitlines() if "forged-model" in line]
    (genuine_line,) = [line for line in text.splitlines() if "reproduction" in line and "forged" not in line]
    assert "unverified" in forged_line and "unverified" not in genuine_line


def test_lineage_and_descendants_mark_a_forged_reproduction_unverified(cli: Any, repro_world: dict[str, Any]) -> None:
    w = repro_world
    for ref, verified in ((w["forged"], False), (w["genuine"], True)):
        nodes = json.loads(cli("catalog", "lineage", ref, "--json", "--catalog", w["db"]).stdout)
        (node,) = [n for n in nodes if n["relation"] == "reproduces"]
        assert node["uuid"] == w["uuid"] and node["verified"] is verified
        text = cli("catalog", "lineage", ref, "--catalog", w["db"]).stdout
        assert ("unverified" in text) is not verified
    nodes = json.loads(cli("catalog", "descendants", w["model"], "--json", "--catalog", w["db"]).stdout)
    assert {n["uuid"]: n["verified"] for n in nodes if n["relation"] == "reproduces"} == {
        w["genuine"]: True,
        w["forged"]: False,
    }


def test_ls_search_and_graph_mark_a_forged_reproduction_unverified(
    cli: Any, repro_world: dict[str, Any], tmp_path: Path
) -> None:
    w = repro_world
    listed = json.loads(cli("catalog", "ls", "--kind", "model", "--json", "--catalog", w["db"]).stdout)
    assert {e["uuid"]: e.get("verified") for e in listed} == {w["uuid"]: None, w["genuine"]: True, w["forged"]: False}
    text = cli("catalog", "ls", "--kind", "model", "--catalog", w["db"]).stdout
    (forged_line,) = [line for line in text.splitlines() if w["forged"] in line]
    (genuine_line,) = [line for line in text.splitlines() if w["genuine"] in line]
    assert "[identical, unverified]" in forged_line and "[identical]" in genuine_line
    found = json.loads(cli("catalog", "search", "forged", "--json", "--catalog", w["db"]).stdout)
    assert [(e["uuid"], e["verified"]) for e in found] == [(w["forged"], False)]
    assert cli("catalog", "graph", "-o", str(tmp_path / "g.dot"), "--catalog", w["db"]).exit_code == 0
    dot = (tmp_path / "g.dot").read_text()
    assert f'"{w["uuid"]}" -> "{w["forged"]}" [label="reproduced (unverified)"' in dot
    assert f'"{w["uuid"]}" -> "{w["genuine"]}" [label="reproduced"' in dot


def test_a_verdict_about_another_original_than_the_record_names_is_not_taken(
    cli: Any, repro_world: dict[str, Any], tmp_path: Path
) -> None:
    from reprodl.store import normalise_uri, open_dataset

    w = repro_world
    genuine_path = next(p for p in (w["root"] / "models").iterdir() if open_dataset(str(p)).uuid == w["genuine"])
    copy = normalise_uri(str(shutil.copytree(genuine_path, tmp_path / "models" / genuine_path.name)))
    result = open_dataset(copy).get_annotation(keys.REPRODUCTION_RESULT)
    open_dataset(copy).put_annotation(keys.REPRODUCTION_RESULT, {**result, "original_uuid": w["forged"]})
    db = str(tmp_path / "c.sqlite")
    assert cli("catalog", "add", w["model"], "-q", "--catalog", db).exit_code == 0
    assert cli("catalog", "add", copy, "-q", "--catalog", db).exit_code == 0
    (entry,) = json.loads(cli("catalog", "reproductions", w["model"], "--json", "--catalog", db).stdout)[
        "reproductions"
    ]
    assert entry["uuid"] == w["genuine"] and entry["verdict"] is None  # the record's link stays, verified
    assert entry["verified"] is True
