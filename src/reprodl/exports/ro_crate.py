"""A model's record as an RO-Crate (Process Run Crate profile, the Workflow Run Crate family's
profile for one application's run).

The crate holds the record (``provenance.json``) and describes the training as one
``CreateAction``: its instrument is the code, its objects the datasets (URI, UUID, manifest
digest) and the hyperparameters, its result the model dataset, its agent who ran it, with
start and end times. Datasets and the model are named by their URIs, not copied; reprodl's
digests (manifest, weights, record, code) are PropertyValues they name as ``additionalProperty``.

The instrument is the user's training script, copied into the crate from the model dataset
(a ``File`` named by its path there, never by the training machine's), or else reprodl
itself. The metadata descriptor conforms to RO-Crate 1.3 (its context) and 1.1 (which the
Process Run Crate 0.5 profile extends); the root's ``license`` is the model's (its README's
``license``, else its training data's), or says that none is stated.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from reprodl import keys
from reprodl.exports.formats import ExportOptions
from reprodl.exports.source import ExportError, Source, code_name, model_licence, require
from reprodl.files import read_regular
from reprodl.provenance import ProvenanceRecord
from reprodl.store import file_sha256

PROCESS_RUN_CRATE = "https://w3id.org/ro/wfrun/process/0.5"
RO_CRATE_SPECS = ("https://w3id.org/ro/crate/1.3", "https://w3id.org/ro/crate/1.1")
_PYTHON = "#python"


def write_ro_crate(source: Source, out: Path) -> dict[str, Any]:
    """Write the crate into the (new, empty) directory ``out``; returns what it holds."""
    require("rocrate", extra="export", feature="the RO-Crate export")
    from rocrate.model import ContextEntity
    from rocrate.rocrate import ROCrate

    record = source.model_record("ro-crate")
    crate = ROCrate()
    crate.name = f"Training of {record.model_name}"
    crate.description = f"How the reprodl model {record.model_name} ({source.uri}) was trained, from its record"
    crate.root_dataset["conformsTo"] = {"@id": PROCESS_RUN_CRATE}
    crate.metadata["conformsTo"] = [{"@id": spec} for spec in RO_CRATE_SPECS]
    profile = {"@type": ["CreativeWork", "Profile"], "name": "Process Run Crate", "version": "0.5"}
    crate.add(ContextEntity(crate, PROCESS_RUN_CRATE, properties=profile))
    _add_licence(crate, source, record)
    _add_record(crate, source, out)
    crate.add(ContextEntity(crate, _PYTHON, properties=_python(record)))
    code = _add_code(crate, source, record, out)
    datasets = [crate.add(ContextEntity(crate, d["@id"], properties=d)) for d in _datasets(record)]
    objects = list(datasets)
    objects += [crate.add(ContextEntity(crate, p["@id"], properties=p)) for p in _parameters(record)]
    model = crate.add(ContextEntity(crate, source.uri, properties=_model(source, record)))
    for digest in _digests(source, record):
        crate.add(ContextEntity(crate, digest["@id"], properties=digest))
    agent = crate.add(ContextEntity(crate, *_agent(source)))
    action = crate.add_action(
        code,
        identifier="#training",
        object=objects,
        result=model,
        properties={
            "name": f"Training of {record.model_name}",
            "description": f"{record.architecture.class_name} trained for {record.training.epochs} epochs by reprodl",
            "startTime": record.results.started_at or record.created_at,
            "endTime": record.results.finished_at,
            "actionStatus": "http://schema.org/CompletedActionStatus",
            "agent": {"@id": agent.id},
        },
    )
    for entity in [*datasets, model]:  # data entities, named by URI: listed, not copied
        crate.root_dataset.append_to("hasPart", entity)
    crate.root_dataset["mentions"] = {"@id": action.id}
    crate.write(str(out))
    return {"entities": len(crate.get_entities()), "action": action.id, "objects": len(objects)}


def _add_licence(crate: Any, source: Source, record: ProvenanceRecord) -> None:
    """The root's ``license``: a known licence by its SPDX URL, else a CreativeWork naming it (or
    saying none is stated)."""
    from rocrate.model import ContextEntity

    licence = model_licence(source, record)
    if licence is None:
        props = {
            "@type": "CreativeWork",
            "name": "unspecified",
            "description": "Neither the model's README nor its training data's README states a licence: ask the "
            "model's creator before reuse (the `license` field of the model's README states one)",
        }
    else:
        props = {"@type": "CreativeWork", "name": licence.text, "description": f"as stated by {licence.origin}"}
    entity = crate.add(ContextEntity(crate, (licence and licence.url) or "#license", properties=props))
    crate.root_dataset["license"] = {"@id": entity.id}


def _python(record: ProvenanceRecord) -> dict[str, Any]:
    """The language the code ran in, as a ComputerLanguage entity (name, url and version)."""
    version = record.environment.python.split()[0] if record.environment.python else "3"
    return {"@type": "ComputerLanguage", "name": "Python", "url": "https://www.python.org/", "version": version}


def _add_code(crate: Any, source: Source, record: ProvenanceRecord, out: Path) -> Any:
    """The instrument: the training script (stored with the model when outside git) copied into
    the crate as a ``File``; else the git repository at its commit, when it has a public remote;
    else reprodl itself, which ran the training. Never named by the training machine's paths."""
    from rocrate.model import ContextEntity

    code, git = record.code, record.code.git
    relpaths = {source.dataset.relpath(i) for i in source.dataset.identifiers}
    if code.entry_script_item in relpaths:
        return _add_script(crate, source, record, out, str(code.entry_script_item))
    remote = str(git.remote or "") if git is not None else ""
    if git is not None and git.commit and remote.startswith("https://"):
        props = {**_code(record), "@type": ["SoftwareSourceCode", "SoftwareApplication"], "url": remote}
        return crate.add(ContextEntity(crate, remote, properties={**props, "version": git.commit}))
    ran = f"{code.config_file and 'the config ' or ''}{code_name(record)}"
    props = {
        **_code(record),
        "@type": "SoftwareApplication",
        "name": "reprodl",
        "url": keys.PROJECT_URL,
        "version": record.reprodl_version,
        "description": f"reprodl, which ran {ran} (its code is not stored with the model: the record names it)",
    }
    return crate.add(ContextEntity(crate, keys.PROJECT_URL, properties=props))


