"""Indexing: what one dataset, model, claim or summary becomes as a catalog :class:`Entry`.

:func:`describe` reads a dataset's admin metadata, README, annotations and (for a model) its
provenance record, without checking the data; :func:`add` indexes a dataset URI or every
dataset under a base URI, several at once (remote datasets take a few requests each).

Example:
    >>> with Catalog("catalog.sqlite") as cat:          # doctest: +SKIP
    ...     report = add(cat, "s3://team-models")
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from reprodl import keys
from reprodl.catalog.db import Catalog, base_of, now
from reprodl.catalog.entry import Entry, FieldValue, Link
from reprodl.errors import (
    DatasetFormatError,
    DatasetNotFoundError,
    InvalidURIError,
    MetadataError,
    MissingDependencyError,
    ReprodlError,
)
from reprodl.files import read_regular
from reprodl.parsing import load_json
from reprodl.store import StoredDataSet, list_datasets, local_path, normalise_uri, open_dataset

if TYPE_CHECKING:
    from reprodl.provenance.record import ModelRef

#: Annotations whose JSON is longer than this are kept as a note of their size only (a
#: TensorDataSet's per-row split can hold millions of values).
MAX_ANNOTATION_CHARS = 64 * 1024

#: (done, total): called after each dataset of an :func:`add`.
AddProgress = Callable[[int, int], None]


@dataclasses.dataclass
class AddReport:
    """What :func:`add` did: the entries indexed, the new ones, and the URIs that failed."""

    target: str
    base_uri: str | None
    indexed: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    new_entries: int = 0
    failed: list[dict[str, str]] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _annotations(ds: StoredDataSet) -> dict[str, Any]:
    out = {}
    for name in ds.annotation_names():
        value = _json_safe(ds.get_annotation(name))
        size = len(json.dumps(value))
        out[name] = value if size <= MAX_ANNOTATION_CHARS else f"<not kept in the catalog: {size} characters>"
    return out


def _iso(value: Any) -> str | None:
    """dtool's admin timestamps (seconds since the epoch) as ISO 8601, UTC."""
    try:
        stamp = datetime.datetime.fromtimestamp(float(value), tz=datetime.timezone.utc)
    except (TypeError, ValueError, OverflowError, OSError):
        return None
    return stamp.isoformat(timespec="seconds")


def _scalars(values: dict[str, Any], prefix: str = "") -> dict[str, FieldValue]:
    """The numbers, strings and booleans of a mapping, named ``prefix + key``."""
    return {f"{prefix}{k}": v for k, v in values.items() if isinstance(v, (int, float, str, bool))}


def describe(ds: StoredDataSet) -> Entry:
    """The catalog entry of an opened dataset (a model, claim or summary by its content).

    Raises:
        ReprodlError: its README, annotations or record cannot be read.
    """
    admin = ds.admin_metadata
    try:
        readme_fields = _json_safe(ds.readme())
    except MetadataError:
        readme_fields = {}  # not YAML: the text is still indexed
    entry = Entry(
        uuid=ds.uuid,
        kind="dataset",
        name=ds.name,
        manifest_digest=ds.manifest_digest(),
        uris=[ds.uri],
        readme=ds.get_readme_content(),
        readme_fields=readme_fields,
        annotations=_annotations(ds),
        created_at=_iso(admin.get("created_at")),
        creator=admin.get("creator_username"),
        indexed_at=now(),
    )
    relpaths = {ds.relpath(i) for i in ds.identifiers}
    kind = entry.annotations.get(keys.MODEL_KIND)
    if kind == keys.KIND_CLAIM and keys.CLAIM_FILE in relpaths:
        _describe_claim(ds, entry)
    elif kind == keys.KIND_SUMMARY and keys.SUMMARY_FILE in relpaths:
        _describe_summary(ds, entry)
    elif keys.PROVENANCE_FILE in relpaths:
        _describe_model(ds, entry)
    elif isinstance(entry.annotations.get(keys.MODEL_NAME), str):
        _describe_legacy_model(entry)
    else:
        _describe_dataset(ds, entry)
    return entry


def _describe_dataset(ds: StoredDataSet, entry: Entry) -> None:
    entry.fields = {"n_items": len(ds), "size_bytes": ds.total_size()}  # dtool items: files, not samples
    shape = entry.annotations.get(keys.TENSOR_SHAPE)
    if isinstance(shape, list) and shape and isinstance(shape[0], int):  # a tensor dataset: rows are samples
        entry.fields["n_samples"] = shape[0]
    input_type = entry.annotations.get(keys.INPUT_TYPE)
    if isinstance(input_type, str):
        entry.fields["input_type"] = input_type
    encoding = entry.annotations.get(keys.CATEGORY_ENCODING)
    if isinstance(encoding, dict):
        entry.fields["n_categories"] = len(encoding)


