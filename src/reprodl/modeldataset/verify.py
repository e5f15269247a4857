"""Checks on model datasets that need no re-training: verify and lineage.

Example:
    >>> verify_model("/models/digits_model", data=True).ok     # doctest: +SKIP
    True
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable
from typing import Any

from reprodl import keys
from reprodl.errors import DatasetFormatError, ReprodlError, TransformError, UnsafeImportError
from reprodl.files import read_regular
from reprodl.modeldataset.read import load_weights, read_record
from reprodl.parsing import load_json
from reprodl.provenance import DataRef, ProvenanceRecord, mirror_annotations
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
    notes: list[str] = dataclasses.field(default_factory=list)  # information, not pass/fail

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def add(self, name: str, ok: bool, detail: str = "") -> None:
        self.checks.append(Check(name, ok, detail))

    def to_dict(self) -> dict[str, Any]:
        return {
            "uri": self.uri,
            "ok": self.ok,
            "checks": [dataclasses.asdict(c) for c in self.checks],
            "notes": list(self.notes),
        }


def verify_model(
    uri: str, *, data: bool = False, allow: Iterable[str] = (), trusted_keys: Iterable[str | os.PathLike[str]] = ()
) -> ModelVerification:
    """Check a model dataset's own item hashes, its record's digest, the weights against the
    record, that every name the record gives (architecture, optimiser, loss, scheduler,
    transforms) passes the trust policy (with ``allow``), and (``data=True``) that every
    training dataset is reachable and unchanged.

    With ``trusted_keys`` (public keys: ``KEY.pub`` files or their text), also that the model
    is signed by one of them over its content as it is now (:mod:`reprodl.modeldataset.signing`).
    """
    trusted = list(trusted_keys)
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
                edited.append(
                    f"annotation {name} says {json.dumps(actual, sort_keys=True, default=str)[:200]}, "
                    f"the record {json.dumps(expected, sort_keys=True, default=str)[:200]}"
                )
        result.add("annotations mirror the record", not edited, "; ".join(edited))
        _check_weights(ds, record, result)
        _check_names(record, result, allow)
        if data:
            for ref in record.data:
                if ref.source == "in-memory":
                    result.add(f"{ref.role} data {ref.name} is in-memory ({ref.uri})", True, "not a dtool dataset")
                elif ref.source != "dtool":
                    result.add(f"{ref.role} data {ref.name} can be checked", False, unverified_detail(ref))
            dtool_only = record.model_copy(update={"data": [r for r in record.data if r.source == "dtool"]})
            for c in check_data(dtool_only, ds):
                result.add(f"{c.role} data {c.name} ({c.uri}) unchanged", c.ok, c.detail)
    _check_signature(ds, result, trusted)
    return result


def unverified_detail(ref: DataRef) -> str:
    """Why verify cannot check a dataset recorded by class only, and what would make it checkable."""
    what = "an IterableDataset" if ref.stream else "a dataset that is not a reprodl dataset"
    also = "; reproduce compares the samples it yields, pass by pass" if ref.stream else ""
    return (
        f"it is {what} ({ref.input_type}), recorded by class only (unverified data): reprodl cannot tell whether "
        "it changed. Make it a reprodl dataset (reprodl dataset create-from-arrays) or give the run the tensors "
        f"themselves (they are hashed){also}"
    )


def _check_weights(ds: Any, record: ProvenanceRecord, result: ModelVerification) -> None:
    """The default model's weights, then every other saved model's, against their digests in the record."""

    saved = [c for c in record.model_components() if c.weights_file is not None]
    for i, component in enumerate(saved or record.model_components()[:1]):
        what = "weights match the record" if i == 0 else f"weights of the model {component.name!r} match the record"
        try:
            load_weights(ds, record, model=component.name if record.models else None)
            result.add(what, True, (component.weights_sha256 if i else record.results.weights_sha256) or "")
        except ReprodlError as exc:
            result.add(what, False, str(exc))


def _check_names(record: ProvenanceRecord, result: ModelVerification, allow: Iterable[str]) -> None:
    """The trust-policy check of every record, a start_run one's too: loading, evaluating or
    predicting builds what it names."""
    refused = untrusted_names(record, allow=allow, script=record.code.run is not None)
    detail = "; ".join(f"will not be imported: {r}" for r in refused)
    result.add("recorded names pass the trust policy", not refused, detail)
    if record.code.run is not None:
        result.notes.append("the recorded code is re-executed by reproduce (with --trust-code), never imported")
        if record.architecture.import_path.startswith("__main__:"):
            result.notes.append(
                f"architecture {record.architecture.import_path} is defined in the recorded script: it is "
                "rebuilt only by `reprodl reproduce --trust-code` (or loaded with model_class=), never imported"
            )


def untrusted_names(record: ProvenanceRecord, *, allow: Iterable[str] = (), script: bool = False) -> list[str]:
    """Every name in ``record`` that :mod:`reprodl.trust` would refuse to import, with why.

    ``script``: the record stores the script that defines its ``__main__`` classes (a
    ``start_run`` record), so such a class is not imported but rebuilt by re-executing that
    script under ``--trust-code``; only ``__main__`` names of the architecture are passed so.
    """
    from reprodl import trust
    from reprodl.data.transforms import from_description

    t = record.training
    names = [
        (record.architecture.import_path, trust.Kind.ARCHITECTURE),
        (f"{t.optimizer.module}:{t.optimizer.class_name}", trust.Kind.OPTIMIZER),
    ]
    if not (script and not t.loss.module):  # a start_run record whose loop gave run.watch no loss names none
        names.append((f"{t.loss.module}:{t.loss.class_name}", trust.Kind.LOSS))
    if t.scheduler is not None:
        names.append((f"{t.scheduler.module}:{t.scheduler.class_name}", trust.Kind.SCHEDULER))
    names += [(m.architecture.import_path, trust.Kind.ARCHITECTURE) for m in record.models[1:]]
    allow = list(allow)
    refused = []
    for path, kind in dict.fromkeys(names):
        if kind is trust.Kind.ARCHITECTURE and _script_class_allowed(path, allow, script=script):
            continue
        why = trust.refusal(path, kind, allow=allow)
        if why is not None:
            refused.append(f"{kind.value} {path} ({why})")
        elif kind is trust.Kind.ARCHITECTURE:
            refused += _size_refusal(record, allow)
    for ref in record.data:
        if ref.transform is not None:
            try:
                from_description(ref.transform)
            except TransformError as exc:
                refused.append(f"{ref.role} transform ({exc})")
    return refused


def _size_refusal(record: ProvenanceRecord, allow: list[str]) -> list[str]:
    """Why a zoo architecture will not be built from the record's ``init_params`` (its size counted from
    them, nothing built: the bound every loader applies), or nothing; other classes are not built here."""
    from reprodl import trust

    arch = record.architecture
    try:
        cls = trust.resolve(arch.import_path, trust.Kind.ARCHITECTURE, allow=allow)
        if trust.planned_size(cls, arch.init_params, what=arch.import_path) is not None:
            trust.check_size(cls, arch.init_params, expected=arch.n_parameters, what=arch.import_path)
    except ReprodlError as exc:
        return [f"architecture {arch.import_path} ({exc})"]
    return []


def _script_class_allowed(path: str, allow: list[str], *, script: bool) -> bool:
    """Whether ``path`` is a class of the training script (``__main__:Net``) that is either
    stored with the model (``script``) or allowed by the user (``__main__`` or ``__main__:Net``);
    verify runs no recorded code, so it is not looked up here."""
    from reprodl import trust

    try:
        module, qualname = trust.split_path(path)
    except UnsafeImportError:
        return False
    return module == "__main__" and (script or any(a in ("__main__", f"__main__:{qualname}") for a in allow))


def _check_signature(ds: StoredDataSet, result: ModelVerification, trusted: list[Any]) -> None:
    """The signature check when keys are trusted; else a note naming who signed, if anyone."""
    from reprodl.modeldataset.signing import CHECK_NAME, signers, verify_signature

    if trusted:
        check = verify_signature(ds, trusted_keys=trusted)
        result.add(CHECK_NAME, check.ok, check.detail)
    elif signed_by := signers(ds):
        bundles = sum(s.endswith("(model-signing)") for s in signed_by)
        where = ", ".join([keys.SIGNATURES] * (len(signed_by) > bundles) + [keys.MODEL_SIGNING] * (bundles > 0))
        checked = "not checked: pass --trusted-key to check"
        result.notes.append(f"signed by {', '.join(signed_by)} ({checked}; annotation {where})")


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
            entry.update(
                uuid=ds.uuid,
                name=record.model_name,
                record_digest=record.digest,
                architecture=record.architecture.import_path,
                data=[f"{d.role}:{d.name}" for d in record.data],
                frozen=record.architecture.frozen_parameters,
            )
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


@dataclasses.dataclass(frozen=True)
class DataCheck:
    """What :func:`check_data` found for one recorded dataset (all the roles it was read in).

    ``ok`` is True when it opened, has the recorded UUID and manifest, every item re-hashes to
    its manifest and the metadata that gives the items their meaning is unchanged. ``problems``
    are the lines a refusal lists, each naming the dataset and the item or field.
    """

    role: str
    name: str
    uri: str
    ok: bool
    changed_items: tuple[str, ...] = ()
    error: str | None = None
    metadata_changes: tuple[str, ...] = ()
    uuid_matches: bool | None = None
    manifest_matches: bool | None = None
    problems: tuple[str, ...] = ()

    @property
    def detail(self) -> str:
        """One line on what is wrong ('' when nothing is)."""
        if self.error:
            return self.error
        return "; ".join([*self.changed_items, *self.metadata_changes]) or (
            "" if self.ok else "manifest digest differs"
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: role, uri, name, ok and either error or what was compared."""
        out: dict[str, Any] = {"role": self.role, "uri": self.uri, "name": self.name}
        if self.error is not None:
            return {**out, "ok": self.ok, "error": self.error}
        return {
            **out,
            "uuid_matches": self.uuid_matches,
            "manifest_matches": self.manifest_matches,
            "items": list(self.changed_items),
            "metadata": list(self.metadata_changes),
            "ok": self.ok,
        }


