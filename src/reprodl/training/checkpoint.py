"""Checkpoints of an unfinished training, and resuming a killed one bit for bit.

A training with ``checkpoint_every`` writes, every N epochs (the built-in trainer) or N
optimiser steps (:func:`reprodl.start_run`), one checkpoint into the staging directory of
its unfinished model dataset (``<staging>/checkpoint/ckpt-<step>/``):

* ``state.pt``: tensors and state dicts only (model, optimiser, scheduler, the random
  states of Python, NumPy and torch, each DataLoader worker's, the loaders' generators),
  written by ``torch.save`` and read back with ``weights_only=True``;
* ``trace-kept.npy``, ``trace-tail.npy``: the step trace so far (NumPy, no pickle);
* ``meta.json``: where the run was (epoch, step, batch), its history, data-order digests, the
  config it was started with and its earlier resumes.

A checkpoint is written in a temporary directory and renamed into place in one step, then
the older ones are removed: a kill at any moment leaves the previous checkpoint or the new
one. ``resume`` finds the staging directory a killed run of the same name and base left
(:func:`reprodl.store.find_resumable`), refuses when the config changed (naming the change),
restores every state and continues; the record's ``training.resumed`` says from where.

Example:
    >>> changes = config_changes({"params": {"lr": 0.1}}, {"params": {"lr": 0.2}})
    >>> changes
    ['params.lr: 0.1 -> 0.2']
"""

from __future__ import annotations

import datetime
import json
import os
import random
import secrets
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reprodl import keys
from reprodl.errors import ResumeError
from reprodl.store.staging import fsync_dir, latest_checkpoint, read_checkpoint_meta, rename_noreplace
from reprodl.training.trace import StepTracer

FORMAT = 1
STATE_FILE = "state.pt"
TRACE_KEPT = "trace-kept.npy"
TRACE_TAIL = "trace-tail.npy"


