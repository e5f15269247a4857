"""What a run writes: the saved weights, its provenance record (training, results, the ranks) and the model
dataset, and the values it keeps on the way (a loss described, weights copied, logged numbers made JSON-able).

Package-private: :class:`reprodl.training.run.Run` writes through :func:`write` when it ends cleanly.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch

from reprodl import keys
from reprodl.data.datasets import WrappedDataSet
from reprodl.provenance import CallableInfo, EpochMetrics, Lineage, ProvenanceRecord, Results, store_readmes_once
from reprodl.provenance.record import DistributedInfo
from reprodl.store import DatasetWriter
from reprodl.training._run_context import utcnow
from reprodl.training.checkpoint import resumed_record
from reprodl.training.describe import describe_callable, jsonable
from reprodl.training.recorder import NO_LOSS
from reprodl.training.wrappers import original_module

if TYPE_CHECKING:
    from reprodl.training.run import Run


class _Output:
    """What ``write_model`` writes through: the open writer; it keeps the sealed record."""

    def __init__(self, writer: DatasetWriter) -> None:
        self.writer: DatasetWriter | None = writer
        self.record: ProvenanceRecord | None = None
        self.extra_readme: dict[str, Any] = {}  # a run's README holds what reprodl writes only


class _SavedState(torch.nn.Module):
    """The weights as they were at ``run.save`` (a module that only returns them)."""

    def __init__(self, state: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self._saved = state

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:  # type: ignore[override]  # the saved weights whatever the arguments
        return dict(self._saved)


def write(run: Run) -> None:
    """Write ``run``'s model dataset: the saved weights, its record, manifests, code files and trace."""
    from reprodl.modeldataset.write import write_model

    assert run._saved is not None
    names = list(run._saved)
    files = {n: keys.WEIGHTS_FILE if i == 0 else f"{keys.MODELS_DIR}{n}.safetensors" for i, n in enumerate(names)}
    record = _record(run, files)
    manifests = {
        ref.manifest_item: ds.dataset.manifest_entries()
        for ref, ds in run._data
        if isinstance(ds, WrappedDataSet) and ref.manifest_item
    }
    output = _Output(run._writer)
    write_model(
        cast(Any, output),
        _SavedState(run._saved[names[0]]),
        record,
        patch=run._patch,
        manifests=manifests,
        code_files=run._code_files,
        trace=run._tracer.to_bytes() if run._tracer is not None else None,
        more_weights={files[n]: run._saved[n] for n in names[1:]},
        oplogs=run._tracer.oplog_items() if run._tracer is not None else None,
    )
    run.record = output.record


def _record(run: Run, files: Mapping[str, str]) -> ProvenanceRecord:
    epochs = [int(e["epoch"]) for e in run._logged if "epoch" in e]
    assert run._saved is not None
    recorder = run._recorder
    models, optimizers = recorder.components(run._saved, files)
    training = recorder.training(
        models,
        optimizers,
        epochs=max(epochs, default=0),
        batch_size=run._loader_info.get("batch_size", run._watch_batch_size),
        shuffle=run._loader_info.get("shuffle", False),
        num_workers=run._loader_info.get("num_workers", 0),
        params=run.params,
        determinism=run.determinism,
        device=run._device,
        checkpoint_every=run.checkpoints.every,
        resumed=resumed_record(run.checkpoints.resumed),
        world_size=run._group.world_size if run._group is not None else 1,
        distributed=_distributed_info(run),
    )
    return recorder.record(
        name=run._redirect.get("original_name", run.name) if run._redirect else run.name,
        started=run._started,
        models=models,
        training=training,
        data=store_readmes_once([ref for ref, _ in run._data]),
        code=run._code,
        environment=run._environment,
        results=_results(run),
        lineage=Lineage(reproduces=run.reproduces),
        saved_at_step=run._saved_at_step,
    )


def _distributed_info(run: Run) -> DistributedInfo | None:
    group = run._group
    if group is None:
        return None
    return DistributedInfo(
        backend=group.backend,
        world_size=group.world_size,
        rank_seeds=[run.seed + r for r in range(group.world_size)],
        sampler=run._sampler_settings,
        rank_order_digests=run._rank_digests,
    )


def _results(run: Run) -> Results:
    by_epoch: dict[int, dict[str, Any]] = {}
    final: dict[str, Any] = {}
    for entry in run._logged:
        values = {k: v for k, v in entry.items() if k not in ("epoch", "step")}
        final.update(values)
        if "epoch" in entry:
            by_epoch.setdefault(int(entry["epoch"]), {}).update(values)
    history = [EpochMetrics(epoch=e, **v) for e, v in sorted(by_epoch.items()) if "train_loss" in v]
    return Results(
        history=history,
        final=final,
        wall_time_s=run.checkpoints.elapsed_before + time.perf_counter() - run._t0,
        started_at=run._started,
        finished_at=utcnow(),
        logged=list(run._logged),
    )


def describe_loss(loss: Any) -> CallableInfo:
    """A loss module by class and arguments, a loss function (``F.nll_loss``) by its import path."""
    if loss is None:
        return NO_LOSS
    return describe_callable(loss)  # a module by class and arguments, a function or partial by its path


def state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy, on the CPU, of the weights of ``model`` (its original module's: no ``_orig_mod.`` or ``module.``)."""
    return {k: v.detach().cpu().clone() for k, v in original_module(model)[0].state_dict().items()}


def number(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if isinstance(value, np.generic):
        return value.item()
    return jsonable(value)