def check_data(
    record: ProvenanceRecord, model_ds: StoredDataSet, *, opened: dict[str, StoredDataSet] | None = None
) -> list[DataCheck]:
    """Each recorded dataset: reachable, same UUID and manifest, every item re-hashed, and
    the metadata that gives its items their meaning unchanged (:func:`metadata_changes`).

    A dataset used in several roles (train and valid splits of one dataset) is opened and
    hashed once. Returns one :class:`DataCheck` per dataset; its ``problems`` name dataset and
    item. Each dataset opened is also put in ``opened`` (URI -> dataset) when given, for the
    caller to read it from without opening it again.
    """
    by_uri: dict[str, DataRef] = {}
    roles: dict[str, list[str]] = {}
    for ref in record.data:
        by_uri.setdefault(ref.uri, ref)
        roles.setdefault(ref.uri, []).append(ref.role)
    checks = []
    for uri, ref in by_uri.items():
        role = "/".join(dict.fromkeys(roles[uri]))
        try:
            ds = open_dataset(uri)
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            problem = f"{role} dataset {ref.name} ({uri}) cannot be opened: {exc}"
            checks.append(DataCheck(role, ref.name, uri, ok=False, error=str(exc), problems=(problem,)))
            continue
        if opened is not None:
            opened[uri] = ds
        checks.append(_check_dataset(record, ref, role, ds, model_ds))
    return checks