def utcnow() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# --- random states -------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """This process's random states (Python, NumPy, torch, CUDA) as tensors and numbers."""
    version, internal, gauss = random.getstate()
    _, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": (version, torch.tensor(internal, dtype=torch.int64), gauss),
        "numpy": (
            torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            int(np_pos),
            int(np_has_gauss),
            float(np_gauss),
        ),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the random states :func:`rng_state` returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(int(x) for x in internal.tolist()), gauss))
    np_keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state(("MT19937", np_keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class RngReportingCollate:
    """A collate function that, in a DataLoader worker, attaches the worker's random states to the batch.

    The main process keeps the latest state of each worker (:meth:`WorkerStates.note`), so a
    checkpoint holds each worker's position and a resumed worker continues from it.
    """

    def __init__(self, collate: Any) -> None:
        self.collate = collate

    def __call__(self, samples: Any) -> Any:
        batch = self.collate(samples)
        info = torch.utils.data.get_worker_info()
        if info is None or not isinstance(batch, tuple):
            return batch
        out = _ReportingBatch(batch)
        out.worker_rng = (info.id, rng_state())
        return out


class _ReportingBatch(tuple):  # a batch tuple carrying its worker's random state
    worker_rng: Any = None


class WorkerSeeder:
    """A ``worker_init_fn``: seeds worker i as ``plan.worker(i)``, then restores its checkpointed states."""

    def __init__(self, seed_worker: Any, states: dict[int, Any] | None = None) -> None:
        self.seed_worker, self.states = seed_worker, dict(states or {})

    def __call__(self, worker_id: int) -> None:
        self.seed_worker(worker_id)
        if worker_id in self.states:
            set_rng_state(self.states[worker_id])


def note_worker_state(batch: Any, states: dict[int, Any]) -> None:
    """Keep the worker random state a :class:`RngReportingCollate` batch carries."""
    carried = getattr(batch, "worker_rng", None)
    if carried is not None:
        states[int(carried[0])] = carried[1]


# --- writing and reading -------------------------------------------------------------------
def write_checkpoint(directory: Path, *, step: int, state: dict[str, Any], meta: dict[str, Any], tracer: Any) -> Path:
    """Write one checkpoint atomically under ``directory`` and remove the older ones; its path."""
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".tmp-{secrets.token_hex(6)}"
    tmp.mkdir()
    try:
        torch.save(state, tmp / STATE_FILE)
        if tracer is not None:
            kept, tail, counters = tracer.state()
            np.save(tmp / TRACE_KEPT, kept, allow_pickle=False)
            np.save(tmp / TRACE_TAIL, tail, allow_pickle=False)
            meta = {**meta, "trace": counters}
        (tmp / keys.CHECKPOINT_META).write_text(json.dumps({"format": FORMAT, **meta}, allow_nan=True))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        final = directory / f"ckpt-{step:012d}"
        if final.exists():
            shutil.rmtree(final)
        rename_noreplace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(str(directory))
    for old in directory.iterdir():
        if old.name.startswith("ckpt-") and old.name < final.name:
            shutil.rmtree(old, ignore_errors=True)
    return final


class Checkpoint:
    """A checkpoint read back: ``meta`` (JSON), ``state`` (tensors) and the step trace's rows."""

    def __init__(self, path: Path) -> None:
        meta = read_checkpoint_meta(path)
        if meta is None or meta.get("format") != FORMAT:
            raise ResumeError(f"the checkpoint at {path} has no readable meta.json of format {FORMAT}: start afresh")
        self.path, self.meta = path, meta
        self.state: dict[str, Any] = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
        kept, tail = path / TRACE_KEPT, path / TRACE_TAIL
        self.trace = (np.load(kept, allow_pickle=False), np.load(tail, allow_pickle=False)) if kept.exists() else None

    def restore_tracer(self, tracer: StepTracer) -> None:
        if self.trace is not None:
            tracer.restore(*self.trace, self.meta.get("trace", {}))

    def resumed(self) -> list[dict[str, Any]]:
        """The resumes so far, this one last (the record's ``training.resumed`` points)."""
        point = {"from_epoch": self.meta.get("epoch"), "from_step": self.meta.get("step"), "at": utcnow()}
        return [*self.meta.get("resumed", []), point]


def read_checkpoint(checkpoint_dir: Path) -> Checkpoint:
    """The newest checkpoint in ``checkpoint_dir`` (a staging directory's ``checkpoint/``)."""
    latest = latest_checkpoint(checkpoint_dir.parent)
    if latest is None:
        raise ResumeError(f"no checkpoint in {checkpoint_dir}: start the training afresh (without resume)")
    return Checkpoint(latest)


def resumed_record(points: list[dict[str, Any]]) -> Any:
    """The record's ``training.resumed`` for the resume ``points`` (None when never resumed)."""
    from reprodl.provenance.record import Resumed

    if not points:
        return None
    return Resumed(
        count=len(points),
        from_epoch=[int(p.get("from_epoch") or 0) for p in points],
        from_step=[int(p.get("from_step") or 0) for p in points],
        at=[str(p["at"]) for p in points],
    )


# --- configs -------------------------------------------------------------------------------
def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def config_changes(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """The differences of ``now`` from ``saved``, one ``key: old -> new`` each (dotted keys)."""
    a, b = _flatten(json.loads(json.dumps(saved))), _flatten(json.loads(json.dumps(now)))
    missing = "(absent)"
    return [
        f"{k}: {json.dumps(a.get(k, missing))} -> {json.dumps(b.get(k, missing))}".replace('"(absent)"', missing)
        for k in sorted(set(a) | set(b))
        if a.get(k, missing) != b.get(k, missing)
    ]


def check_unchanged(saved: dict[str, Any], now: dict[str, Any], *, name: str, where: Any) -> None:
    """Refuse a resume whose config differs from the checkpoint's, naming each change."""
    changes = config_changes(saved, now)
    if changes:
        raise ResumeError(
            f"cannot resume {name!r}: the config changed since the checkpoint at {where} was written ("
            + "; ".join(changes[:10])
            + (f"; and {len(changes) - 10} more" if len(changes) > 10 else "")
            + "). Put the config back as it was to resume, or start afresh without --resume"
        )