def _add_script(crate: Any, source: Source, record: ProvenanceRecord, out: Path, item: str) -> Any:
    """The training script, copied from the model dataset's ``item`` into the crate at that path."""
    path = out / item
    path.parent.mkdir(parents=True, exist_ok=True)
    idn = source.dataset.identifier_of(item)
    size = source.dataset.item_properties(idn).get("size_in_bytes")
    limit = size if isinstance(size, int) and size >= 0 else 0  # its manifest's size (a longer item differs)
    what = f"the stored training script {item} of {source.uri}"
    path.write_bytes(read_regular(source.dataset.item_path(idn), limit, what=what, error=ExportError))
    props = {
        **_code(record),
        "@type": ["File", "SoftwareSourceCode", "SoftwareApplication"],
        "url": source.uri,
        "version": f"sha256:{record.code.entry_script_sha256}",
        "encodingFormat": "text/x-python",
        "description": f"the training script, as stored with the model (item {item})",
        "sha256": file_sha256(path),
        "contentSize": str(path.stat().st_size),
    }
    return crate.add_file(str(path), dest_path=item, properties=props)


def _add_record(crate: Any, source: Source, out: Path) -> None:
    """The record item, copied byte for byte (its sha256 is that of the model dataset's item)."""
    from rocrate.model import ContextEntity

    record = source.model_record("ro-crate")
    schema = {"@type": "CreativeWork", "name": "JSON Schema of reprodl's provenance record (`reprodl schema`)"}
    crate.add(ContextEntity(crate, keys.PROVENANCE_SCHEMA_ID, properties=schema))
    path = out / keys.PROVENANCE_FILE
    item = source.dataset.item_path(source.dataset.identifier_of(keys.PROVENANCE_FILE))
    what = f"the record {keys.PROVENANCE_FILE} of {source.dataset.uri}"
    path.write_bytes(read_regular(item, keys.MAX_RECORD_BYTES, what=what, error=ExportError))
    crate.add_file(
        str(path),
        dest_path=keys.PROVENANCE_FILE,
        properties={
            "name": "reprodl provenance record",
            "description": f"record digest {record.digest} (sha256 of its canonical JSON without the digest field)",
            "encodingFormat": "application/json",
            "conformsTo": {"@id": keys.PROVENANCE_SCHEMA_ID},
            "sha256": file_sha256(path),
            "contentSize": str(path.stat().st_size),
        },
    )


def _digest_id(owner: str, name: str) -> str:
    return f"#{owner}-{name}"