def _check_dataset(
    record: ProvenanceRecord, ref: DataRef, role: str, ds: StoredDataSet, model_ds: StoredDataSet
) -> DataCheck:
    """The check of one opened dataset, first recorded as ``ref``, read in ``role``."""
    label = f"{role} dataset {ref.name}"
    changed = _changed_items(ref, ds, model_ds)
    item_problems = changed + ds.verify(deep=True).problems()
    digest = ds.manifest_digest()
    same_manifest = digest == ref.manifest_digest
    metadata = [
        f"{r.role} dataset {r.name}: {change}"
        for r in record.data
        if r.uri == ref.uri
        for change in metadata_changes(r, ds)
    ]
    problems = []
    if ds.uuid != ref.uuid:
        problems.append(f"{label} at {ref.uri} has UUID {ds.uuid}, the record says {ref.uuid}")
    if not same_manifest and not changed:
        problems.append(f"{label}: manifest digest {digest} differs from the recorded {ref.manifest_digest}")
    problems += [f"{label}: {p}" for p in item_problems]
    problems += [f"the {m}" for m in metadata]
    return DataCheck(
        role,
        ref.name,
        ref.uri,
        ok=not item_problems and not metadata and same_manifest and ds.uuid == ref.uuid,
        changed_items=tuple(item_problems),
        metadata_changes=tuple(metadata),
        uuid_matches=ds.uuid == ref.uuid,
        manifest_matches=same_manifest,
        problems=tuple(problems),
    )


