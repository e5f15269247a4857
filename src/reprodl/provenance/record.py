"""The provenance record: one typed, schema-versioned object; its digest; its diff.

The record is stored as the item ``provenance.json`` of a model dataset, so dtool's manifest
hashes it; it also carries a sha256 digest of itself (over its canonical JSON without the
``digest`` field), so a copied record that was edited is caught, and a chain of models
(``lineage.parent.record_digest``) can be checked offline. No torch here: ``reprodl
provenance URI`` answers without importing it.

Example:
    >>> record = parse_record(open("provenance.json").read())   # doctest: +SKIP
    >>> record.training.optimizer.class_name               # doctest: +SKIP
    'SGD'

The record's parts are defined by section, each importable from here as before:
:mod:`.data_refs` (the data), :mod:`.training_info` (the training), :mod:`.code_env` (code and
environment) and :mod:`.results`; this module holds the record itself, its digest and parsing,
and the field table the docs show.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import Field, PrivateAttr

from reprodl import keys
from reprodl.errors import IntegrityError, ModelLoadError
from reprodl.parsing import check_size, load_json
from reprodl.provenance._part import _Part
from reprodl.provenance.code_env import (
    CodeInfo,
    ComputeProfile,
    Environment,
    GitInfo,
    Placement,
    RunCommand,
    SourceSnapshot,
)
from reprodl.provenance.data_refs import DataRef, DataView
from reprodl.provenance.results import EpochMetrics, OpLogItem, Results, StepTrace
from reprodl.provenance.training_info import (
    Architecture,
    CallableInfo,
    Determinism,
    DistributedInfo,
    ModelComponent,
    NondeterministicUse,
    OptimizerComponent,
    OptimizerInfo,
    Resumed,
    Seeds,
    StepChange,
    Training,
)
from reprodl.store import canonical_json

DEFAULT_MODEL_NAME = "model"  # the one model of a record without named components


class ModelRef(_Part):
    """Another model dataset, pinned by its record and weights digests."""

    uri: str = Field(description="the model dataset's URI")
    uuid: str = Field(description="the model dataset's dtool UUID")
    record_digest: str | None = Field(None, description="digest of its provenance record")
    weights_sha256: str | None = Field(None, description="digest of its weights")


class Lineage(_Part):
    """The models this one derives from."""

    parent: ModelRef | None = Field(None, description="the model fine-tuned from, if any")
    reproduces: ModelRef | None = Field(None, description="the model this training reproduces, if it is a reproduction")
    replicates: ModelRef | None = Field(
        None,
        description="the model whose recorded recipe this training replicates on other data, if it is a replication",
    )


class ProvenanceRecord(_Part):
    """Everything needed to understand and redo a training (see DESIGN.md)."""

    schema_version: str = Field(
        keys.PROVENANCE_SCHEMA_VERSION, description="record format version; another major version is refused"
    )
    kind: Literal["model"] = Field("model", description="what the record describes")
    model_name: str = Field(description="name of the model (the model dataset's name by default)")
    created_at: str = Field(description="when the training started (UTC, ISO 8601)")
    reprodl_version: str = Field(description="version of reprodl that wrote the record")
    architecture: Architecture = Field(
        description="the model class and its initialisation (the first model, when there are several)"
    )
    models: list[ModelComponent] = Field(
        default_factory=list,
        description="every model watched, by name, the first the default (records before schema 1.2: only "
        "architecture; model_components() gives one for them)",
    )
    data: list[DataRef] = Field(description="every dataset read, with its role")
    training: Training = Field(description="how the model was trained")
    code: CodeInfo = Field(default_factory=CodeInfo, description="the code that ran the training")
    environment: Environment = Field(description="the software and hardware")
    results: Results = Field(default_factory=Results, description="metrics, times and the weights digest")
    lineage: Lineage = Field(default_factory=Lineage, description="parent model, and reproduced or replicated model")
    digest: str | None = Field(None, description="sha256 of this record's canonical JSON without this field")
    _raw: dict[str, Any] | None = PrivateAttr(default=None)

    # --- digest ---------------------------------------------------------------------
    def body(self) -> dict[str, Any]:
        """The JSON the digest covers: as read from disk when read (so fields a later
        reprodl adds do not change an old record's digest), else as dumped."""
        data = dict(self._raw) if self._raw is not None else self.model_dump(mode="json")
        data.pop("digest", None)
        return data

    def compute_digest(self) -> str:
        """sha256 of :meth:`body` as canonical JSON."""
        return "sha256:" + hashlib.sha256(canonical_json(self.body())).hexdigest()

    def sealed(self) -> ProvenanceRecord:
        """A copy with its digest filled in (over its current content)."""
        fresh = self.model_copy()
        fresh._raw = None
        return fresh.model_copy(update={"digest": fresh.compute_digest()})

    def check_digest(self) -> None:
        """Raise :class:`IntegrityError` unless the stored digest matches the content."""
        if self.digest is None:
            raise IntegrityError("the provenance record has no digest: it was not written by reprodl")
        actual = self.compute_digest()
        if actual != self.digest:
            raise IntegrityError(
                f"the provenance record was altered: its digest is {self.digest} but its content hashes to {actual}",
                problems=["record digest mismatch"],
            )

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=False) + "\n"

    def readme_for(self, ref: DataRef) -> str:
        """The README text of a data entry, stored in it or in the entry its ``readme_of`` names."""
        i = ref.readme_of
        if i is None or not 0 <= i < len(self.data):
            return ref.readme
        return self.data[i].readme

    def model_components(self) -> list[ModelComponent]:
        """Every model of the record, the default first; one named ``model`` for a record before schema 1.2.

        The default model's architecture and weights digest are the record's ``architecture`` and
        ``results.weights_sha256`` (what every reader of a single-model record trusts), whatever
        ``models[0]`` repeats of them.
        """
        if self.models:
            first = self.models[0].model_copy(
                update={"architecture": self.architecture, "weights_sha256": self.results.weights_sha256}
            )
            return [first, *self.models[1:]]
        return [
            ModelComponent(
                name=DEFAULT_MODEL_NAME,
                architecture=self.architecture,
                optimizers=[DEFAULT_MODEL_NAME],
                loss=self.training.loss,
                weights_file=self.results.weights_file,
                weights_sha256=self.results.weights_sha256,
                steps=self.training.optimizer_steps or 0,
            )
        ]

    def model_component(self, name: str | None = None) -> ModelComponent:
        """The model named ``name`` (None: the default, first); else :class:`ModelLoadError` naming those there are."""
        components = self.model_components()
        if name is None:
            return components[0]
        for component in components:
            if component.name == name:
                return component
        raise ModelLoadError(
            f"the record of {self.model_name!r} has no model named {name!r}: it has "
            f"{', '.join(repr(c.name) for c in components)}; pass one of those"
        )

    def data_by_role(self, role: str) -> list[DataRef]:
        """The datasets used in ``role`` (train, valid or test)."""
        return [d for d in self.data if d.role == role]