def _describe_model(ds: StoredDataSet, entry: Entry) -> None:
    from reprodl.modeldataset.read import read_record

    record = read_record(ds, check=False)
    try:
        record.check_digest()
        digest_ok = True
    except ReprodlError:
        digest_ok = False
    t = record.training
    entry.kind = "model"
    entry.record_digest = record.digest
    entry.created_at = record.created_at
    entry.fields = {
        **_scalars(record.results.final),
        **_scalars(t.params, "params."),
        "architecture": record.architecture.import_path,
        "n_parameters": record.architecture.n_parameters,
        "optimizer": t.optimizer.class_name,
        "epochs": t.epochs,
        "batch_size": t.batch_size,
        "seed": t.seeds.seed,
        "determinism": t.determinism.mode,
        "device": t.device,
        "wall_time_s": record.results.wall_time_s,
        "record_digest_ok": digest_ok,
    }
    entry.links = [
        Link("trained_on", ref.uuid, ref.uri, ref.manifest_digest, ref.role, ref.name)
        for ref in record.data
        if ref.source == "dtool"
    ]
    for relation, model in (("parent", record.lineage.parent), ("reproduces", record.lineage.reproduces)):
        if model is not None:
            entry.links.append(Link(relation, model.uuid, model.uri, model.record_digest))
    _reproduction(entry, record.lineage.reproduces)


def _reproduction(entry: Entry, recorded: ModelRef | None) -> None:
    """A kept reproduction's verdict (``reprodl reproduce --output`` writes it as an annotation);
    the model it reproduces from there too when its record does not name it (an older run).

    An annotation stays writable, so what it claims is checked where it is shown: the link
    counts as verified only when the original's catalogued record digest is the one named
    (:func:`reprodl.catalog.query.reproduction_verified`). A verdict about another model than
    the one the record names is not taken.
    """
    result = entry.annotations.get(keys.REPRODUCTION_RESULT)
    if not isinstance(result, dict):
        return
    uuid, uri, digest = (result.get(k) for k in ("original_uuid", "original_uri", "original_record_digest"))
    if recorded is not None and (uuid, digest) != (recorded.uuid, recorded.record_digest):
        return
    entry.verdict = str(result["verdict"]) if result.get("verdict") else None
    if recorded is None and isinstance(uuid, str):
        text = {k: v if isinstance(v, str) else None for k, v in (("uri", uri), ("digest", digest))}
        entry.links.append(Link("reproduces", uuid, text["uri"], text["digest"]))
    _attestation(entry, uuid, digest)


def _attestation(entry: Entry, uuid: Any, digest: Any) -> None:
    """A kept reproduction's attestation (``reprodl reproduce --attest``): ``attested`` when its
    signature checks (model-signing's key verifier, with the key it carries) and it states this
    verdict about the original this reproduction names; ``attested_by`` the key's hint."""
    bundle = entry.annotations.get(keys.ATTESTATION)
    if not isinstance(bundle, dict):
        return
    from reprodl.modeldataset.attestation import check_signature

    try:
        check = check_signature(bundle)
    except MissingDependencyError:
        return  # without model-signing the attestation is not checked, so it counts for nothing
    model = check.reproduction.get("model")
    model = model if isinstance(model, dict) else {}
    states = (model.get("uuid"), model.get("record_digest"), check.reproduction.get("verdict"))
    entry.fields["attested"] = check.ok and states == (uuid, digest, entry.verdict)
    if check.signer is not None:
        entry.fields["attested_by"] = check.signer


def _describe_legacy_model(entry: Entry) -> None:
    """A model made by the original dtoolAI: its annotations are all it recorded (no record, no digest)."""
    a = entry.annotations
    entry.kind = "model"
    params = a.get(keys.MODEL_PARAMETERS)
    entry.fields = {
        **(_scalars(params, "params.") if isinstance(params, dict) else {}),
        "architecture": str(a[keys.MODEL_NAME]),
        "made_by": "dtoolAI",
    }
    uuid, uri, name = (a.get(k) for k in (keys.SOURCE_DATASET_UUID, keys.SOURCE_DATASET_URI, keys.SOURCE_DATASET_NAME))
    if isinstance(uuid, str) or isinstance(uri, str):
        text = {k: v if isinstance(v, str) else None for k, v in (("uuid", uuid), ("uri", uri), ("name", name))}
        entry.links = [Link("trained_on", text["uuid"], text["uri"], None, "train", text["name"])]


