"""The record's results: metrics per epoch, the operation log and the step trace."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from reprodl import keys
from reprodl.provenance._part import _Part


class EpochMetrics(_Part):
    """The metrics of one epoch."""

    epoch: int = Field(description="epoch number, from 1")
    train_loss: float = Field(description="mean training loss over the epoch's samples")
    valid_loss: float | None = Field(None, description="loss on the validation data after the epoch")
    valid_accuracy: float | None = Field(None, description="accuracy on the validation data after the epoch")
    learning_rate: float | None = Field(None, description="learning rate of the first parameter group")
    wall_time_s: float | None = Field(
        None,
        description="seconds the epoch took (the built-in trainer); null where it was not measured (format 1.3 on: "
        "a start_run or Lightning run logs no epoch time; older records wrote 0.0)",
    )


class OpLogItem(_Part):
    """One optimiser step's operation log (reprodl.training.oplog): an item of JSON lines, one operation a line."""

    step: int = Field(description="the optimiser step logged (from 1)")
    item: str = Field(description="the item holding it: oplog/step-<n>.jsonl")
    sha256: str = Field(description="sha256 of the item's bytes (so the record digest covers it)")
    n_ops: int = Field(0, description="operations logged (a step's first 50,000 at most)")
    bytes: int = Field(0, description="size of the item")
    seconds: float = Field(0.0, description="wall time of the logged step, logging included")


class StepTrace(_Part):
    """The step trace: a digest of the training state after each optimiser step (item ``trace.npy``)."""

    item: str = Field(keys.TRACE_FILE, description="item holding the trace: a NumPy structured array, no pickle")
    sha256: str | None = Field(None, description="sha256 of the trace item's bytes (so the record digest covers it)")
    kind: Literal["words", "exact", "sampled"] = Field(
        "sampled",
        description="words (format 1.3 on): per tensor and for the optimiser state, the XOR of the tensor's bytes "
        "as little-endian 64-bit words; exact (format 1.2): the same with torch.hash_tensor (every element "
        "widened to 64 bits, XORed); sampled (older records, the default when absent): per parameter tensor, "
        "the float64 sum of a fixed sample of its elements",
    )
    n_steps: int = Field(0, description="optimiser steps traced")
    n_rows: int = Field(0, description="steps kept in the item (all of them up to every_step_up_to)")
    bytes_per_step: int = Field(
        0,
        description="bytes per kept step: words, 56 (step, epoch, batch, loss, indices, inputs, optimiser and random "
        "generators' digests) + 8 per tensor; exact, 48 (no random generators' digest) + 8 per tensor; sampled, "
        "40 + 8 per parameter tensor",
    )
    tensors: list[str] = Field(
        default_factory=list, description="the tensors digested (parameters, then buffers), in column order"
    )
    optimizers: list[str] = Field(
        default_factory=list, description="exact: the classes of the optimisers whose state is digested"
    )
    sample: int = Field(
        64, description="sampled: elements per tensor summed (float64) into its fingerprint (0: exact kind)"
    )
    sample_seed: int = Field(0, description="sampled: seed of the generator choosing each tensor's sampled elements")
    every_step_up_to: int = Field(0, description="steps kept one by one; after that only every stride-th")
    stride: int = Field(1, description="the stride of the steps kept after every_step_up_to (1: every step kept)")
    oplog: list[OpLogItem] | None = Field(
        None,
        description="format 1.2, optional: the operation logs of some steps (by default the first and the step before "
        "each checkpoint; at most 8): per dispatched operation its name, module, forward/backward and output "
        "digests; None: none recorded",
    )


class Results(_Part):
    """What the training produced."""

    history: list[EpochMetrics] = Field(default_factory=list, description="metrics per epoch")
    final: dict[str, Any] = Field(default_factory=dict, description="the last epoch's metrics")
    wall_time_s: float = Field(0.0, description="seconds the training took")
    started_at: str | None = Field(None, description="start time (UTC, ISO 8601)")
    finished_at: str | None = Field(None, description="end time (UTC, ISO 8601)")
    weights_file: str = Field(keys.WEIGHTS_FILE, description="item holding the trained weights")
    weights_sha256: str | None = Field(
        None, description="weights digest: sha256 over tensor names, dtypes, shapes and bytes"
    )
    logged: list[dict[str, Any]] = Field(
        default_factory=list,
        description="metrics logged with run.log, in order; each has an epoch or a step",
    )
    saved_at_step: int | None = Field(
        None,
        description="the optimiser steps taken when the saved weights were taken (run.save may keep them before "
        "the end, or save a copy from an earlier step); None: not known (a saved copy whose weights no traced "
        "step had, or an older record)",
    )
    trace: StepTrace | None = Field(
        None, description="the step trace: digests of the training state, loss and batch after each optimiser step"
    )
