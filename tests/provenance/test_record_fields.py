"""Derived, not listed: ``diff``, ``provenance``'s printed sections, the MLflow params and the
docs' field table walk the record's schema, so a field added to the record appears in each."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic.fields import FieldInfo

from reprodl import keys
from reprodl.provenance import Lineage, ProvenanceRecord, Training, diff_records, parse_record
from reprodl.provenance.fields import under
from reprodl.provenance.record import Field, fields_table, record_json_schema

pytest_plugins = ["train_fixtures"]

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
NEW = "calibration_note"
NEW_DESCRIPTION = "a field added to the schema by a test"


def _golden_raw() -> dict[str, Any]:
    return json.loads((GOLDEN / keys.PROVENANCE_FILE).read_text(encoding="utf-8"))


def _rebuild() -> None:
    Training.model_rebuild(force=True)
    ProvenanceRecord.model_rebuild(force=True)


@pytest.fixture
def new_field() -> Iterator[str]:
    """``training.calibration_note`` added to the record's schema (the Training model) for one test."""
    Training.model_fields[NEW] = FieldInfo.from_annotated_attribute(
        str | None,
        Field(None, description=NEW_DESCRIPTION),
    )
    _rebuild()
    try:
        yield NEW
    finally:
        del Training.model_fields[NEW]
        _rebuild()


def _model(tmp_path: Path, name: str, edit: Any) -> str:
    """A copy of the golden model dataset with its record edited (and resealed)."""
    from train_fixtures import rewrite_model

    src = tmp_path / "golden"
    if not src.exists():
        shutil.copytree(GOLDEN / "digits-golden", src)
    (tmp_path / "models").mkdir(exist_ok=True)
    return rewrite_model(str(src), tmp_path / "models", name, edit=edit)


def test_a_field_added_to_the_schema_appears_in_diff_provenance_mlflow_and_the_docs_table(
    new_field: str, tmp_path: Path, cli: Any
) -> None:
    from reprodl.exports.mlflow_run import _params
    from reprodl.modeldataset.read import load_record

    assert "calibration_note" in record_json_schema()["$defs"]["Training"]["properties"]
    a = _model(tmp_path, "a", lambda raw: raw["training"].update({new_field: "before"}))
    b = _model(tmp_path, "b", lambda raw: raw["training"].update({new_field: "after"}))

    as_json = json.loads(cli("diff", a, b, "--json").stdout)
    assert as_json == {"training": [{"key": new_field, "a": "before", "b": "after", "path": f"training.{new_field}"}]}
    table = cli("diff", a, b)
    assert table.exit_code == 0, table.output
    assert new_field in table.stdout and "before" in table.stdout and "after" in table.stdout

    printed = cli("provenance", a)
    assert printed.exit_code == 0, printed.output
    (line,) = [line for line in printed.stdout.splitlines() if line.startswith("  training: ")]
    assert f'{new_field}="before"' in line

    assert _params(load_record(a))[f"training.{new_field}"] == "before"

    row = f"| `training.{new_field}` | str or null | {NEW_DESCRIPTION} |"
    assert row in fields_table()
    markdown = cli("schema", "provenance", "--markdown")
    assert markdown.exit_code == 0 and row in markdown.stdout


def model_node(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any] | None:
    """The model (an object with properties) a JSON Schema node is or refers to, if any."""
    if "properties" in node:
        return node
    refs = [part["$ref"] for part in [node, *node.get("anyOf", [])] if "$ref" in part]
    return schema["$defs"][refs[0].rsplit("/", 1)[-1]] if refs else None


def _example(schema: dict[str, Any], node: dict[str, Any]) -> Any:
    """A valid value of a schema node: a model with its required fields, else a scalar of its type."""
    model = model_node(schema, node)
    if model is not None:
        return {k: _example(schema, model["properties"][k]) for k in model.get("required", [])}
    options = [o for o in node.get("anyOf", [node]) if o.get("type") != "null"]
    first = options[0]
    if "enum" in first or "const" in first:
        return first.get("enum", [first.get("const")])[0]
    return {"string": "x", "integer": 1, "number": 1.5, "boolean": True, "array": [], "object": {}}[first["type"]]


def _changed(schema: dict[str, Any], node: dict[str, Any], value: Any) -> Any:
    """Another valid value for a field: its example when unset, else the value changed by its kind."""
    if value is None:
        return _example(schema, node)
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "-changed"
    if isinstance(value, list):
        return [*value, value[0]] if value else [_example(schema, node.get("items", {"type": "string"}))]
    return {**value, "added_by_test": 1}  # a model allows fields beyond its own; a dict takes any