def _read_json_item(ds: StoredDataSet, relpath: str) -> dict[str, Any]:
    idn = ds.identifier_of(relpath)
    size = int(ds.item_properties(idn).get("size_in_bytes", 0))
    if size > keys.MAX_METADATA_BYTES:  # a claim or summary is a few kB: refuse before reading it
        raise DatasetFormatError(
            f"{ds.uri}: {relpath} is {size:,} bytes, over reprodl's limit of {keys.MAX_METADATA_BYTES:,}: not indexed"
        )
    what = f"{ds.uri}: {relpath}"  # its manifest size may be a lie: the read is bounded too
    data = load_json(
        read_regular(ds.item_path(idn), keys.MAX_METADATA_BYTES, what=what, error=DatasetFormatError),
        what=what,
        error=DatasetFormatError,
    )
    if not isinstance(data, dict):
        raise DatasetFormatError(f"{ds.uri}: {relpath} holds a JSON {type(data).__name__}, not an object")
    return data


def _describe_claim(ds: StoredDataSet, entry: Entry) -> None:
    claim = _read_json_item(ds, keys.CLAIM_FILE)
    entry.kind = "claim"
    entry.verdict = str(claim.get("verdict")) if claim.get("verdict") else None
    entry.fields = _scalars({k: claim.get(k) for k in ("probability_a_better", "ci_low", "ci_high", "n", "metric")})
    runs = claim.get("runs")
    runs = runs if isinstance(runs, dict) else {}
    for side in ("a", "b"):
        side_runs = runs.get(side)
        for run in side_runs if isinstance(side_runs, list) else []:
            if isinstance(run, dict) and isinstance(run.get("uri"), str):
                entry.links.append(Link("member", None, run["uri"], run.get("record_digest"), side))


def _describe_summary(ds: StoredDataSet, entry: Entry) -> None:
    summary = _read_json_item(ds, keys.SUMMARY_FILE)
    models = summary.get("models")
    models = models if isinstance(models, list) else []
    entry.kind = "summary"
    entry.fields = {"n_runs": len(models), **_scalars({"varied": summary.get("varied")})}
    for m in models:
        if isinstance(m, dict) and isinstance(m.get("uri"), str):
            entry.links.append(Link("member", m.get("uuid"), m["uri"], m.get("record_digest"), "run"))


# --- adding a URI or a base URI -------------------------------------------------------------
def targets(target: str) -> tuple[list[str], str]:
    """The dataset URIs ``target`` names (itself, or every dataset under it) and their base URI.

    Raises:
        DatasetNotFoundError: a local path that does not exist.
    """
    full = normalise_uri(target)
    path = local_path(full)
    if path is not None:
        if (path / ".dtool" / "dtool").is_file():
            return [full], base_of(full)
        if not path.is_dir():
            raise DatasetNotFoundError(f"nothing at {full}: give a dataset's URI or a base URI (a directory)")
        return list_datasets(full), full
    try:
        return [open_dataset(full).uri], base_of(full)
    except (DatasetNotFoundError, InvalidURIError):  # a base URI (s3://bucket), not a dataset
        return list_datasets(full), full


def add(catalog: Catalog, target: str, *, workers: int = 8, progress: AddProgress | None = None) -> AddReport:
    """Index the dataset at ``target``, or every dataset under the base URI ``target``.

    Re-adding is idempotent: an entry is matched by UUID and manifest digest, and a copy at
    another URI adds a location to the same entry. A dataset that cannot be read is listed in
    ``failed`` (with why) and the others are indexed.
    """
    uris, base = targets(target)
    report = AddReport(target=target, base_uri=base)
    before = len(catalog)

    def one(uri: str) -> Entry:
        return describe(open_dataset(uri))

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {pool.submit(one, uri): uri for uri in uris}
        for done, future in enumerate(concurrent.futures.as_completed(futures), 1):
            uri = futures[future]
            try:
                entry = future.result()
            except ReprodlError as exc:
                report.failed.append({"uri": uri, "error": str(exc)})
            else:
                catalog.put(entry, base_uri=base)
                report.indexed.append({"uuid": entry.uuid, "kind": entry.kind, "name": entry.name, "uri": uri})
            if progress is not None:
                progress(done, len(uris))
    catalog.resolve_links()
    report.indexed.sort(key=lambda d: d["uri"])
    report.new_entries = len(catalog) - before
    return report
