"""Training with automatic provenance capture; the model is written as a dataset.

The paper's workflow runs as written:

    >>> train_ds = TensorDataSet(train_dataset_uri)                                # doctest: +SKIP
    >>> model = GenNet(**params.init_params)                                       # doctest: +SKIP
    >>> loss_fn = torch.nn.NLLLoss()                                               # doctest: +SKIP
    >>> optimiser = torch.optim.SGD(model.parameters(), lr=params.learning_rate)   # doctest: +SKIP
    >>> with DerivedDataSet(base_uri, "mnist_model", train_ds) as output_ds:       # doctest: +SKIP
    ...     train_model_with_metadata_capture(model, train_ds, optimiser, loss_fn, params, output_ds)

A training runs in five steps, each in its module: its arguments are checked
(:mod:`._trainer_checks`), what it needs to be redone is captured (code, components,
environment: :mod:`._trainer_capture`), the loop runs (:mod:`._epochs`, its data from
:mod:`.loader`, its validation :mod:`.evaluation`, its checkpoints :mod:`._trainer_checkpoints`),
the record is assembled and the model dataset written (:mod:`._trainer_record`,
:mod:`reprodl.modeldataset.write`). Every seed comes from one
:class:`~reprodl.training.seeding.SeedPlan`, which also writes the record's seeds.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from reprodl.data.datasets import WrappedDataSet
from reprodl.modeldataset.write import DerivedDataSet
from reprodl.provenance import Lineage, ModelRef, ProvenanceRecord
from reprodl.training._epochs import EpochCallback, Loop, ProgressCallback
from reprodl.training._trainer_capture import capture_start, capture_trainer_code, make_recorder
from reprodl.training._trainer_checkpoints import resume_fingerprint, trainer_checkpoints
from reprodl.training._trainer_checks import check_arguments, checked_group, checked_roles, choose_device, rank_device
from reprodl.training._trainer_record import make_record, training_fields, write_model_dataset, write_on_rank0
from reprodl.training.distributed import unwrap
from reprodl.training.evaluation import final_metric_names
from reprodl.training.loader import EpochSampler, make_loader
from reprodl.training.params import Parameters
from reprodl.training.trace import StepCallback

# What callers outside the trainer import from here (the config runner, reproduction, the dtoolai layer, tests).
__all__ = [
    "DerivedDataSet",
    "EpochSampler",
    "choose_device",
    "final_metric_names",
    "make_loader",
    "train_model_with_metadata_capture",
]


def train_model_with_metadata_capture(
    model: torch.nn.Module,
    train_ds: WrappedDataSet,
    optimiser: torch.optim.Optimizer,
    loss_fn: Any,
    params: Parameters | dict[str, Any],
    output_ds: DerivedDataSet | Any,
    *,
    valid_ds: WrappedDataSet | None = None,
    scheduler: Any = None,
    device: str | torch.device | None = None,
    progress: bool | ProgressCallback = True,
    on_epoch: EpochCallback | None = None,
    model_name: str | None = None,
    reproduces: ModelRef | None = None,
    replicates: ModelRef | None = None,
    code_root: str | os.PathLike[str] | None = None,
    config: dict[str, Any] | None = None,
    require_clean_code: bool = False,
    store_untracked: bool = True,
    on_step: StepCallback | None = None,
    checkpoint_every: int | None = None,
) -> ProvenanceRecord:
    """Train ``model`` and write it, with its full provenance, into ``output_ds``.

    Captures components, parameters, data, seeds, determinism, data order, code, environment, metrics.
    ``require_clean_code=True`` refuses (:class:`DirtyCodeError`) uncommitted code (DeepDIVA's
    enforcement); otherwise the uncommitted patch and untracked files are stored with the model, but
    not git-ignored files, secrets (:data:`reprodl.training.source.SECRET_FILE_PATTERNS`) or symbolic
    links; ``store_untracked=False`` stores none (the record names each one skipped and why).

    Each optimiser step is traced (:mod:`reprodl.training.trace`); ``on_step`` gets each row (True: stop);
    ``checkpoint_every=N``: a checkpoint every N epochs (``DerivedDataSet(..., resume=True)`` resumes).
    Under ``torchrun`` it trains with DistributedDataParallel. ``output_ds`` may be a ``DerivedDataSetCreator``.

    Returns the sealed :class:`ProvenanceRecord` (also stored as ``provenance.json``).
    """
    rerun = reproduces is not None or replicates is not None
    params, output_ds = check_arguments(train_ds, params, output_ds, valid_ds, rerun=rerun)
    model, group = unwrap(model), checked_group()
    code = capture_trainer_code(
        code_root, config, require_clean_code=require_clean_code, store_untracked=store_untracked
    )
    roles = checked_roles(output_ds, params, group)
    target = rank_device(choose_device(str(device) if device is not None else params.device), group)
    captured = capture_start(model, optimiser, loss_fn, scheduler, params, parent=output_ds.parent)
    recorder = make_recorder(model, optimiser, scheduler, params, captured, on_step=on_step)
    try:  # closed however it ends (a refused resume too): torch's clipping functions are given back
        report = _progress_reporter(progress) if group is None or group.rank == 0 else None
        loop = Loop(model, optimiser, loss_fn, scheduler, params, output_ds, target, report, on_epoch, group=group)
        loop.recorder, name = recorder, model_name or output_ds.name
        loop.checkpoints = trainer_checkpoints(
            output_ds,
            checkpoint_every,
            resume_fingerprint(params, config, roles, captured),
            group=group,
            on_step=on_step,
        )
        trained = loop.run(recorder.seeds, t_start=captured.t_start)
    finally:
        recorder.close()
    fields = training_fields(params, trained, loop, group, device=target)
    lineage = Lineage(parent=captured.parent, reproduces=reproduces, replicates=replicates)
    record = make_record(recorder, model, captured, trained, fields, code.info, roles, name=name, lineage=lineage)
    write = functools.partial(write_model_dataset, output_ds, model, record, captured, code, roles, trace=trained)
    return write_on_rank0(group, output_ds, write)


def _progress_reporter(progress: bool | Callable[[str, int, int], None]) -> Callable[[str, int, int], None] | None:
    """The per-batch progress callback: the caller's, or (``True``) a bar on stderr shown only
    to a person at a terminal, so scripts and logs stay clean; ``False`` turns it off."""

    if callable(progress):
        return progress
    if not progress or not sys.stderr.isatty():
        return None
    state = {"last": 0.0}

    def report(label: str, done: int, total: int) -> None:
        now = time.perf_counter()
        if done == total or now - state["last"] > 0.5:
            state["last"] = now
            bar = "#" * int(30 * done / total)
            sys.stderr.write(f"\r{label} [{bar:<30}] {done}/{total}")
            if done == total:
                sys.stderr.write("\n")
            sys.stderr.flush()

    return report
