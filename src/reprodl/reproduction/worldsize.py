"""Does a distributed run's result depend on its world size? ``reproduce --world-size N``.

A DistributedDataParallel run of W processes, each with batch B, trains on a global batch of
W * B samples per step. :func:`at_world_size` gives the record as if it had been trained by N
processes with the same global batch (each with W * B / N samples: refused unless that is a
whole number), so that the re-run differs from the original only in how the work is split;
:func:`world_size_report` says what changed and whether the result did.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from reprodl.errors import ParametersError
from reprodl.provenance import ProvenanceRecord


def recorded_world_size(record: ProvenanceRecord) -> int:
    dist = record.training.distributed
    return dist.world_size if dist is not None else 1


def at_world_size(record: ProvenanceRecord, n: int, *, what: str) -> ProvenanceRecord:
    """``record`` re-planned for ``n`` processes with the same global batch (a copy)."""
    was = recorded_world_size(record)
    if record.code.run is not None:
        raise ParametersError(
            f"--world-size re-plans a built-in trainer's run, but {what} was trained by its own code "
            "(reprodl.start_run): reproduce it without --world-size"
        )
    batch = record.training.params.get("batch_size")
    if not isinstance(batch, int) or n < 1 or (batch * was) % n:
        raise ParametersError(
            f"--world-size {n}: {what} was trained by {was} process(es) of batch {batch} (a global batch of "
            f"{batch * was if isinstance(batch, int) else '?'}); give a world size that divides the global batch"
        )
    new = record.model_copy(deep=True)
    new.training.params = {**record.training.params, "batch_size": batch * was // n}
    if n == 1:
        new.training.distributed = None
    elif new.training.distributed is None:
        raise ParametersError(
            f"--world-size {n}: {what} was trained by one process, which records no backend to start "
            f"{n} with; reproduce it at --world-size 1, or train it under torchrun first"
        )
    else:
        new.training.distributed.world_size = n
    return new


def replanned(record: ProvenanceRecord, n: int | None, what: str) -> ProvenanceRecord:
    """:func:`at_world_size`, or ``record`` itself when no world size is asked for."""
    return record if n is None else at_world_size(record, n, what=what)


def world_size_noted(report: Any, original: ProvenanceRecord, n: int | None) -> Any:
    """``report`` (a ReproductionReport) with ``world_size``: what the re-run at ``n`` processes
    changed (processes, batch per process) and whether the result depends on it (any verdict
    but identical); ``report`` itself when no world size was asked for."""
    if n is None:
        return report
    was, batch = recorded_world_size(original), int(original.training.params["batch_size"])
    noted = {
        "original": was,
        "rerun": n,
        "global_batch": batch * was,
        "batch_per_process": {"original": batch, "rerun": batch * was // n},
        "depends_on_world_size": report.verdict != "identical",
    }
    return dataclasses.replace(report, world_size=noted)
