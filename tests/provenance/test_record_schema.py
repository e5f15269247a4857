"""The provenance record describes itself: every field has a description, and docs/formats.md's
table of the record's fields is the one rendered from the JSON Schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reprodl.provenance.record import FIELDS_END, FIELDS_START, fields_table, record_json_schema

FORMATS = Path(__file__).resolve().parents[2] / "docs" / "formats.md"


def _undescribed(schema: dict[str, Any]) -> list[str]:
    """``Model.field`` for every property of the schema and its definitions without a description."""
    missing = []
    objects = {"ProvenanceRecord": schema, **schema.get("$defs", {})}
    for model, node in objects.items():
        if not node.get("description"):
            missing.append(model)
        for name, prop in node.get("properties", {}).items():
            if not str(prop.get("description", "")).strip():
                missing.append(f"{model}.{name}")
    return missing


def test_every_record_field_has_a_description():
    schema = record_json_schema()
    assert len(schema["$defs"]) >= 14  # every part of the record is a definition the walk reaches
    assert _undescribed(schema) == []


def test_the_walk_catches_a_field_without_a_description():
    schema = {"properties": {"a": {"type": "string", "description": "x"}, "b": {"type": "int"}}, "description": "d"}
    assert _undescribed(schema) == ["ProvenanceRecord.b"]


def test_the_fields_table_covers_every_field_with_its_path_and_type():
    table = fields_table()
    rows = table.splitlines()[2:]
    paths = [row.split(" | ")[0].removeprefix("| ").strip("`") for row in rows]
    assert len(paths) == len(set(paths))
    for path in ("schema_version", "data[].manifest_digest", "training.seeds.worker_seeds", "lineage.parent.uri"):
        assert path in paths
    assert "| `results.history[].epoch` | int | epoch number, from 1 |" in table
    assert "| `architecture.source_sha256` | str or null |" in table


def test_docs_formats_holds_the_current_fields_table():
    text = FORMATS.read_text(encoding="utf-8")
    assert text.count(FIELDS_START) == 1 and text.count(FIELDS_END) == 1
    section = text.split(FIELDS_START, 1)[1].split(FIELDS_END, 1)[0]
    assert section.strip() == fields_table().strip(), (
        "docs/formats.md's table of record fields is out of date: replace the lines between "
        f"{FIELDS_START} and {FIELDS_END} with the output of `reprodl schema provenance --markdown`"
    )


def test_schema_markdown_prints_the_table(cli):
    result = cli("schema", "provenance", "--markdown")
    assert result.exit_code == 0, result.output
    assert result.stdout == fields_table()
    refused = cli("schema", "readme", "--markdown")
    assert refused.exit_code != 0
    assert "provenance schema only" in refused.output