def _digests(source: Source, record: ProvenanceRecord) -> list[dict[str, Any]]:
    """reprodl's digests as PropertyValues, which the datasets, model and code name as additionalProperty."""
    values: list[tuple[str, str, str | None]] = [
        (ref.uuid, "manifest_digest", ref.manifest_digest) for ref in record.data
    ]
    values += [(source.dataset.uuid, "weights_sha256", record.results.weights_sha256)]
    values += [(source.dataset.uuid, "record_digest", record.digest)]
    snapshot = record.code.snapshot
    values += [("code", "snapshot_sha256", snapshot.sha256 if snapshot else None)]
    values += [("code", "entry_script_sha256", record.code.entry_script_sha256)]
    found = {_digest_id(owner, name): (name, value) for owner, name, value in values if value}
    return [{"@id": i, "@type": "PropertyValue", "name": n, "value": v} for i, (n, v) in found.items()]


def _links(owner: str, *names: str) -> list[dict[str, str]]:
    return [{"@id": _digest_id(owner, name)} for name in names]


def _code(record: ProvenanceRecord) -> dict[str, Any]:
    """The code that trained the model, as a SoftwareSourceCode entity."""
    code = record.code
    props: dict[str, Any] = {
        "name": code_name(record),
        "programmingLanguage": {"@id": _PYTHON},
        "softwareRequirements": f"torch {record.environment.torch}, reprodl {record.reprodl_version}",
    }
    if code.git is not None:
        props.update({"codeRepository": code.git.remote, "version": code.git.commit})
    if code.snapshot is not None and code.snapshot.item:
        props["description"] = f"source snapshot: item {code.snapshot.item} of the model dataset"
    names = [
        n
        for n, v in (
            ("snapshot_sha256", code.snapshot and code.snapshot.sha256),
            ("entry_script_sha256", code.entry_script_sha256),
        )
        if v
    ]
    links = _links("code", *names)
    props["additionalProperty"] = (links[0] if len(links) == 1 else links) or None
    return {k: v for k, v in props.items() if v is not None}


def _datasets(record: ProvenanceRecord) -> list[dict[str, Any]]:
    """Each dataset read (once, with its roles), named by its URI."""
    found: dict[str, dict[str, Any]] = {}
    for ref in record.data:
        entry = found.setdefault(
            ref.uri,
            {
                "@id": ref.uri,
                "@type": "Dataset",
                "name": ref.name,
                "identifier": f"urn:uuid:{ref.uuid}",
                "additionalProperty": _links(ref.uuid, "manifest_digest")[0],
                "description": record.readme_for(ref).strip() or ref.name,
                "roles": [],
            },
        )
        entry["roles"].append(f"{ref.role}: {ref.n_items} items" + (f" (usetype {ref.usetype})" if ref.usetype else ""))
    for entry in found.values():
        entry["disambiguatingDescription"] = "; ".join(entry.pop("roles"))
    return list(found.values())


def _parameters(record: ProvenanceRecord) -> list[dict[str, Any]]:
    """The hyperparameters as PropertyValue entities."""
    t = record.training
    values = {
        "optimizer": t.optimizer.class_name,
        "loss": t.loss.class_name,
        "epochs": t.epochs,
        "batch_size": t.batch_size,
        "seed": t.seeds.seed,
        "architecture": record.architecture.import_path,
        "init_params": json.dumps(record.architecture.init_params, sort_keys=True),
    }
    if t.optimizer.param_groups:
        values.update({k: v for k, v in t.optimizer.param_groups[0].items() if isinstance(v, (int, float, str))})
    return [
        {"@id": f"#param-{name}", "@type": "PropertyValue", "name": name, "value": value}
        for name, value in values.items()
    ]


def _model(source: Source, record: ProvenanceRecord) -> dict[str, Any]:
    """The model dataset, the action's result."""
    props: dict[str, Any] = {
        "@type": "Dataset",
        "name": record.model_name,
        "identifier": f"urn:uuid:{source.dataset.uuid}",
        "description": f"reprodl model dataset: weights in {record.results.weights_file}, "
        f"record in {keys.PROVENANCE_FILE}",
        "additionalProperty": _links(
            source.dataset.uuid, *(["weights_sha256"] if record.results.weights_sha256 else []), "record_digest"
        ),
        "subjectOf": {"@id": keys.PROVENANCE_FILE},
    }
    if record.lineage.parent is not None:
        props["isBasedOn"] = {"@id": record.lineage.parent.uri}
    return {k: v for k, v in props.items() if v is not None}


def _agent(source: Source) -> tuple[str, dict[str, Any]]:
    """Who ran the training: the model dataset's creator."""
    user = str(source.dataset.admin_metadata.get("creator_username") or "unknown")
    return f"#person-{user}", {"@type": "Person", "name": user}


def write(source: Source, out: Path, options: ExportOptions) -> dict[str, Any]:
    """The ``ro-crate`` format's writer (:mod:`reprodl.exports.formats`): the crate into the directory ``out``."""
    return write_ro_crate(source, out)
