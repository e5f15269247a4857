"""Stage 3, run: train again, in process, under torchrun, or by re-executing the recorded code.

Each kind goes to its runner: :mod:`..retrain` (the recorded training rebuilt and trained here),
:mod:`..ddp` (its processes, started by torchrun, each rebuild and train a shard) and :mod:`..reexec`
(the stored code re-run in a temporary copy). The runners import neither this package nor each other.
Whatever the comparison needs from a re-run kept in a temporary directory is read here, before it is
removed. (``--executor slurm|ray`` runs this whole pipeline on the engine: :mod:`..executors`.)

Example:
    >>> run(planned, check(planned)).reproduction_uri    # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from reprodl.modeldataset.read import load_trace, load_weights, read_record
from reprodl.reproduction import ddp, reexec
from reprodl.reproduction.divergence import load_oplogs
from reprodl.reproduction.pipeline.state import Checks, Plan, RunResult
from reprodl.reproduction.weightdiff import saved_weights
from reprodl.reproduction.worldsize import recorded_world_size
from reprodl.store import open_dataset

if TYPE_CHECKING:
    from reprodl.reproduction.retrain import Training


def run(plan: Plan, checks: Checks) -> RunResult:
    """The re-run of ``plan``, after ``checks``."""
    if plan.kind == "re-executed":
        return _reexecuted(plan)
    from reprodl.reproduction import retrain  # here: the built-in trainer's re-run needs torch, a re-execution none

    request, original = plan.request, plan.original
    assert original is not None
    training = retrain.rebuild_training(
        original,
        checks.opened,
        plan.transforms,
        allow=request.allow,
        model_class=request.model_class,
        device=request.device,
        seed=request.seed,
    )
    t_train = time.perf_counter()
    if plan.kind == "torchrun":
        return _under_torchrun(plan, training, t_train)
    new_record, uri = retrain.train_here(
        original, training, output=request.output, progress=request.progress, on_step=plan.comparer
    )
    return RunResult(new_record, uri, time.perf_counter() - t_train, training=training)


def _base(output: str | None, stack: contextlib.ExitStack) -> str:
    """Where the re-run writes its model: ``output`` (a path made absolute), else a temporary directory."""
    if output is None:
        return str(stack.enter_context(tempfile.TemporaryDirectory(prefix="reprodl-reproduce-")))
    return output if "://" in output else os.path.abspath(output)  # the re-run runs elsewhere


def _under_torchrun(plan: Plan, training: Training, t_train: float) -> RunResult:
    """Train again under torchrun with the recorded world size (another with --world-size); the new weights
    are loaded into ``training.model`` and its trace read before a temporary output goes."""
    request, original = plan.request, plan.original
    assert original is not None
    options = {"device": request.device, "seed": request.seed, "allow": list(request.allow)}
    options["world_size"] = recorded_world_size(original.record)
    with contextlib.ExitStack() as stack:
        base = _base(request.output, stack)
        uri = ddp.train_under_torchrun(original.model_ds, original.record, base=base, options=options)
        new_ds = open_dataset(uri)
        new_record = read_record(new_ds)
        training.model.load_state_dict(load_weights(new_ds, new_record))
        trace = load_trace(new_ds, new_record)
    kept = uri if request.output is not None else None
    return RunResult(new_record, kept, time.perf_counter() - t_train, training=training, new_trace=trace)


def _reexecuted(plan: Plan) -> RunResult:
    """Run the re-execution plan in temporary directories; its weights, trace and operation logs read there."""
    request, reexecution = plan.request, plan.reexecution
    assert reexecution is not None
    with contextlib.ExitStack() as stack:
        base = _base(request.output, stack)
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="reprodl-code-")))
        t_run = time.perf_counter()
        new_uri = reexec.execute(
            plan.model_ds, plan.record, reexecution, base=base, work=work, on_output=request.on_output, data=plan.where
        )
        seconds = time.perf_counter() - t_run
        new_ds = open_dataset(new_uri)
        new_record = read_record(new_ds)
        weights = saved_weights(new_ds, new_record)
        trace = load_trace(new_ds, new_record)
        oplogs = load_oplogs(new_ds, new_record) if plan.comparer is not None and trace is not None else None
    kept = new_uri if request.output is not None else None
    return RunResult(new_record, kept, seconds, new_weights=weights, new_trace=trace, new_oplogs=oplogs)