def _fields(model: Any, prefix: str) -> list[str]:
    return [f"{prefix}.{name}" for name in model.model_fields]


@pytest.mark.parametrize("field", _fields(Training, "training") + _fields(Lineage, "lineage"))
def test_diff_reports_a_change_in_each_training_and_lineage_field(field: str) -> None:
    schema = record_json_schema()
    section, name = field.split(".")
    node = model_node(schema, schema["properties"][section])
    assert node is not None
    raw = _golden_raw()
    a = parse_record(json.dumps(raw))
    raw[section][name] = _changed(schema, node["properties"][name], raw[section].get(name))
    b = parse_record(json.dumps(raw))
    rows = [row for rows in diff_records(a, b).values() for row in rows]
    assert rows and all(under(row["path"], field) for row in rows), rows


def test_a_record_with_ten_thousand_keys_prints_a_bounded_summary_and_diff(tmp_path: Path, cli: Any) -> None:
    def edit(raw: dict[str, Any]) -> None:
        raw.update({f"extra_{i}": i for i in range(10_000)})
        raw["training"].update({f"extra_{i}": i for i in range(10_000)})
        raw["training"]["params"].update({f"p{i}": "\x1b[31mred" for i in range(10_000)})

    plain = _model(tmp_path, "plain", None)
    hostile = _model(tmp_path, "hostile", edit)
    printed = cli("provenance", hostile)
    assert printed.exit_code == 0, printed.output
    assert len(printed.stdout.splitlines()) < 200 and "\x1b" not in printed.stdout
    assert 'more_fields="9,950 more fields outside the schema"' in printed.stdout  # at the top and in training
    diff = cli("diff", plain, hostile)
    assert diff.exit_code == 0, diff.output
    assert len(diff.stdout.splitlines()) < 400 and "\x1b" not in diff.stdout
    assert "... 9940 more" in diff.stdout  # the 10,000 params: a section's rows past 60 are counted
    assert "more_fields" in diff.stdout  # the fields outside the schema past 50 are counted


def test_fields_outside_the_schema_are_bounded_by_name_length_and_nesting() -> None:
    """A field outside the schema: its name cut (with its length and digest), a large value summarised."""
    from reprodl.provenance.summary import summary_lines

    raw = _golden_raw()
    plain = ProvenanceRecord.model_validate(raw)
    raw["k" * 100_000] = 1
    raw["nested"] = {f"x{i}": {f"y{j}": j for j in range(100)} for i in range(100)}
    hostile = ProvenanceRecord.model_validate(raw)
    assert max(map(len, summary_lines(hostile))) < 10_000
    rows = [row for rows in diff_records(plain, hostile).values() for row in rows]
    assert len(rows) < 200 and max(len(r["key"]) for r in rows) < 10_000


def _forge_lr(raw: dict[str, Any]) -> None:
    """A real change of the learning rate, with a field outside the schema named like its path and holding
    the old value."""
    raw["training.params.learning_rate"] = raw["training"]["params"]["learning_rate"]
    raw["training"]["params"]["learning_rate"] = 0.9


def _forge_encoding(raw: dict[str, Any]) -> None:
    """A real change of the train data's label encoding, with a forged data entry named so that its fields
    flatten to the encoding's paths (``data.train:NAME.category_encoding.0``) and hold the old values."""
    train = raw["data"][0]
    forger = {**train, "name": f"{train['name']}.category_encoding", **train["category_encoding"]}
    train["category_encoding"] = {**train["category_encoding"], "0": 7}
    raw["data"].append(forger)


@pytest.mark.parametrize(
    ("forge", "path", "value"),
    [
        (_forge_lr, "training.params.learning_rate", 0.9),
        (_forge_encoding, "data.train:digits-split.category_encoding.0", 7),
    ],
)
def test_a_field_named_like_another_path_never_hides_a_change_from_diff(forge: Any, path: str, value: Any) -> None:
    raw = _golden_raw()
    a = ProvenanceRecord.model_validate(raw)
    forge(raw)
    b = ProvenanceRecord.model_validate(raw)
    rows = [row for rows in diff_records(a, b).values() for row in rows]
    assert any(row["path"] == path and row["b"] == value for row in rows), rows
