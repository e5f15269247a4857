"""The built-in trainer's loop: epochs of steps under the determinism settings, metrics accumulated on the
device, the divergence check, validation, checkpoints written and resumed from.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from reprodl.errors import TrainingDivergedError
from reprodl.modeldataset.write import DerivedDataSet
from reprodl.provenance import Determinism, EpochMetrics
from reprodl.training._trainer_checkpoints import TrainerCheckpoints, rank_state
from reprodl.training.checkpoint import (
    note_worker_state,
    restoring,
    rng_state,
    set_rng_state,
    skipped_restore,
    utcnow,
    write_checkpoint,
)
from reprodl.training.determinism import DeterminismSettings
from reprodl.training.distributed import Group, ShardBatches, all_reduce_sum, gather, peer_loss_as_interruption
from reprodl.training.evaluation import evaluate_loss_accuracy
from reprodl.training.loader import Concat, EpochSampler, make_loader
from reprodl.training.params import Parameters
from reprodl.training.recorder import Recorder
from reprodl.training.seeding import SeedPlan
from reprodl.training.trace import StepTracer

EpochCallback = Callable[[EpochMetrics], None]
ProgressCallback = Callable[[str, int, int], None]


def _diverged(name: str, epoch: int, batch: int, n_batches: int, loss: float) -> None:
    where = f"batch {batch + 1}/{n_batches} of epoch {epoch + 1}" if batch >= 0 else f"epoch {epoch + 1}"
    raise TrainingDivergedError(
        f"the training of {name!r} diverged: the loss became {loss} at {where}, so no model was written. "
        "Lower the learning rate, check the data for NaN/inf values, or pass allow_nonfinite_loss=True "
        "(params: {allow_nonfinite_loss: true}) to keep such a model"
    )


@dataclasses.dataclass
class Trained:
    history: list[EpochMetrics]
    order_digests: list[str]
    determinism: Determinism
    wall_time_s: float
    optimizer_steps: int
    trace: StepTracer | None


@dataclasses.dataclass
class Loop:
    """The training loop: epochs of steps; metrics accumulate on the device (no per-batch sync)."""

    model: torch.nn.Module
    optimiser: torch.optim.Optimizer
    loss_fn: Any
    scheduler: Any
    params: Parameters
    output_ds: DerivedDataSet
    target: torch.device
    report: ProgressCallback | None
    on_epoch: EpochCallback | None
    optimizer_steps: int = 0
    recorder: Recorder | None = None  # its seeds, watched model and optimiser, step trace and data order
    sampler: EpochSampler | ShardBatches | None = None
    checkpoints: TrainerCheckpoints | None = None
    worker_states: dict[int, Any] | None = None
    elapsed_before: float = 0.0
    group: Group | None = None
    net: torch.nn.Module | None = None  # the DistributedDataParallel wrapper trained through, under torchrun

    def run(self, seeds: SeedPlan, *, t_start: float) -> Trained:
        """Every epoch, under the determinism settings, from the seeds of ``seeds``; a lost rank is an
        interruption (:class:`~reprodl.errors.RankLostError`: the checkpoint is kept)."""
        with peer_loss_as_interruption(self.group):
            try:
                return self._run(seeds, t_start=t_start)
            finally:
                if self.recorder is not None and self.recorder.tracer is not None:
                    self.recorder.tracer.close()  # an operation log left running by a failure

    def _run(self, seeds: SeedPlan, *, t_start: float) -> Trained:
        sets = self.output_ds.train_sets
        data = sets[0] if len(sets) == 1 else Concat(sets)
        ck = self.checkpoints
        if ck is not None and (ck.every is not None or ck.resume is not None):
            resumed = rank_state(ck.resume.state, self.group) if ck.resume is not None else {}
            self.worker_states = dict(resumed.get("workers", {}))
        loader, sampler = make_loader(
            data,
            self.params.batch_size,
            seeds=seeds,
            shuffle=self.params.shuffle,
            device=self.target,
            worker_states=self.worker_states,
            group=self.group,
        )
        self.sampler = sampler
        recorder = self.recorder
        assert recorder is not None
        if ck is not None and ck.every and recorder.tracer is not None:  # the step before each checkpoint: logged too
            per_epoch = -(-len(loader) // self.params.accumulation_steps)  # (none after the last epoch)
            recorder.tracer.oplog_every = ck.every * per_epoch
            recorder.tracer.oplog_below = self.params.n_epochs * per_epoch
        history: list[EpochMetrics] = []
        order_digests = recorder.order_digests
        # The optimiser's state (momentum buffers...) follows the model to the device.
        self.model.to(self.target)
        self._wrap()
        with DeterminismSettings(self.params.deterministic, self.target.type) as determinism:
            recorder.apply_seeds(self.group.rank if self.group is not None else 0)  # rank r: seed + r
            self.model.train()
            start = self._resume(loader, history, order_digests) if ck is not None and ck.resume else 0
            for epoch in range(start, self.params.n_epochs):
                t_epoch = time.perf_counter()
                sampler.set_epoch(epoch)
                metrics = self._epoch(epoch, loader, n_samples=self._samples_per_epoch(len(data)))
                assert sampler.order_digest is not None
                recorder.on_order(sampler.order_digest)
                metrics.wall_time_s = time.perf_counter() - t_epoch
                history.append(metrics)
                if self.on_epoch:
                    self.on_epoch(metrics)
                if recorder.stop_requested:
                    break
                if ck is not None and ck.due(epoch + 1, self.params.n_epochs):
                    self._checkpoint(epoch + 1, loader, history, order_digests, t_start)
        if recorder.tracer is not None:
            recorder.tracer.flush()
        wall = self.elapsed_before + time.perf_counter() - t_start
        return Trained(history, list(order_digests), determinism, wall, self.optimizer_steps, recorder.tracer)

    def _wrap(self) -> None:
        """Under torchrun: the model wrapped in DistributedDataParallel (its gradients averaged over the ranks)."""
        if self.group is None:
            return

        ids = [self.target.index] if self.target.type == "cuda" else None
        self.net = DistributedDataParallel(self.model, device_ids=ids)

    def _samples_per_epoch(self, n: int) -> int:
        """Samples trained on per epoch, over every rank (the DistributedSampler pads the shards to one length)."""
        if self.group is None or not isinstance(self.sampler, ShardBatches):
            return n
        return len(self.sampler.shard) * self.group.world_size

    def _checkpoint(
        self, epochs_done: int, loader: DataLoader, history: list[EpochMetrics], digests: list[str], t_start: float
    ) -> None:
        """Write a checkpoint after ``epochs_done`` epochs: every state needed to continue bit for bit."""
        ck = self.checkpoints
        assert ck is not None and loader.generator is not None
        t0 = time.perf_counter()
        own = {
            "rng": rng_state(),
            "workers": dict(self.worker_states or {}),
            "loader_generator": loader.generator.get_state(),
        }
        state: dict[str, Any] = {"model": self.model.state_dict(), "optimizer": self.optimiser.state_dict(), **own}
        if self.group is not None:  # every rank's random states, written by rank 0
            state["ranks"] = gather({**own, "order_digests": list(digests)}, self.group)
            if self.group.rank != 0:
                return
        if self.scheduler is not None:
            state["scheduler"] = self.scheduler.state_dict()
        meta = {
            **ck.meta,
            "epoch": epochs_done,
            "step": self.optimizer_steps,
            "at": utcnow(),
            "history": [m.model_dump(mode="json") for m in history],
            "order_digests": list(digests),
            "resumed": ck.resumed,
            "elapsed_s": self.elapsed_before + time.perf_counter() - t_start,
        }
        tracer = self.recorder.tracer if self.recorder is not None else None
        path = write_checkpoint(ck.directory, step=self.optimizer_steps, state=state, meta=meta, tracer=tracer)
        ck.seconds.append(time.perf_counter() - t0)
        if ck.written is not None:
            ck.written(path, self.optimizer_steps)

    def _resume(self, loader: DataLoader, history: list[EpochMetrics], digests: list[str]) -> int:
        """Restore every state of the checkpoint resumed from; the epoch (from 0) to continue with."""
        assert self.checkpoints is not None and self.checkpoints.resume is not None and loader.generator is not None
        c = self.checkpoints.resume
        skip = skipped_restore()  # a negative control (tests): one restore left out
        with restoring(c):  # a state of another shape: a ResumeError, which keeps the checkpoint
            self.model.load_state_dict(c.state["model"])
            if skip != "optimizer":
                self.optimiser.load_state_dict(c.state["optimizer"])
            if self.scheduler is not None:
                self.scheduler.load_state_dict(c.state["scheduler"])
            own = rank_state(c.state, self.group)
            if skip != "rng":
                set_rng_state(own["rng"])
            if skip != "loader":
                loader.generator.set_state(own["loader_generator"])
            history += [EpochMetrics.model_validate(m) for m in c.meta.get("history", [])]
            digests += list(own.get("order_digests", c.meta.get("order_digests", [])))  # this rank's shard orders
            self.optimizer_steps = int(c.meta["step"])
            self.elapsed_before = float(c.meta.get("elapsed_s", 0.0))
            if self.recorder is not None:
                self.recorder.set_steps(self.optimizer_steps)
                if self.recorder.tracer is not None:
                    c.restore_tracer(self.recorder.tracer)
            return int(c.meta["epoch"])

    def _epoch(self, epoch: int, loader: DataLoader, *, n_samples: int) -> EpochMetrics:
        """One epoch's steps, the scheduler's step, the divergence check and the validation."""
        loss_sum, first_bad = self._steps(epoch, loader)
        if self.group is not None:
            loss_sum = all_reduce_sum(loss_sum)  # every rank judges (and reports) the same loss
        lr_now = float(self.optimiser.param_groups[0].get("lr", float("nan")))
        if self.scheduler is not None and self.params.scheduler_interval == "epoch":
            self.scheduler.step()
        metrics = EpochMetrics(epoch=epoch + 1, train_loss=float(loss_sum) / n_samples, learning_rate=lr_now)
        if not self.params.allow_nonfinite_loss and not math.isfinite(metrics.train_loss):
            _diverged(self.output_ds.name, epoch, int(first_bad), len(loader), metrics.train_loss)
        if self.output_ds.valid_sets:
            valid = self.output_ds.valid_sets[0]
            vl, va = evaluate_loss_accuracy(self.model, valid, self.loss_fn, self.target, group=self.group)
            metrics.valid_loss, metrics.valid_accuracy = vl, va
        return metrics

    def _steps(self, epoch: int, loader: DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum of the losses, index of the first batch whose loss is not finite or -1), on the device.

        With ``accumulation_steps`` k, each loss is divided by k and the optimiser steps after every
        k batches and after the epoch's last batch.
        """
        target = self.target
        loss_sum = torch.zeros((), device=target, dtype=torch.float64)
        first_bad = torch.full((), -1, device=target, dtype=torch.int64)
        n_batches = len(loader)
        k = self.params.accumulation_steps
        forward = self.net if self.net is not None else self.model
        self.optimiser.zero_grad(set_to_none=True)
        for i, batch in enumerate(loader):
            if self.worker_states is not None:
                note_worker_state(batch, self.worker_states)
            x, y = batch
            x = x.to(target, non_blocking=True)
            y = y.to(target, non_blocking=True)
            self._note_batch(i, x)
            loss = self.loss_fn(forward(x), y)
            (loss / k if k > 1 else loss).backward()
            if (i + 1) % k == 0 or i + 1 == n_batches:
                self._step(loss, epoch, i)
            loss_sum += loss.detach() * len(y)
            if not self.params.allow_nonfinite_loss:
                bad = (first_bad < 0) & ~torch.isfinite(loss.detach())
                first_bad = torch.where(bad, torch.full_like(first_bad, i), first_bad)
            if self.report:
                self.report(f"epoch {epoch + 1}/{self.params.n_epochs}", i + 1, n_batches)
            if self.recorder is not None and self.recorder.stop_requested:
                break
        return loss_sum, first_bad

    def _note_batch(self, i: int, x: torch.Tensor) -> None:
        """Tell the recorder batch ``i``'s sample indices (from the sampler's order) and inputs."""
        if self.recorder is None:
            return
        order = self.sampler.last_order if self.sampler is not None else None
        bs = self.params.batch_size
        self.recorder.batch(indices=order[i * bs : (i + 1) * bs] if order is not None else None, inputs=x)

    def _step(self, loss: torch.Tensor, epoch: int, i: int) -> None:
        """The update ending batch ``i`` of ``epoch`` (both from 0), then its trace row: the state after it."""
        if self.recorder is not None:
            self.recorder.where, self.recorder.loss = (epoch + 1, i + 1), loss
        self._update()
        if self.recorder is not None:
            self.recorder.take_row()

    def _update(self) -> None:
        """One optimiser step: the gradients clipped, the step counted, a per-step scheduler stepped."""
        params = self.params
        if params.grad_clip_value is not None:
            torch.nn.utils.clip_grad_value_(self.model.parameters(), params.grad_clip_value)
        if params.grad_clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), params.grad_clip_norm)
        self.optimiser.step()
        self.optimizer_steps += 1
        if self.scheduler is not None and params.scheduler_interval == "step":
            self.scheduler.step()
        self.optimiser.zero_grad(set_to_none=True)