def metadata_changes(ref: DataRef, ds: StoredDataSet) -> list[str]:
    """What changed since training in the metadata that gives ``ref``'s items their meaning.

    Annotations and overlays stay writable after a dataset is frozen, so its manifest does not
    cover them: the ``category_encoding``, ``value_scale``, ``image_dimensions``, the usetype
    split and the labels the training read are compared with the record, each change named
    ("category_encoding changed: '3' 3->5, '5' 5->3"). Values an older record lacks are not
    compared.
    """
    from reprodl.data.datasets import ImageDataSet, TensorDataSet, WrappedDataSet

    if ref.input_type not in (keys.INPUT_TYPE_IMAGE, keys.INPUT_TYPE_TENSOR, None):
        return []  # a dataset class of the user's own: reprodl cannot read it as the training did
    try:
        now: WrappedDataSet
        if ref.input_type == keys.INPUT_TYPE_IMAGE:
            now = ImageDataSet(ds, ref.usetype, mode=ref.image_mode, split=ref.split, bootstrap=ref.bootstrap)
        else:
            now = TensorDataSet(ds, ref.usetype, split=ref.split, bootstrap=ref.bootstrap)
    except (ReprodlError, TypeError, ValueError, KeyError) as exc:  # a hand-edited annotation of any shape
        return [f"cannot be read as the training read it (its annotations or split changed?): {exc}"]
    changes = []
    if ref.category_encoding and now.cat_encoding != ref.category_encoding:
        changes.append(f"{keys.CATEGORY_ENCODING} changed: {_encoding_change(ref.category_encoding, now.cat_encoding)}")
    scale = getattr(now, "value_scale", None)
    if ref.value_scale is not None and scale is not None and float(scale) != float(ref.value_scale):
        changes.append(f"value_scale changed: {ref.value_scale:g}->{float(scale):g}")
    changes += _dimension_changes(ref, ds, now)
    if ref.selection_digest and now.selection_digest() != ref.selection_digest:
        changes.append(
            f"usetype split changed: {_split_name(ref)} now selects {len(now)} samples "
            f"(recorded {ref.n_items}), not the ones the training read"
        )
    elif ref.labels_digest and now.labels_digest() != ref.labels_digest:
        what = "category overlay" if ref.input_type == keys.INPUT_TYPE_IMAGE else "labels"
        changes.append(f"{what} changed: the samples of {_split_name(ref)} carry other labels than at training")
    return changes


def _encoding_change(was: dict[str, int], now: dict[str, int]) -> str:
    """``'3' 3->5, '5' 5->3, 'x' added as 7, 'y' (was 2) removed``."""
    parts = [f"{name!r} {was[name]}->{now[name]}" for name in was if name in now and was[name] != now[name]]
    parts += [f"{name!r} added as {now[name]}" for name in now if name not in was]
    parts += [f"{name!r} (was {was[name]}) removed" for name in was if name not in now]
    return ", ".join(parts)


def _dimension_changes(ref: DataRef, ds: StoredDataSet, now: Any) -> list[str]:
    """The ``image_dimensions`` annotation against the record (or, in an older record that
    lacks it, a tensor dataset's input shape, which that annotation decides)."""
    if "image_dimensions" in ref.model_fields_set:
        current = ds.get_annotation(keys.IMAGE_DIMENSIONS)
        try:
            current = [int(d) for d in current] if current is not None else None
        except (TypeError, ValueError):
            pass  # not a list of integers: shown as it is
        if current != ref.image_dimensions:
            return [f"{keys.IMAGE_DIMENSIONS} changed: {ref.image_dimensions}->{current}"]
        return []
    if ref.input_type != keys.INPUT_TYPE_IMAGE and ref.input_shape and list(now.input_shape) != ref.input_shape:
        return [f"{keys.IMAGE_DIMENSIONS} changed: input shape {ref.input_shape}->{list(now.input_shape)}"]
    return []


def _split_name(ref: DataRef) -> str:
    if ref.split is not None:
        return f"usetype {ref.usetype!r} of the in-memory split {json.dumps(ref.split, sort_keys=True)}"
    return f"usetype {ref.usetype!r}" if ref.usetype else "the whole dataset"


def _changed_items(ref: DataRef, ds: StoredDataSet, model_ds: StoredDataSet) -> list[str]:
    """Items whose recorded manifest entry differs from the dataset's manifest now."""
    if not ref.manifest_item:
        return []
    try:
        path = model_ds.item_path(model_ds.identifier_of(ref.manifest_item))
        data = read_regular(path, keys.MAX_METADATA_BYTES, what=ref.manifest_item, error=DatasetFormatError)
        recorded = load_json(data, what=ref.manifest_item, error=DatasetFormatError)
    except (KeyError, OSError, DatasetFormatError):
        return []
    if not isinstance(recorded, dict):
        return []
    now = ds.manifest_entries()
    out = [f"missing: {r}" for r in sorted(set(recorded) - set(now))]
    out += [f"added: {r}" for r in sorted(set(now) - set(recorded))]
    out += [f"content changed since training: {r}" for r in sorted(set(now) & set(recorded)) if now[r] != recorded[r]]
    return out
