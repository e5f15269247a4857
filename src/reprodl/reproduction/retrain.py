"""The in-process runner: a built-in trainer's training rebuilt from its record and trained again here.

Used by the pipeline's run stage (:mod:`.pipeline.run`) and by each torchrun process of a multi-process
re-run (:mod:`.ddp`); it imports neither.

Example:
    >>> params = run_params(record, device="cpu", seed=None)       # doctest: +SKIP
    >>> training = rebuild_training(original, {}, transforms_for(record, None, []), allow=(), model_class=None,
    ...                             device="cpu", seed=None)        # doctest: +SKIP
    >>> new_record, uri = train_here(original, training, output=None, progress=False)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from reprodl.data.datasets import WrappedDataSet
from reprodl.errors import ReproductionError
from reprodl.provenance import ModelRef, ProvenanceRecord
from reprodl.reproduction.launch import STATISTICAL_SEED_OFFSET, is_distributed, reproduction_name
from reprodl.reproduction.rebuild import (
    open_recorded,
    rebuild_loss,
    rebuild_model,
    rebuild_optimizer,
    rebuild_scheduler,
    rebuild_transform,
    transform_differences,
)
from reprodl.store import StoredDataSet
from reprodl.training.capture import class_source_sha256
from reprodl.training.params import Parameters


@dataclasses.dataclass(frozen=True)
class Original:
    """The model dataset to reproduce, its record and its weights."""

    model_ds: StoredDataSet
    record: ProvenanceRecord
    state: dict[str, torch.Tensor]


@dataclasses.dataclass(frozen=True)
class Training:
    """The rebuilt training: model, optimiser, loss, scheduler, datasets by role, parameters."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: Any
    scheduler: Any
    roles: dict[str, list[WrappedDataSet]]
    params: Parameters
    reasons: list[str]  # how the rebuilt training may differ from the recorded one


def check_distributed_options(original: Original, transforms: Any, model_class: type | None) -> None:
    """Refuse objects passed for a training re-run by torchrun's processes (they cannot be sent there)."""
    if not is_distributed(original.record) or (not transforms and model_class is None):
        return
    raise ReproductionError(
        f"{original.model_ds.uri} was trained by several processes (torchrun) and is re-run the same way, from "
        "its record alone: transforms= and model_class= cannot be passed to those processes. Leave them out "
        "(a transform of reprodl.data.transforms is rebuilt from the record; a model class of yours is "
        "imported with allow=['your.module'])"
    )


def transforms_for(
    record: ProvenanceRecord, given: Mapping[str, Callable[[Any], Any]] | None, reasons: list[str]
) -> list[Any]:
    """Per recorded dataset, the transform to read it through: passed, rebuilt, or None."""
    given = dict(given or {})
    present = {ref.role for ref in record.data}
    unknown = sorted(set(given) - present)
    if unknown:
        raise ReproductionError(f"transforms= names roles {unknown}, but the record has datasets for {sorted(present)}")
    out = []
    for ref in record.data:
        transform = given.get(ref.role)
        if transform is None:
            out.append(rebuild_transform(ref) if ref.transform is not None else None)
            continue
        if ref.transform is None:
            raise ReproductionError(
                f"a transform was passed for the {ref.role} dataset {ref.name}, but the recorded training read it "
                "without one: leave it out of transforms="
            )
        why = transform_differences(ref, transform)
        if why:
            reasons.append(why)
        out.append(transform)
    return out


def run_params(record: ProvenanceRecord, *, device: str | None, seed: int | None) -> dict[str, Any]:
    """The recorded parameters with this run's seed (statistical mode: another one) and device."""
    params = dict(record.training.params)
    if record.training.determinism.mode == "statistical":
        params["seed"] = seed if seed is not None else int(params.get("seed", 0)) + STATISTICAL_SEED_OFFSET
    elif seed is not None:
        params["seed"] = seed
    params["verify_data"] = "none"  # just checked, deeply
    if device is not None:
        params["device"] = device
    elif not torch.cuda.is_available():
        params["device"] = "cpu"
    return params


def rebuild_training(
    original: Original,
    opened: dict[str, StoredDataSet],
    data_transforms: list[Any],
    *,
    allow: Iterable[str],
    model_class: type | None,
    device: str | None,
    seed: int | None,
) -> Training:
    """The recorded training rebuilt: its parameters for this run, model, optimiser, loss, data."""
    record = original.record
    params = run_params(record, device=device, seed=seed)
    model = rebuild_model(
        record, original.model_ds, allow=allow, model_class=model_class, seed=int(params.get("seed", 0))
    )
    current_src = class_source_sha256(type(model))
    reasons = []
    if record.architecture.source_sha256 and current_src and current_src != record.architecture.source_sha256:
        reasons.append(f"the source of {record.architecture.import_path} differs from the recorded one")
    optimizer = rebuild_optimizer(record, model, allow)
    loss_fn = rebuild_loss(record, allow)
    scheduler = rebuild_scheduler(record, optimizer, allow)
    roles: dict[str, list[WrappedDataSet]] = {"train": [], "valid": [], "test": []}
    for ref, transform in zip(record.data, data_transforms):
        roles[ref.role].append(open_recorded(ref, transform=transform, dataset=opened.get(ref.uri)))
    return Training(model, optimizer, loss_fn, scheduler, roles, Parameters(**params), reasons)


def train_here(
    original: Original, training: Training, *, output: str | None, progress: bool, on_step: Any = None
) -> tuple[ProvenanceRecord, str | None]:
    """Train again into a model dataset under ``output`` (else a temporary directory, removed).

    Returns the new record and the reproduction's URI (None when it was not kept).
    """
    from reprodl.training.loop import DerivedDataSet, train_model_with_metadata_capture

    record, model_ds, roles = original.record, original.model_ds, training.roles
    ref_self = ModelRef(
        uri=model_ds.uri, uuid=model_ds.uuid, record_digest=record.digest, weights_sha256=record.results.weights_sha256
    )
    with contextlib.ExitStack() as stack:
        base = output
        if base is None:
            base = stack.enter_context(tempfile.TemporaryDirectory(prefix="reprodl-reproduce-"))
        with DerivedDataSet(
            base,
            reproduction_name(record.model_name),
            roles["train"],
            valid=roles["valid"],
            test=roles["test"],
            parent=record.lineage.parent.uri if record.lineage.parent else None,
        ) as out:
            new_record = train_model_with_metadata_capture(
                training.model,
                roles["train"][0],
                training.optimizer,
                training.loss_fn,
                training.params,
                out,
                scheduler=training.scheduler,
                progress=progress,
                model_name=record.model_name,
                reproduces=ref_self,
                on_step=on_step,
                checkpoint_every=record.training.checkpoint_every if getattr(on_step, "keep_dir", None) else None,
            )
    return new_record, out.uri if output is not None else None
