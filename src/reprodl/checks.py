"""Checks on model datasets that need no re-training: verify and lineage.

Example:
    >>> verify_model("/models/digits_model", data=True).ok     # doctest: +SKIP
    True
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any

from reprodl.errors import DatasetFormatError, ReprodlError
from reprodl.parsing import load_json
from reprodl.provenance import DataRef, ProvenanceRecord, mirror_annotations, read_record
from reprodl.store import StoredDataSet, open_dataset


@dataclasses.dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""


@dataclasses.dataclass
class ModelVerification:
    uri: str
    checks: list[Check] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def add(self, name: str, ok: bool, detail: str = "") -> None:
        self.checks.append(Check(name, ok, detail))

    def to_dict(self) -> dict[str, Any]:
        return {"uri": self.uri, "ok": self.ok, "checks": [dataclasses.asdict(c) for c in self.checks]}


def verify_model(uri: str, *, data: bool = False) -> ModelVerification:
    """Check a model dataset's own item hashes, its record's digest, the weights against the
    record, and (``data=True``) that every training dataset is reachable and unchanged."""
    ds = open_dataset(uri)
    result = ModelVerification(uri=ds.uri)
    items = ds.verify(deep=True)
    result.add("model dataset items match its manifest", items.ok, "; ".join(items.problems()))
    record: ProvenanceRecord | None = None
    try:
        record = read_record(ds, check=False)
        record.check_digest()
        result.add("provenance record digest", True, record.digest or "")
    except ReprodlError as exc:
        result.add("provenance record digest", False, str(exc))
    if record is not None:
        # Annotations stay writable after freezing: each mirror must still say what the record says.
        edited = []
        for name, expected in mirror_annotations(record).items():
            actual = ds.get_annotation(name)
            if actual is not None and _as_json(actual) != _as_json(expected):
                edited.append(f"annotation {name} says {json.dumps(actual, sort_keys=True, default=str)[:200]}, "
                              f"the record {json.dumps(expected, sort_keys=True, default=str)[:200]}")
        result.add("annotations mirror the record", not edited, "; ".join(edited))
        try:
            from reprodl.model import load_weights

            load_weights(ds, record)
            result.add("weights match the record", True, record.results.weights_sha256 or "")
        except ReprodlError as exc:
            result.add("weights match the record", False, str(exc))
        if data:
            checks, _ = check_data(record, ds)
            for c in checks:
                ok = bool(c.get("ok"))
                detail = c.get("error") or "; ".join(c.get("items", [])) or ("" if ok else "manifest digest differs")
                result.add(f"{c['role']} data {c['name']} ({c['uri']}) unchanged", ok, detail)
    return result


def _as_json(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def lineage(uri: str, *, max_depth: int = 50) -> list[dict[str, Any]]:
    """The chain from a model to its first ancestor, each link's digests checked offline.

    Each entry: uri, uuid, name, record digest, and whether the child's recorded parent
    digest matches the parent's actual record (``link_ok``).
    """
    chain: list[dict[str, Any]] = []
    current: str | None = uri
    expected: str | None = None
    seen: set[str] = set()
    while current and len(chain) < max_depth:
        entry: dict[str, Any] = {"uri": current}
        try:
            ds = open_dataset(current)
            record = read_record(ds, check=False)
            try:
                record.check_digest()
                entry["digest_ok"] = True
            except ReprodlError:
                entry["digest_ok"] = False
            entry.update(uuid=ds.uuid, name=record.model_name, record_digest=record.digest,
                         architecture=record.architecture.import_path,
                         data=[f"{d.role}:{d.name}" for d in record.data],
                         frozen=record.architecture.frozen_parameters)
            if expected is not None:
                entry["link_ok"] = expected == record.digest
            if ds.uuid in seen:
                entry["error"] = "cycle in the lineage"
                chain.append(entry)
                break
            seen.add(ds.uuid)
            parent = record.lineage.parent
            chain.append(entry)
            current = parent.uri if parent else None
            expected = parent.record_digest if parent else None
        except ReprodlError as exc:
            entry.update(error=str(exc), link_ok=False)
            chain.append(entry)
            break
    return chain


def check_data(record: ProvenanceRecord, model_ds: StoredDataSet, *,
               opened: dict[str, StoredDataSet] | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """Each recorded dataset: reachable, same UUID and manifest, every item re-hashed.

    A dataset used in several roles (train and valid splits of one dataset) is opened and
    hashed once. Returns (one check per dataset, problems naming dataset and item). Each
    dataset opened is also put in ``opened`` (URI -> dataset) when given, for the caller to
    read it from without opening it again.
    """
    checks: list[dict[str, Any]] = []
    problems: list[str] = []
    by_uri: dict[str, DataRef] = {}
    roles: dict[str, list[str]] = {}
    for ref in record.data:
        by_uri.setdefault(ref.uri, ref)
        roles.setdefault(ref.uri, []).append(ref.role)
    for uri, ref in by_uri.items():
        role = "/".join(dict.fromkeys(roles[uri]))
        label = f"{role} dataset {ref.name}"
        check: dict[str, Any] = {"role": role, "uri": uri, "name": ref.name}
        try:
            ds = open_dataset(uri)
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            check.update(ok=False, error=str(exc))
            problems.append(f"{label} ({uri}) cannot be opened: {exc}")
            checks.append(check)
            continue
        if opened is not None:
            opened[uri] = ds
        changed = _changed_items(ref, ds, model_ds)
        item_problems = changed + ds.verify(deep=True).problems()
        digest = ds.manifest_digest()
        same_manifest = digest == ref.manifest_digest
        check.update(uuid_matches=ds.uuid == ref.uuid, manifest_matches=same_manifest, items=item_problems,
                     ok=not item_problems and same_manifest and ds.uuid == ref.uuid)
        if ds.uuid != ref.uuid:
            problems.append(f"{label} at {uri} has UUID {ds.uuid}, the record says {ref.uuid}")
        if not same_manifest and not changed:
            problems.append(f"{label}: manifest digest {digest} differs from the recorded "
                            f"{ref.manifest_digest}")
        problems += [f"{label}: {p}" for p in item_problems]
        checks.append(check)
    return checks, problems


def _changed_items(ref: DataRef, ds: StoredDataSet, model_ds: StoredDataSet) -> list[str]:
    """Items whose recorded manifest entry differs from the dataset's manifest now."""
    if not ref.manifest_item:
        return []
    try:
        with open(model_ds.item_path(model_ds.identifier_of(ref.manifest_item)), "rb") as fh:
            recorded = load_json(fh.read(), what=ref.manifest_item, error=DatasetFormatError)
    except (KeyError, OSError, DatasetFormatError):
        return []
    if not isinstance(recorded, dict):
        return []
    now = ds.manifest_entries()
    out = [f"missing: {r}" for r in sorted(set(recorded) - set(now))]
    out += [f"added: {r}" for r in sorted(set(now) - set(recorded))]
    out += [f"content changed since training: {r}" for r in sorted(set(now) & set(recorded)) if now[r] != recorded[r]]
    return out
