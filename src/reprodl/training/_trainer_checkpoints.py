"""The built-in trainer's checkpoints: where and how often, what a resumed training must share with the
killed one (its fingerprint), and each rank's random states in a checkpoint.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reprodl.data.datasets import WrappedDataSet
from reprodl.errors import ParametersError
from reprodl.modeldataset.write import DerivedDataSet
from reprodl.store import normalise_uri
from reprodl.training._trainer_capture import Captured
from reprodl.training.checkpoint import Checkpoint, check_unchanged, read_checkpoint
from reprodl.training.distributed import Group, broadcast_from_rank0
from reprodl.training.params import Parameters
from reprodl.training.trace import StepCallback


@dataclasses.dataclass
class TrainerCheckpoints:
    """The checkpoints of one training: where, how often, what they must match, and the one resumed."""

    directory: Path
    every: int | None
    meta: dict[str, Any]
    resume: Checkpoint | None
    resumed: list[dict[str, Any]]
    seconds: list[float] = dataclasses.field(default_factory=list)
    written: Callable[[Path, int], None] | None = None  # told of each checkpoint written (path, step)

    def due(self, epochs_done: int, n_epochs: int) -> bool:
        return self.every is not None and epochs_done % self.every == 0 and epochs_done < n_epochs


def resume_fingerprint(
    params: Parameters, config: dict[str, Any] | None, roles: list[tuple[str, WrappedDataSet]], captured: Captured
) -> dict[str, Any]:
    """What a resumed training must share with the killed one (its config, else its parameters and parts)."""
    data = {f"{role}[{i}]": ds.uuid for i, (role, ds) in enumerate(roles)}
    if config is not None:
        return {"config": {k: v for k, v in config.items() if k not in ("checkpoint_every", "source")}, "data": data}
    arch = captured.architecture
    return {
        "params": params.to_dict(),
        "data": data,
        "architecture": {"class": arch.import_path, "init_params": arch.init_params},
        "optimizer": captured.optimizer.model_dump(mode="json"),
    }


def trainer_checkpoints(
    output_ds: DerivedDataSet,
    every: int | None,
    fingerprint: dict[str, Any],
    *,
    group: Group | None = None,
    on_step: StepCallback | None = None,
) -> TrainerCheckpoints:
    """The training's checkpoints; when resuming, the latest one, refused if the config changed since.

    In a process ``group`` rank 0 writes them into its model dataset's staging area, and every
    rank resumes from there (its directory sent to the others). A re-run's ``on_step`` (a trace
    comparer, :mod:`reprodl.reproduction.replay`) may name a ``start_checkpoint`` to resume from
    and take each checkpoint written (``checkpoint_written``).
    """
    if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
        raise ParametersError(f"checkpoint_every should be a positive number of epochs, but got {every!r}")
    writer_dir = str(output_ds.writer.checkpoint_dir) if output_ds.writer is not None else None
    if group is not None:
        writer_dir = broadcast_from_rank0(writer_dir)
    assert writer_dir is not None
    directory = Path(writer_dir)
    meta = {
        "kind": "trainer",
        "name": output_ds.name,
        "base_uri": normalise_uri(output_ds.base_uri),
        "fingerprint": fingerprint,
    }
    start = getattr(on_step, "start_checkpoint", None)
    resume = Checkpoint(start) if start is not None else read_checkpoint(directory) if output_ds.resume else None
    if resume is not None:
        check_unchanged(resume.meta.get("fingerprint", {}), fingerprint, name=output_ds.name, where=resume.path)
    written = getattr(on_step, "checkpoint_written", None)
    return TrainerCheckpoints(
        directory, every, meta, resume, resume.resumed() if resume is not None else [], written=written
    )


def rank_state(state: dict[str, Any], group: Group | None) -> dict[str, Any]:
    """This rank's random states (Python, NumPy, torch, workers, loader) in a checkpoint's ``state``."""
    ranks = state.get("ranks")
    found, here = len(ranks) if isinstance(ranks, list) else 1, group.world_size if group is not None else 1
    if found != here:
        raise ParametersError(
            f"the checkpoint holds the random states of {found} process(es), but this training runs in {here}: "
            f"resume it with as many processes as it was started with (torchrun --nproc-per-node {found})"
        )
    return dict(ranks[group.rank]) if group is not None and isinstance(ranks, list) else state
