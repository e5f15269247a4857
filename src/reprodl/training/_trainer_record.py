"""The built-in trainer's record and model dataset: the ``training`` fields it knows, the provenance record
assembled by its recorder, and the model dataset written on rank 0 (the other ranks get its sealed record).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from reprodl import keys
from reprodl.data.datasets import WrappedDataSet
from reprodl.errors import ReprodlError
from reprodl.modeldataset.write import DerivedDataSet, write_model
from reprodl.provenance import CodeInfo, DataRef, Lineage, ProvenanceRecord, Results, store_readmes_once
from reprodl.provenance.record import DEFAULT_MODEL_NAME, DistributedInfo
from reprodl.training._epochs import Loop, Trained
from reprodl.training._trainer_capture import Captured, CapturedCode
from reprodl.training.checkpoint import resumed_record, utcnow
from reprodl.training.distributed import Group, ShardBatches, broadcast_from_rank0, gather
from reprodl.training.evaluation import VALIDATION_SHARDED, final_metric_names
from reprodl.training.params import Parameters
from reprodl.training.recorder import Recorder


def _distributed_info(
    group: Group | None, params: Parameters, loop: Loop, trained: Trained
) -> tuple[DistributedInfo | None, int]:
    """The record's ``training.distributed`` (every rank's seed and shard orders, gathered) and world size."""
    if group is None:
        return None, 1
    assert isinstance(loop.sampler, ShardBatches)
    info = DistributedInfo(
        backend=group.backend,
        world_size=group.world_size,
        rank_seeds=[params.seed + r for r in range(group.world_size)],
        sampler=loop.sampler.shard.settings(),
        rank_order_digests=gather(list(trained.order_digests), group),
        validation=VALIDATION_SHARDED if loop.output_ds.valid_sets else None,
    )
    return info, group.world_size


def training_fields(
    params: Parameters, trained: Trained, loop: Loop, group: Group | None, *, device: torch.device
) -> dict[str, Any]:
    """The record's ``training`` fields the trainer knows (the recorder adds components, seeds, order, steps)."""
    checkpoints = loop.checkpoints
    distributed, world_size = _distributed_info(group, params, loop, trained)
    return {
        "distributed": distributed,
        "world_size": world_size,
        "epochs": params.n_epochs,
        "batch_size": params.batch_size,
        "shuffle": params.shuffle,
        "num_workers": params.num_workers,
        "params": params.to_dict(),
        "determinism": trained.determinism,
        "device": str(device),
        "checkpoint_every": checkpoints.every if checkpoints is not None else None,
        "resumed": resumed_record(checkpoints.resumed) if checkpoints is not None else None,
    }


def make_record(
    recorder: Recorder,
    model: torch.nn.Module,
    captured: Captured,
    trained: Trained,
    training_fields: dict[str, Any],
    code: CodeInfo,
    roles: list[tuple[str, WrappedDataSet]],
    *,
    name: str,
    lineage: Lineage,
) -> ProvenanceRecord:
    """The provenance record of a finished training, built by its recorder."""
    data_refs = store_readmes_once(
        [DataRef.model_validate({"role": role, **ds.provenance_info()}) for role, ds in roles]
    )
    history = trained.history
    final = {name: getattr(history[-1], name) for name in final_metric_names(history[-1].valid_accuracy is not None)}
    results = Results(
        history=history,
        final=final,
        wall_time_s=trained.wall_time_s,
        started_at=captured.started,
        finished_at=utcnow(),
    )
    weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    models, optimizers = recorder.components({DEFAULT_MODEL_NAME: weights}, {DEFAULT_MODEL_NAME: keys.WEIGHTS_FILE})
    return recorder.record(
        name=name,
        started=captured.started,
        models=models,
        training=recorder.training(models, optimizers, **training_fields),
        data=data_refs,
        code=code,
        environment=captured.environment,
        results=results,
        lineage=lineage,
        architecture=captured.architecture,
        saved_at_step=trained.optimizer_steps,
    )


def write_model_dataset(
    output_ds: DerivedDataSet,
    model: torch.nn.Module,
    record: ProvenanceRecord,
    captured: Captured,
    code: CapturedCode,
    roles: list[tuple[str, WrappedDataSet]],
    *,
    trace: Trained,
) -> None:
    """The model dataset's items: weights, record, copies of the data's manifests, code, step trace."""
    manifests = {}
    for ref, (_, ds) in zip(record.data, roles):
        ref.manifest_item = f"{keys.MANIFESTS_DIR}/{ds.uuid}.json"
        manifests[ref.manifest_item] = ds.dataset.manifest_entries()
    stored = captured.architecture.initialisation == "stored"
    write_model(
        output_ds,
        model,
        record,
        patch=code.patch,
        manifests=manifests,
        code_files=code.files,
        initial_state=captured.initial_state if stored else None,
        trace=trace.trace.to_bytes() if trace.trace is not None else None,
        oplogs=trace.trace.oplog_items() if trace.trace is not None else None,
    )


def write_on_rank0(group: Group | None, output_ds: DerivedDataSet, write: Callable[[], None]) -> ProvenanceRecord:
    """``write`` on rank 0 (or the only process); the other ranks get its sealed record, or fail with it.

    Returns the sealed record (``output_ds.record``).
    """
    if group is None or group.rank == 0:
        try:
            write()
        except BaseException:
            if group is not None:
                broadcast_from_rank0(None)
            raise
        assert output_ds.record is not None
        if group is not None:
            broadcast_from_rank0(output_ds.record.model_dump_json())
        return output_ds.record
    sealed = broadcast_from_rank0(None)
    if sealed is None:
        raise ReprodlError(
            f"rank 0 wrote no model dataset for {output_ds.name!r} (its error says why), "
            f"so rank {group.rank} ends with none either"
        )
    output_ds.record = ProvenanceRecord.model_validate_json(sealed)
    return output_ds.record