def store_readmes_once(refs: list[DataRef]) -> list[DataRef]:
    """``refs`` with each dataset's README kept in its first entry only (train and test
    from one dataset share one README): later entries of the same UUID and README point
    at it with ``readme_of``."""
    first: dict[tuple[str, str], int] = {}
    out = []
    for i, ref in enumerate(refs):
        key = (ref.uuid, ref.readme)
        if ref.readme and key in first:
            ref = ref.model_copy(update={"readme": "", "readme_of": first[key]})
        else:
            first.setdefault(key, i)
        out.append(ref)
    return out


def mirror_annotations(record: ProvenanceRecord) -> dict[str, Any]:
    """The annotations a model dataset carries as convenient mirrors of its record.

    They stay writable after freezing, so they are never trusted: ``verify`` compares them
    with what this function derives from the (hashed, digested) record.
    """
    first = record.data_by_role("train")[0]
    return {
        keys.MODEL_KIND: keys.KIND_MODEL,
        keys.MODEL_NAME: record.architecture.import_path,
        keys.MODEL_PARAMETERS: {**record.training.params, "init_params": record.architecture.init_params},
        keys.SOURCE_DATASET_URI: first.uri,
        keys.SOURCE_DATASET_UUID: first.uuid,
        keys.SOURCE_DATASET_NAME: first.name,
        keys.CATEGORY_ENCODING: first.category_encoding,
        keys.RECORD_DIGEST: record.digest,
    }


