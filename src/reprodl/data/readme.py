"""Dataset README metadata: YAML validated against a schema before a dataset is created.

The built-in schema asks for what a reader needs to trust and cite training data: a name,
a description, authors, where the data came from and its license. A user's own JSON Schema
file (``schema=``) adds rules of their group or repository on top.

Example:
    >>> text = render_readme(DatasetReadme(name="digits", description="8x8 digits",
    ...     authors=["E. Alpaydin"], origin="sklearn.datasets.load_digits", license="CC BY 4.0"))
    >>> validate_readme(text).name
    'digits'
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from reprodl import keys
from reprodl.errors import MetadataError, ReprodlError
from reprodl.parsing import check_size, load_json, load_yaml

Usetype = Literal["train", "test", "valid", "validation", "mixed", "any"]


class DatasetReadme(BaseModel):
    """The fields every reprodl dataset README carries; extra fields are kept."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1, description="Human-readable name of the dataset")
    description: str = Field(min_length=1, description="What the data are")
    authors: list[str] = Field(min_length=1, description="Who made or collected the data")
    origin: str = Field(min_length=1, description="Where the data came from (URL, paper, path)")
    license: str = Field(default="unspecified", description="Terms of use")
    usetype: Usetype | None = Field(default=None, description="train, test, valid, or mixed")

    @field_validator("authors", mode="before")
    @classmethod
    def _one_author_is_a_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


def read_yaml_file(path: str | os.PathLike[str], *, what: str, error: type[ReprodlError] = MetadataError) -> Any:
    """The YAML content of ``path``; ``error`` (naming it as ``what``) when unreadable or not YAML."""
    try:
        text = Path(path).read_bytes()
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror}") from exc
    return load_yaml(text, what=f"{what} {path}", error=error)


def readme_json_schema() -> dict[str, Any]:
    """The JSON Schema of a dataset README (the built-in fields)."""
    return DatasetReadme.model_json_schema()


def render_readme(readme: DatasetReadme | dict[str, Any]) -> str:
    """YAML text of a README (never written by hand)."""
    data = readme.model_dump(exclude_none=True) if isinstance(readme, DatasetReadme) else readme
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def _load_user_schema(schema: str | os.PathLike[str] | dict[str, Any]) -> dict[str, Any]:
    if isinstance(schema, dict):
        return schema
    path = Path(schema)
    try:
        text = path.read_text()
    except OSError as exc:
        raise MetadataError(f"cannot read the schema file {path}: {exc.strerror}") from exc
    what = f"the schema file {path}"
    try:
        loaded = load_yaml(text, what=what) if path.suffix in (".yml", ".yaml") else load_json(text, what=what)
    except MetadataError as exc:
        raise MetadataError(f"{what} is not valid JSON/YAML: {exc}") from None
    if not isinstance(loaded, dict):
        raise MetadataError(f"the schema file {path} must hold a JSON Schema object")
    return loaded


def validate_readme(
    text: str,
    *,
    schema: str | os.PathLike[str] | dict[str, Any] | None = None,
) -> DatasetReadme:
    """Parse README YAML and validate it; raise :class:`MetadataError` naming each bad field."""
    check_size(text, keys.MAX_README_BYTES, what="the README")
    data = load_yaml(text, what="the README")
    if not isinstance(data, dict):
        raise MetadataError("the README must be a YAML mapping with at least: name, description, authors, origin")
    try:
        readme = DatasetReadme.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}" for err in exc.errors())
        raise MetadataError(f"the README does not validate: {problems}") from None
    if schema is not None:
        import jsonschema

        user = _load_user_schema(schema)
        validator_cls = jsonschema.validators.validator_for(user)
        try:
            validator_cls.check_schema(user)
        except jsonschema.SchemaError as exc:
            raise MetadataError(f"the user schema is not a valid JSON Schema: {exc.message}") from None
        errors = sorted(validator_cls(user).iter_errors(data), key=lambda e: list(e.path))
        if errors:
            problems = "; ".join(f"{'.'.join(str(p) for p in e.path) or '(top)'}: {e.message}" for e in errors)
            raise MetadataError(f"the README does not validate against the user schema: {problems}")
    return readme


def make_readme(
    *,
    name: str,
    description: str | None = None,
    authors: list[str] | None = None,
    origin: str | None = None,
    license: str | None = None,
    usetype: str | None = None,
    readme_file: str | os.PathLike[str] | None = None,
    schema: str | os.PathLike[str] | dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    defaults: dict[str, Any] | None = None,
) -> str:
    """README text from a file and/or fields (fields override the file), validated.

    ``defaults`` fill only what neither the file nor the fields give.
    """
    data: dict[str, Any] = dict(defaults or {})
    if readme_file is not None:
        path = Path(readme_file)
        loaded = read_yaml_file(path, what="the README file")
        if not isinstance(loaded, dict):
            raise MetadataError(f"the README file {path} must hold a YAML mapping")
        data.update(loaded)
    data.setdefault("name", name)
    for key, value in (
        ("description", description),
        ("authors", authors),
        ("origin", origin),
        ("license", license),
        ("usetype", usetype),
    ):
        if value:
            data[key] = value
    data.update(extra or {})
    text = render_readme(data)
    validate_readme(text, schema=schema)
    return text
