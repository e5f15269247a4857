"""Replicating a model: its recorded recipe trained again on other data.

Reproducing re-runs a training with the same data, code and parameters; *replicating* (the
dtoolAI paper's distinction) keeps the recipe (architecture, initialisation, optimiser, loss,
scheduler, parameters, seed, transforms) and changes the data. :func:`replicate` rebuilds the
recipe from the record exactly as :func:`~reprodl.reproduction.pipeline.reproduce` does, reads the
new dataset the way the original read its data (same usetypes, splits, image mode), and
refuses before any training when the new data cannot stand in for the old: another input type,
another sample shape or another label set. The new model's record names the original in
``lineage.replicates``; the report puts both models' final metrics side by side, and the
replication's against the original's multi-run envelope when the original belongs to one.

Example:
    >>> report = replicate("models/digits-cnn", data="data/digits-other", output="models")  # doctest: +SKIP
    >>> [(m["metric"], m["original"], m["replication"]) for m in report.metrics]             # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

import torch

from reprodl import keys
from reprodl.data.datasets import ImageDataSet, TensorDataSet, WrappedDataSet
from reprodl.errors import DatasetFormatError, ParametersError, ReproductionError
from reprodl.modeldataset.read import read_record
from reprodl.provenance import DataRef, ModelRef, ProvenanceRecord
from reprodl.reproduction.rebuild import (
    rebuild_loss,
    rebuild_model,
    rebuild_optimizer,
    rebuild_scheduler,
    rebuild_transform,
)
from reprodl.store import StoredDataSet, open_dataset
from reprodl.store.uris import local_path
from reprodl.training.params import Parameters


@dataclasses.dataclass(frozen=True)
class Replication:
    """What :func:`replicate` trained: both models, the new data, and their metrics side by side.

    ``metrics`` has one row per final metric: ``metric``, ``original``, ``replication``,
    ``difference`` (replication - original) and, when the original belongs to a multi-run,
    ``envelope`` (the runs' mean, std, min, max and n, and ``within``: the replication's value
    lies between their min and max).
    """

    original_uri: str
    replication_uri: str
    data_uri: str
    data_uuid: str
    original_data_uuids: list[str]
    metrics: list[dict[str, Any]]
    envelope_uri: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def replicate(
    uri: str,
    *,
    data: str,
    output: str | None = None,
    name: str | None = None,
    allow: Iterable[str] = (),
    model_class: type | None = None,
    device: str | None = None,
    progress: bool = False,
    on_start: Callable[[], None] | None = None,
) -> Replication:
    """Train the recipe recorded in the model at ``uri`` on the dataset ``data``.

    Args:
        uri: the original model dataset.
        data: the new dataset: same input type, sample shape and label set as the original's;
            it stands in for every dataset the original read, with the same usetypes.
        output: base URI of the replication (default: the original's base, when it is local).
        name: the replication's model dataset name (default ``<model>.replication-<data name>``).
        allow, model_class: as for ``reproduce``: trusted modules, or the model class itself.
        device: where to train (default: the recorded device if available, else CPU).
        on_start: called once the data are accepted, as training starts.

    Raises:
        ReproductionError: the model was trained by its own code (``start_run``), or its record
            reads data of several datasets, or the new data are the original's.
        DatasetFormatError: the new data differ in input type, sample shape or label set (before training).
    """
    model_ds = open_dataset(uri)
    record = read_record(model_ds)
    _check_recipe(record, model_ds)
    new = open_dataset(data)
    roles = _open_roles(record, new)  # refuses mismatches before training
    base = output or _default_output(model_ds)
    if on_start is not None:
        on_start()
    new_record, new_uri = _train(
        record,
        model_ds,
        roles,
        base=base,
        name=name or f"{record.model_name}.replication-{new.name}"[:80],
        allow=allow,
        model_class=model_class,
        device=device,
        progress=progress,
    )
    envelope_uri, envelope = _envelope(model_ds)
    return Replication(
        original_uri=model_ds.uri,
        replication_uri=new_uri,
        data_uri=new.uri,
        data_uuid=new.uuid,
        original_data_uuids=sorted({ref.uuid for ref in record.data}),
        metrics=side_by_side(record.results.final, new_record.results.final, envelope),
        envelope_uri=envelope_uri,
    )


def _check_recipe(record: ProvenanceRecord, model_ds: StoredDataSet) -> None:
    """Refuse records whose recipe cannot be rebuilt and fed one new dataset."""
    what = f"the model {model_ds.name!r} ({model_ds.uri})"
    if record.code.run is not None:
        raise ReproductionError(
            f"{what} was trained by its own code (reprodl.start_run), whose data are read by that code: "
            "replicate rebuilds recipes of `reprodl train` and the built-in trainer. Run your script on the "
            "new data instead (its record then names both datasets)"
        )
    if not record.data:
        raise ReproductionError(f"{what} records no training data: there is nothing to replace")
    uuids = sorted({ref.uuid for ref in record.data})
    if len(uuids) > 1:
        names = ", ".join(sorted({f"{ref.name} ({ref.role})" for ref in record.data}))
        raise ReproductionError(
            f"{what} read {len(uuids)} datasets ({names}): replicate puts one new dataset in place of the "
            "original's one; merge the new data into one dataset with usetypes, as the original's roles need"
        )
    unverified = [ref.name for ref in record.data if ref.source != "dtool"]
    if unverified:
        raise ReproductionError(
            f"{what} read data that are not a dtool dataset ({', '.join(unverified)}): there is no recorded "
            "way to read the new data like them"
        )


def _open_roles(record: ProvenanceRecord, new: StoredDataSet) -> dict[str, list[WrappedDataSet]]:
    """The new dataset read once per recorded dataset, by role, as the original read its data."""
    roles: dict[str, list[WrappedDataSet]] = {"train": [], "valid": [], "test": []}
    for ref in record.data:
        roles[ref.role].append(_open_like(ref, new))
    return roles


def _open_like(ref: DataRef, new: StoredDataSet) -> WrappedDataSet:
    """The new dataset read as the original read ``ref``; refused when it cannot stand in for it."""
    if new.uuid == ref.uuid:
        raise ReproductionError(
            f"{new.uri} is the dataset the model was trained on ({ref.name}, UUID {ref.uuid}): training the recipe "
            "on the same data is reproducing it; use `reprodl reproduce`"
        )
    kind = new.get_annotation(keys.INPUT_TYPE) or keys.INPUT_TYPE_TENSOR
    if kind != (ref.input_type or keys.INPUT_TYPE_TENSOR):
        raise DatasetFormatError(
            f"cannot replicate on {new.uri}: it is a {kind}, but the model was trained on a {ref.input_type} "
            f"({ref.name}); give a dataset of the same kind"
        )
    transform = rebuild_transform(ref) if ref.transform is not None else None
    ds: WrappedDataSet
    if kind == keys.INPUT_TYPE_IMAGE:
        ds = ImageDataSet(new, ref.usetype, transform, mode=ref.image_mode, split=ref.split, bootstrap=ref.bootstrap)
    else:
        ds = TensorDataSet(new, ref.usetype, transform, split=ref.split, bootstrap=ref.bootstrap)
    _check_fits(ref, ds)
    return ds


def _check_fits(ref: DataRef, ds: WrappedDataSet) -> None:
    """Same sample shape and label set as the recorded data; a usetype that selects a part of the data."""
    where = f"cannot replicate on {ds.uri}"
    if ref.input_shape and list(ds.input_shape) != list(ref.input_shape):
        raise DatasetFormatError(
            f"{where}: its samples have the shape {list(ds.input_shape)}, but the model was trained on samples of "
            f"shape {list(ref.input_shape)} ({ref.name}); give data of the same input shape"
        )
    if ds.cat_encoding != ref.category_encoding:
        raise DatasetFormatError(
            f"{where}: its label set is {_labels(ds.cat_encoding)}, but the model was trained on "
            f"{_labels(ref.category_encoding)} ({ref.name}); give data with the same labels"
        )
    selects_part = ref.usetype is not None and ref.split is None and ref.n_items < ref.n_dataset_items
    if selects_part and len(ds) == len(ds.dataset):
        raise DatasetFormatError(
            f"{where}: the model's {ref.role} data were the usetype {ref.usetype!r} of {ref.name}, but "
            f"{ds.name} has no usetype split, so every item would be used for every role; split it first: "
            f"reprodl dataset split {ds.uri} --test 0.2"
        )


def _labels(encoding: dict[str, int]) -> str:
    return "{" + ", ".join(name for name, _ in sorted(encoding.items(), key=lambda kv: kv[1])) + "}"


def _default_output(model_ds: StoredDataSet) -> str:
    """The base the original model sits in, when it is a local directory."""

    path = local_path(model_ds.uri)
    if path is None:
        raise ParametersError(
            f"the original model {model_ds.uri} is not local, so its base is not a place to write to: "
            "give the replication's base URI with --output"
        )
    return str(path.parent)


def _train(
    record: ProvenanceRecord,
    model_ds: StoredDataSet,
    roles: dict[str, list[WrappedDataSet]],
    *,
    base: str,
    name: str,
    allow: Iterable[str],
    model_class: type | None,
    device: str | None,
    progress: bool,
) -> tuple[ProvenanceRecord, str]:
    """The recipe rebuilt (recorded seed, initialisation, optimiser, loss, scheduler), trained on ``roles``."""
    from reprodl.training.config import free_name
    from reprodl.training.loop import DerivedDataSet, train_model_with_metadata_capture

    model = rebuild_model(record, model_ds, allow=allow, model_class=model_class)
    optimizer = rebuild_optimizer(record, model, allow)
    scheduler = rebuild_scheduler(record, optimizer, allow)
    params = dict(record.training.params)
    if device is not None:
        params["device"] = device
    elif str(params.get("device", "")).startswith("cuda") and not torch.cuda.is_available():
        params["device"] = "cpu"
    original = ModelRef(
        uri=model_ds.uri, uuid=model_ds.uuid, record_digest=record.digest, weights_sha256=record.results.weights_sha256
    )
    parent = record.lineage.parent.uri if record.lineage.parent else None
    name = free_name(base, name)
    with DerivedDataSet(base, name, roles["train"], valid=roles["valid"], test=roles["test"], parent=parent) as out:
        new_record = train_model_with_metadata_capture(
            model,
            roles["train"][0],
            optimizer,
            rebuild_loss(record, allow),
            Parameters(**params),
            out,
            scheduler=scheduler,
            progress=progress,
            model_name=name,
            replicates=original,
        )
    assert out.uri is not None
    return new_record, out.uri


def _envelope(model_ds: StoredDataSet) -> tuple[str | None, dict[str, Any] | None]:
    """The multi-run summary the original belongs to (its URI and contents), if any."""
    from reprodl.reproduction.pipeline.judge import find_envelope

    uri = model_ds.get_annotation(keys.SUMMARY_URI)
    envelope = find_envelope(model_ds)
    return (uri, envelope) if envelope is not None else (None, None)


def side_by_side(
    original: dict[str, Any], replication: dict[str, Any], envelope: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """One row per numeric final metric of either model: both values, the difference, the envelope."""
    rows = []
    for metric in sorted(set(original) | set(replication)):
        a, b = original.get(metric), replication.get(metric)
        if not all(isinstance(v, (int, float)) or v is None for v in (a, b)):
            continue
        row: dict[str, Any] = {"metric": metric, "original": a, "replication": b, "difference": None}
        if a is not None and b is not None:
            row["difference"] = b - a
        stats = (envelope or {}).get("final", {}).get(metric)
        if stats is not None and b is not None:
            row["envelope"] = {**stats, "within": stats["min"] <= b <= stats["max"]}
        rows.append(row)
    return rows
