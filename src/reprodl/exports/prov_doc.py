"""A model's record as W3C PROV (PROV-JSON or PROV-N), in ML-Schema's terms.

The training is an ``mls:Run`` (a ``prov:Activity``) that used the datasets (``mls:Data``),
the hyperparameter settings (``mls:HyperParameterSetting``) and the implementation (the
architecture, ``mls:Implementation``), was associated with whoever ran it, and generated the
model (``mls:Model``) and its evaluations (``mls:ModelEvaluation``). Datasets and models are
named by their dtool UUIDs (``urn:uuid:``); their URIs and digests are attributes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from reprodl import keys
from reprodl.exports.formats import ExportOptions
from reprodl.exports.source import Source, require
from reprodl.provenance import ProvenanceRecord

MLS = "http://www.w3.org/ns/mls#"
REPRODL = keys.TERMS_NAMESPACE  # reprodl's terms, under the project's repository URL


def prov_document(source: Source) -> Any:
    """The record as a ``prov.model.ProvDocument``."""
    require("prov", extra="export", feature="the PROV export")
    from prov.model import ProvDocument

    record = source.model_record("prov")
    doc = ProvDocument()
    doc.add_namespace("mls", MLS)
    doc.add_namespace("reprodl", REPRODL)
    doc.add_namespace("uuid", "urn:uuid:")
    run = doc.activity(
        "reprodl:run-" + source.dataset.uuid,
        startTime=record.results.started_at or record.created_at,
        endTime=record.results.finished_at,
        other_attributes={"prov:type": _q(doc, "mls:Run"), "prov:label": f"training of {record.model_name}"},
    )
    _data(doc, run, record)
    _settings(doc, run, record)
    model = doc.entity(
        "uuid:" + source.dataset.uuid,
        {
            "prov:type": _q(doc, "mls:Model"),
            "prov:label": record.model_name,
            "reprodl:uri": source.uri,
            "reprodl:weights_sha256": record.results.weights_sha256 or "",
            "reprodl:record_digest": record.digest or "",
        },
    )
    doc.wasGeneratedBy(model, run)
    for ref in record.data:
        doc.wasDerivedFrom(model, "uuid:" + ref.uuid)
    if record.lineage.parent is not None:
        parent = doc.entity(
            "uuid:" + record.lineage.parent.uuid,
            {
                "prov:type": _q(doc, "mls:Model"),
                "reprodl:uri": record.lineage.parent.uri,
                "reprodl:record_digest": record.lineage.parent.record_digest or "",
            },
        )
        doc.wasDerivedFrom(model, parent, other_attributes={"prov:type": _q(doc, "prov:Revision")})
    _evaluations(doc, run, model, record)
    user = str(source.dataset.admin_metadata.get("creator_username") or "unknown")
    agent = doc.agent("reprodl:user-" + user, {"prov:type": _q(doc, "prov:Person"), "prov:label": user})
    doc.wasAssociatedWith(run, agent)
    doc.wasAttributedTo(model, agent)
    return doc


def _data(doc: Any, run: Any, record: ProvenanceRecord) -> None:
    """Each dataset (once per UUID), used by the run in its roles."""
    seen: dict[str, Any] = {}
    for ref in record.data:
        if ref.uuid not in seen:
            seen[ref.uuid] = doc.entity(
                "uuid:" + ref.uuid,
                {
                    "prov:type": _q(doc, "mls:Data"),
                    "prov:label": ref.name,
                    "reprodl:uri": ref.uri,
                    "reprodl:manifest_digest": ref.manifest_digest,
                },
            )
        doc.used(
            run,
            seen[ref.uuid],
            other_attributes={
                "prov:role": _q(doc, f"reprodl:{ref.role}"),
                "reprodl:n_items": ref.n_items,
                "reprodl:selection_digest": ref.selection_digest or "",
            },
        )


def _settings(doc: Any, run: Any, record: ProvenanceRecord) -> None:
    """The implementation and each hyperparameter setting the run used."""
    arch = record.architecture
    impl = doc.entity(
        "reprodl:implementation-" + arch.import_path.replace(":", "."),
        {
            "prov:type": _q(doc, "mls:Implementation"),
            "prov:label": arch.import_path,
            "reprodl:source_sha256": arch.source_sha256 or "",
        },
    )
    doc.used(run, impl, other_attributes={"prov:role": _q(doc, "mls:executes")})
    t = record.training
    settings: dict[str, Any] = {
        "optimizer": t.optimizer.class_name,
        "loss": t.loss.class_name,
        "epochs": t.epochs,
        "batch_size": t.batch_size,
        "seed": t.seeds.seed,
        "init_params": json.dumps(arch.init_params, sort_keys=True),
    }
    if t.optimizer.param_groups:
        settings.update({k: v for k, v in t.optimizer.param_groups[0].items() if isinstance(v, (int, float, str))})
    for name, value in settings.items():
        entity = doc.entity(
            f"{run.identifier}-hp-{name}",
            {
                "prov:type": _q(doc, "mls:HyperParameterSetting"),
                "prov:label": name,
                "prov:value": value,
            },
        )
        doc.used(run, entity, other_attributes={"prov:role": _q(doc, "mls:hasInput")})


def _evaluations(doc: Any, run: Any, model: Any, record: ProvenanceRecord) -> None:
    """The final metrics, each an ``mls:ModelEvaluation`` of the model."""
    for name, value in sorted(record.results.final.items()):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        entity = doc.entity(
            f"{run.identifier}-eval-{name}",
            {
                "prov:type": _q(doc, "mls:ModelEvaluation"),
                "prov:label": name,
                "prov:value": value,
            },
        )
        doc.wasGeneratedBy(entity, run)
        doc.wasDerivedFrom(entity, model)


def _q(doc: Any, name: str) -> Any:
    """``prefix:local`` as a qualified name of ``doc`` (a type or role, not a string)."""
    return doc.valid_qualified_name(name)


def write_prov(source: Source, path: Any, *, notation: str = "json") -> dict[str, Any]:
    """Write the record as PROV-JSON (``notation="json"``) or PROV-N (``"provn"``) to ``path``."""
    doc = prov_document(source)
    text = doc.get_provn() if notation == "provn" else doc.serialize(format="json", indent=2)
    path.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
    records = doc.get_records()
    return {"records": len(records), "notation": "PROV-N" if notation == "provn" else "PROV-JSON"}


def write(source: Source, path: Path, options: ExportOptions) -> dict[str, Any]:
    """The ``prov`` format's writer (:mod:`reprodl.exports.formats`): PROV-JSON to ``path``."""
    return write_prov(source, path, notation="json")


def write_n(source: Source, path: Path, options: ExportOptions) -> dict[str, Any]:
    """The ``prov-n`` format's writer (:mod:`reprodl.exports.formats`): PROV-N to ``path``."""
    return write_prov(source, path, notation="provn")
