"""The provenance record: what a training did, as one typed, schema-versioned object.

``record`` holds the record's types, its digest and parsing; ``diff`` compares two records;
``summary`` renders one for people; ``legacy`` reads what the original dtoolAI recorded.
No torch here: ``reprodl provenance URI`` answers without importing it.
"""

from __future__ import annotations

from reprodl.provenance.diff import diff_records
from reprodl.provenance.legacy import legacy_provenance, legacy_summary_lines
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
from reprodl.provenance.summary import summary_lines

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
