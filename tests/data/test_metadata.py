"""README metadata: validation that names the bad field, user schemas, bad YAML."""

from __future__ import annotations

import json

import pytest
import yaml

from reprodl.data.readme import DatasetReadme, make_readme, render_readme, validate_readme
from reprodl.errors import MetadataError

GOOD = {
    "name": "digits",
    "description": "8x8 handwritten digits",
    "authors": ["E. Alpaydin"],
    "origin": "sklearn.datasets.load_digits",
    "license": "CC BY 4.0",
}


def _yaml(**changes) -> str:
    data = {**GOOD, **changes}
    return yaml.safe_dump({k: v for k, v in data.items() if v is not None}, sort_keys=False)


def test_valid_readme_round_trips():
    readme = validate_readme(render_readme(DatasetReadme(**GOOD)))
    assert readme.model_dump(exclude_none=True) == GOOD


def test_extra_fields_are_kept():
    readme = validate_readme(_yaml(funding="EPSRC"))
    assert readme.model_dump()["funding"] == "EPSRC"


def test_single_author_string_becomes_a_list():
    assert validate_readme(_yaml(authors="Ada")).authors == ["Ada"]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"description": None}, "description"),
        ({"authors": []}, "authors"),
        ({"origin": ""}, "origin"),
        ({"usetype": "banana"}, "usetype"),
        ({"license": 5}, "license"),
    ],
)
def test_invalid_readme_names_the_bad_field(changes, field):
    with pytest.raises(MetadataError, match=rf"does not validate: .*\b{field}\b"):
        validate_readme(_yaml(**changes))


def test_every_bad_field_is_named_at_once():
    with pytest.raises(MetadataError) as info:
        validate_readme(_yaml(description=None, origin=None))
    assert "description" in str(info.value) and "origin" in str(info.value)


def test_metadata_error_is_a_value_error():
    with pytest.raises(ValueError):
        validate_readme(_yaml(authors=[]))


def test_bad_yaml_is_refused():
    with pytest.raises(MetadataError, match="not valid YAML"):
        validate_readme("name: [unclosed\ndescription: x\n")


@pytest.mark.parametrize("text", ["just a string", "- a\n- list\n", ""])
def test_readme_that_is_not_a_mapping_is_refused(text):
    with pytest.raises(MetadataError, match="must be a YAML mapping"):
        validate_readme(text)


USER_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["funding"],
    "properties": {"funding": {"type": "string", "pattern": "^[A-Z]+$"}},
}


@pytest.mark.parametrize("suffix", [".json", ".yml"])
def test_user_schema_file_extends_the_builtin_schema(tmp_path, suffix):
    path = tmp_path / f"schema{suffix}"
    path.write_text(json.dumps(USER_SCHEMA) if suffix == ".json" else yaml.safe_dump(USER_SCHEMA))
    assert validate_readme(_yaml(funding="EPSRC"), schema=path).model_dump()["funding"] == "EPSRC"
    with pytest.raises(MetadataError, match="user schema: .*'funding' is a required property"):
        validate_readme(_yaml(), schema=path)
    with pytest.raises(MetadataError, match=r"user schema: funding: 'epsrc' does not match"):
        validate_readme(_yaml(funding="epsrc"), schema=path)


def test_builtin_schema_still_applies_with_a_user_schema(tmp_path):
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(USER_SCHEMA))
    with pytest.raises(MetadataError, match="does not validate: authors"):
        validate_readme(_yaml(authors=[], funding="EPSRC"), schema=path)


def test_user_schema_file_that_is_not_json_is_refused(tmp_path):
    path = tmp_path / "schema.json"
    path.write_text("{not json")
    with pytest.raises(MetadataError, match="schema.json is not valid JSON/YAML"):
        validate_readme(_yaml(), schema=path)


def test_user_schema_that_is_not_a_json_schema_is_refused():
    with pytest.raises(MetadataError, match="not a valid JSON Schema"):
        validate_readme(_yaml(), schema={"type": "no-such-type"})


def test_missing_user_schema_file_is_named(tmp_path):
    with pytest.raises(MetadataError, match="cannot read the schema file .*nope.json"):
        validate_readme(_yaml(), schema=tmp_path / "nope.json")


def test_make_readme_fields_override_the_file(tmp_path):
    path = tmp_path / "README.yml"
    path.write_text(_yaml(description="from the file"))
    text = make_readme(name="digits", readme_file=path, description="from the flag")
    data = yaml.safe_load(text)
    assert data["description"] == "from the flag"
    assert data["authors"] == GOOD["authors"]


def test_make_readme_bad_yaml_file_is_named(tmp_path):
    path = tmp_path / "README.yml"
    path.write_text("a: [b\n")
    with pytest.raises(MetadataError, match="README.yml is not valid YAML"):
        make_readme(name="x", readme_file=path)


def test_make_readme_missing_file_is_named(tmp_path):
    with pytest.raises(MetadataError, match="cannot read the README file .*missing.yml"):
        make_readme(name="x", readme_file=tmp_path / "missing.yml")


def test_make_readme_without_required_fields_is_refused():
    with pytest.raises(MetadataError, match="description"):
        make_readme(name="x", authors=["a"], origin="o")
