"""The provenance record: what a training did, as one typed, schema-versioned object.

``record`` holds the record's types, its digest and parsing; ``diff`` compares two records;
``summary`` renders one for people; ``legacy`` reads what the original dtoolAI recorded.
No torch here: ``reprodl provenance URI`` answers without importing it.

``diff``, ``summary`` and ``legacy`` (and ``fields``, which the first two use) are loaded on
first use of their names: a training builds a record and never compares or renders one, so
``import reprodl.training.run`` does not pay for them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from reprodl.provenance.record import (
    Architecture,
    CallableInfo,
    CodeInfo,
    ComputeProfile,
    DataRef,
    Determinism,
    Environment,
    EpochMetrics,
    GitInfo,
    Lineage,
    ModelComponent,
    ModelRef,
    OptimizerComponent,
    OptimizerInfo,
    Placement,
    ProvenanceRecord,
    Results,
    Seeds,
    StepChange,
    StepTrace,
    Training,
    fields_table,
    mirror_annotations,
    parse_record,
    record_json_schema,
    store_readmes_once,
)

_LAZY = {
    "diff_records": "reprodl.provenance.diff",
    "legacy_provenance": "reprodl.provenance.legacy",
    "legacy_summary_lines": "reprodl.provenance.legacy",
    "summary_lines": "reprodl.provenance.summary",
}

__all__ = [
    "Architecture",
    "CallableInfo",
    "CodeInfo",
    "ComputeProfile",
    "DataRef",
    "Determinism",
    "Environment",
    "EpochMetrics",
    "GitInfo",
    "Lineage",
    "ModelComponent",
    "ModelRef",
    "OptimizerComponent",
    "OptimizerInfo",
    "Placement",
    "ProvenanceRecord",
    "Results",
    "Seeds",
    "StepChange",
    "StepTrace",
    "Training",
    "diff_records",
    "fields_table",
    "legacy_provenance",
    "legacy_summary_lines",
    "mirror_annotations",
    "parse_record",
    "record_json_schema",
    "store_readmes_once",
    "summary_lines",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'reprodl.provenance' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])


if TYPE_CHECKING:  # pragma: no cover
    from reprodl.provenance.diff import diff_records
    from reprodl.provenance.legacy import legacy_provenance, legacy_summary_lines
    from reprodl.provenance.summary import summary_lines
