"""Differences between two provenance records, section by section (``reprodl diff``).

Every field of the record is compared: the rows come from walking the record's JSON Schema
(:mod:`reprodl.provenance.fields`), so a field added to the record is diffed at once. The
table below only groups fields into the sections people know (``seeds``, ``hyperparameters``);
a field it does not name is in the section of its top-level field (``training``, ``lineage``),
top-level values in ``record``, and fields outside the schema in ``other``.
"""

from __future__ import annotations

from typing import Any

from reprodl.provenance.fields import MORE_FIELDS, field_values, summarised, under
from reprodl.provenance.record import ProvenanceRecord

# (field path, section, the path its keys are relative to), the sections in the order shown.
_SECTIONS: tuple[tuple[str, str, str], ...] = (
    ("data", "data", "data"),
    ("code", "code", "code"),
    ("environment.packages", "packages", "environment.packages"),
    ("environment", "environment", "environment"),
    ("training.seeds", "seeds", "training.seeds"),
    *(
        (f"training.{name}", "hyperparameters", "training")
        for name in ("optimizer", "loss", "scheduler", "epochs", "batch_size", "shuffle", "num_workers", "params")
    ),
    ("training.device", "hyperparameters", "training"),
    ("training.determinism", "determinism", "training.determinism"),
    ("training.data_order_digests", "determinism", "training"),
    ("architecture", "architecture", "architecture"),
    ("results", "results", "results"),
    ("training", "training", "training"),
    ("models", "models", ""),
    ("lineage", "lineage", "lineage"),
)
_VOLATILE = ("wall_time_s", "started_at", "finished_at", "created_at", "digest")
MAX_VALUE_CHARS = 200  # a longer value (a README, a long list) is shown by its size and digest


def _flatten(obj: Any, prefix: str, out: dict[str, Any]) -> None:
    """Each value in ``obj`` put in ``out`` at its path, a path met again suffixed (:func:`_unused`)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), out)
    elif isinstance(obj, list) and obj and all(isinstance(x, dict) for x in obj):
        for i, v in enumerate(obj):
            _flatten(v, f"{prefix}[{i}]", out)
    else:
        out[_unused(prefix, out)] = obj


def _values(record: ProvenanceRecord) -> dict[str, Any]:
    """Full path -> value of every field, walked from the schema; data entries keyed ``role:name``
    (``role:name#i`` for the i-th entry of a pair already keyed), a path met again suffixed (:func:`_unused`)."""
    raw = record.model_dump(mode="json")
    data: dict[str, Any] = {}
    for i, d in enumerate(raw.get("data", [])):
        key = f"{d.get('role')}:{d.get('name')}"
        data[key if key not in data else f"{key}#{i}"] = d
    raw["data"] = data
    out: dict[str, Any] = {}
    for path, value in field_values(raw):
        _flatten(value, path, out)
    return out


def _unused(key: str, taken: dict[str, Any]) -> str:
    """``key``, or ``key#2``, ``key#3``... when a value came there first: names are anyone's text, and
    a field outside the schema named ``training.params.lr`` (or a data entry named ``NAME.category_encoding``)
    flattens to the path of another value, which it must never replace (it would hide a change)."""
    n, out = 1, key
    while out in taken:
        n += 1
        out = f"{key}#{n}"
    return out


def _section_of(path: str, top_level: list[str]) -> tuple[str, str]:
    """(section, key in it) of a field's full path."""
    for prefix, section, base in _SECTIONS:
        if under(path, prefix):
            return section, path[len(base) :].lstrip(".") if base else path
    top = path.split(".", 1)[0].split("[", 1)[0]
    if top not in top_level or top == MORE_FIELDS:
        return "other", path
    return ("record", path) if top == path else (top, path[len(top) :].lstrip("."))


def diff_records(
    a: ProvenanceRecord, b: ProvenanceRecord, *, include_volatile: bool = False
) -> dict[str, list[dict[str, Any]]]:
    """Section -> list of {key, a, b, path} for each value that differs (every field of the record);
    ``path`` is the field's full path (data entries as ``data.ROLE:NAME``), ``key`` its path in the section.

    A value longer than :data:`MAX_VALUE_CHARS` as JSON is given by its size and digest.
    """
    top_level = list(ProvenanceRecord.model_fields)
    va, vb = _values(a), _values(b)
    out: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(set(va) | set(vb)):
        if not include_volatile and path.split(".")[-1].split("[")[0] in _VOLATILE:
            continue
        x, y = va.get(path), vb.get(path)
        if x != y:
            section, key = _section_of(path, top_level)
            row = {"key": key, "a": summarised(x, MAX_VALUE_CHARS), "b": summarised(y, MAX_VALUE_CHARS), "path": path}
            out.setdefault(section, []).append(row)
    order = list(dict.fromkeys([s for _, s, _ in _SECTIONS] + top_level + ["record", "other"]))
    return {section: out[section] for section in order if section in out}