def record_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the provenance record, with its ``$id``."""
    schema = ProvenanceRecord.model_json_schema()
    schema["$id"] = keys.PROVENANCE_SCHEMA_ID
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


_JSON_TYPES = {"string": "str", "integer": "int", "number": "float", "boolean": "bool", "null": "null"}
FIELDS_START = "<!-- record-fields:start -->"
FIELDS_END = "<!-- record-fields:end -->"


def _def_name(node: dict[str, Any]) -> str | None:
    """The model a schema node refers to (directly, as list items or as an option), if any."""
    options = [node, *node.get("anyOf", [])]
    for part in options + [option.get("items", {}) for option in options]:
        if "$ref" in part:
            return str(part["$ref"]).rsplit("/", 1)[-1]
    return None


def _type_name(node: dict[str, Any]) -> str:
    """A short, readable type for a JSON Schema node (``list[int] or null``)."""
    if "$ref" in node:
        return str(node["$ref"]).rsplit("/", 1)[-1]
    if "anyOf" in node:
        return " or ".join(_type_name(part) for part in node["anyOf"])
    if "enum" in node or "const" in node:
        return " or ".join(json.dumps(v) for v in node.get("enum", [node.get("const")]))
    kind = node.get("type", "any")
    if kind == "array":
        return f"list[{_type_name(node.get('items', {}))}]"
    if kind == "object":
        extra = node.get("additionalProperties")
        return f"dict[str, {_type_name(extra)}]" if isinstance(extra, dict) and extra else "object"
    return _JSON_TYPES.get(str(kind), str(kind))


def _field_rows(schema: dict[str, Any], node: dict[str, Any], prefix: str) -> list[tuple[str, str, str]]:
    """(path, type, description) of every property of ``node`` and, depth first, of the models in it."""
    rows = []
    for name, prop in node.get("properties", {}).items():
        path = prefix + name
        rows.append((path, _type_name(prop), str(prop.get("description", ""))))
        ref = _def_name(prop)
        if ref is not None:
            is_list = prop.get("type") == "array" or any(p.get("type") == "array" for p in prop.get("anyOf", []))
            rows += _field_rows(schema, schema["$defs"][ref], path + ("[]." if is_list else "."))
    return rows


def fields_table(schema: dict[str, Any] | None = None) -> str:
    """The record's fields as a Markdown table (path, type, description), from its JSON Schema.

    ``docs/formats.md`` holds this table between ``FIELDS_START`` and ``FIELDS_END``; a test
    checks it is current, and ``reprodl schema provenance --markdown`` prints it.
    """
    schema = schema if schema is not None else record_json_schema()
    lines = ["| field | type | description |", "|---|---|---|"]
    for path, kind, text in _field_rows(schema, schema, ""):
        cells = (f"`{path}`", kind, text)
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def parse_record(text: str | bytes, *, source: str = "record") -> ProvenanceRecord:
    """A record from ``provenance.json`` text.

    Raises :class:`ModelLoadError` for bad JSON, another major schema version or a record
    that does not match the schema.
    """
    what = f"{source}: {keys.PROVENANCE_FILE}"
    check_size(text, keys.MAX_RECORD_BYTES, what=what, error=ModelLoadError)
    raw = load_json(text, what=what, error=ModelLoadError)
    if not isinstance(raw, dict):
        raise ModelLoadError(f"{what} holds a JSON {type(raw).__name__}, not a record (a JSON object)")
    version = str(raw.get("schema_version", ""))
    if version.split(".")[0] != keys.PROVENANCE_SCHEMA_VERSION.split(".")[0]:
        raise ModelLoadError(
            f"{source}: provenance schema version {version!r} is not supported by this reprodl "
            f"(reads {keys.PROVENANCE_SCHEMA_VERSION}); upgrade reprodl"
        )
    try:
        record = ProvenanceRecord.model_validate(raw)
    except Exception as exc:  # noqa: BLE001 - pydantic's ValidationError
        raise ModelLoadError(f"{source}: provenance.json does not match the schema: {exc}") from None
    record._raw = raw
    return record


__all__ = [
    "Architecture",
    "CallableInfo",
    "CodeInfo",
    "ComputeProfile",
    "DEFAULT_MODEL_NAME",
    "DataRef",
    "DataView",
    "Determinism",
    "DistributedInfo",
    "Environment",
    "EpochMetrics",
    "FIELDS_END",
    "FIELDS_START",
    "GitInfo",
    "Lineage",
    "ModelComponent",
    "ModelRef",
    "NondeterministicUse",
    "OpLogItem",
    "OptimizerComponent",
    "OptimizerInfo",
    "Placement",
    "ProvenanceRecord",
    "Results",
    "Resumed",
    "RunCommand",
    "Seeds",
    "SourceSnapshot",
    "StepChange",
    "StepTrace",
    "Training",
    "fields_table",
    "mirror_annotations",
    "parse_record",
    "record_json_schema",
    "store_readmes_once",
]
