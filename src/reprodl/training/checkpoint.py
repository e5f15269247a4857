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
all but the newest two (``keys.CHECKPOINTS_KEPT``) are removed: a kill at any moment leaves
the previous checkpoint or the new one, and a write that fails (a full disk) stops the
training with :class:`~reprodl.errors.CheckpointWriteError`, the previous checkpoint kept.
``resume`` finds the staging directory a killed run of the same name and base left
(:func:`reprodl.store.find_resumable`), refuses when the config changed (naming the change),
restores every state and continues; the record's ``training.resumed`` says from where. It
passes over a damaged newest checkpoint (naming it in a warning) and continues from the one
before; a failed resume keeps every checkpoint.

Example:
    >>> changes = config_changes({"params": {"lr": 0.1}}, {"params": {"lr": 0.2}})
    >>> changes
    ['params.lr: 0.1 -> 0.2']
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import pickle
import random
import secrets
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, cast

import numpy as np
import torch

from reprodl import keys
from reprodl.errors import CheckpointWriteError, ReprodlError, ReprodlWarning, ResumeError
from reprodl.store.staging import fsync_dir, list_checkpoints, read_checkpoint_meta, rename_noreplace
from reprodl.training.trace import StepTracer

FORMAT = keys.CHECKPOINT_FORMAT
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
    """Write one checkpoint atomically under ``directory``, keep the newest few, and return its path.

    Raises:
        CheckpointWriteError: it could not be written (a full disk, a file size limit), naming
            it and the previous checkpoint, which is kept.
    """
    final = directory / f"ckpt-{step:012d}"
    tmp = directory / f".tmp-{secrets.token_hex(6)}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        _write_files(tmp, state, meta, tracer)
        if final.exists():  # an unusable checkpoint a resume passed over
            shutil.rmtree(final)
        rename_noreplace(tmp, final)
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _not_written(exc, final, step=step) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(str(directory))
    done = list_checkpoints(directory.parent)
    kept = [p for p in done if p.name <= final.name][: keys.CHECKPOINTS_KEPT]
    for old in done:  # older ones, and newer unusable ones a resume passed over
        if old not in kept:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _write_files(tmp: Path, state: dict[str, Any], meta: dict[str, Any], tracer: Any) -> None:
    """A checkpoint's files, written into ``tmp`` and flushed to disk."""
    with open(tmp / STATE_FILE, "wb") as fh:
        out = _KeepWriteError(fh)
        try:
            torch.save(state, cast(IO[bytes], out))
        except Exception:
            if out.error is not None:  # torch reports a failed write (a full disk) as "unexpected pos"
                raise out.error from None
            raise
    if tracer is not None:
        kept, tail, counters = tracer.state()
        np.save(tmp / TRACE_KEPT, kept, allow_pickle=False)
        np.save(tmp / TRACE_TAIL, tail, allow_pickle=False)
        meta = {**meta, "trace": counters}
    (tmp / keys.CHECKPOINT_META).write_text(json.dumps({"format": FORMAT, **meta}, allow_nan=True))
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())


class _KeepWriteError:
    """A binary file for ``torch.save`` that keeps the OSError of a failed write (torch hides its errno)."""

    def __init__(self, fh: Any) -> None:
        self.fh = fh
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return int(self.fh.write(data))
        except OSError as exc:
            self.error = self.error or exc
            raise

    def flush(self) -> None:
        self.fh.flush()


def _not_written(exc: Exception, final: Path, *, step: int) -> CheckpointWriteError:
    """The error of a checkpoint that could not be written: why, and the previous one, kept."""
    why = exc.strerror if isinstance(exc, OSError) and exc.strerror else _first_line(exc)
    where = f" ({exc.filename})" if isinstance(exc, OSError) and exc.filename else ""
    previous = next((p for p in list_checkpoints(final.parent.parent) if p.name < final.name), None)
    if previous is None:
        kept = "No earlier checkpoint exists: fix the cause (free some space) and start the training again"
    else:
        kept = (
            f"The training stopped; the previous checkpoint {previous} is kept: fix the cause (free some space, "
            "or raise the file size limit) and resume it (`reprodl train CONFIG --resume`, or resume=True)"
        )
    return CheckpointWriteError(f"could not write the checkpoint {final} (step {step}): {why}{where}. {kept}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0][:200] if text else "") or type(exc).__name__


class Checkpoint:
    """A checkpoint read back: ``meta`` (JSON), ``state`` (tensors) and the step trace's rows.

    Raises:
        ResumeError: a part of it is missing or unreadable (naming which and why).
    """

    def __init__(self, path: Path) -> None:
        meta = read_checkpoint_meta(path)
        if meta is None or meta.get("format") != FORMAT:
            raise ResumeError(f"its {keys.CHECKPOINT_META} is missing, unreadable or not of format {FORMAT}")
        problem = meta_problem(meta)
        if problem is not None:
            raise ResumeError(f"its {keys.CHECKPOINT_META} {problem}")
        self.path, self.meta = path, meta
        try:
            self.state: dict[str, Any] = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise ResumeError(
                f"its {STATE_FILE} holds more than tensors (torch.load(weights_only=True) refuses it)"
            ) from None
        except Exception as exc:
            raise ResumeError(f"its {STATE_FILE} cannot be read: {_first_line(exc)}") from exc
        missing = [k for k in ("model", "optimizer", "rng") if not isinstance(self.state, dict) or k not in self.state]
        if missing:
            raise ResumeError(f"its {STATE_FILE} lacks {', '.join(missing)}: it is not a checkpoint reprodl wrote")
        kept, tail = path / TRACE_KEPT, path / TRACE_TAIL
        try:
            self.trace = (
                (np.load(kept, allow_pickle=False), np.load(tail, allow_pickle=False)) if kept.exists() else None
            )
        except Exception as exc:
            raise ResumeError(f"its step trace cannot be read: {_first_line(exc)}") from exc

    def restore_tracer(self, tracer: StepTracer) -> None:
        if self.trace is not None:
            tracer.restore(*self.trace, self.meta.get("trace", {}))

    def resumed(self) -> list[dict[str, Any]]:
        """The resumes so far, this one last (the record's ``training.resumed`` points)."""
        point = {"from_epoch": self.meta.get("epoch"), "from_step": self.meta.get("step"), "at": utcnow()}
        skip = skipped_restore()
        if skip is not None:
            point["skipped_restore"] = skip
        return [*self.meta.get("resumed", []), point]


SKIPPABLE_RESTORES = ("rng", "loader", "optimizer")


def skipped_restore() -> str | None:
    """The restore a resume leaves out on purpose (``REPRODL_SKIP_RESTORE``): a negative control, test-only.

    ``rng`` (the random generators' states), ``loader`` (the training loader's generator and
    position) or ``optimizer`` (its state: momentum buffers, step counts); the record's
    ``training.resumed.skipped_restore`` names it, so such a model is never taken for a true resume.
    """
    value = os.environ.get(keys.SKIP_RESTORE_ENV, "").strip().lower()
    if not value:
        return None
    if value not in SKIPPABLE_RESTORES:
        raise ResumeError(
            f"{keys.SKIP_RESTORE_ENV}={value!r} names no restore: use one of {', '.join(SKIPPABLE_RESTORES)} "
            "(a negative control for tests), or unset it"
        )
    return value


def meta_problem(meta: dict[str, Any]) -> str | None:
    """What is wrong with the counters and lists of a checkpoint's meta (None: each is what a resume reads).

    Checked before anything is restored, so a damaged newest checkpoint is passed over for the one
    before instead of failing the resume part-way.
    """
    from pydantic import ValidationError

    from reprodl.provenance.record import EpochMetrics

    for name in ("epoch", "step", "batch"):
        value = meta.get(name, 0 if name == "batch" else None)
        if type(value) is not int or not 0 <= value <= keys.MAX_CHECKPOINT_COUNTER:
            return f"{name} is {str(value)[:40]!r}, not a whole number from 0 to {keys.MAX_CHECKPOINT_COUNTER:,}"
    elapsed = meta.get("elapsed_s", 0.0)
    if type(elapsed) not in (int, float) or not 0 <= elapsed < float("inf"):
        return f"elapsed_s is {str(elapsed)[:40]!r}, not a number of seconds"
    for name, kind in (("history", dict), ("order_digests", str), ("resumed", dict), ("logged", dict)):
        values = meta.get(name, [])
        if not isinstance(values, list) or not all(isinstance(v, kind) for v in values):
            return f"{name} is not a list of {kind.__name__} values"
    for i, metrics in enumerate(meta.get("history", [])):
        try:
            EpochMetrics.model_validate(metrics)
        except ValidationError as exc:
            return f"history[{i}] is not an epoch's metrics ({exc.errors()[0]['loc']}: {exc.errors()[0]['msg']})"
    return _oplogs_problem(meta)


def _oplogs_problem(meta: dict[str, Any]) -> str | None:
    """What is wrong with the operation logs a checkpoint's trace counters carry (None: none, or each as written)."""
    trace = meta.get("trace", {})
    logs = trace.get("oplogs", {}) if isinstance(trace, dict) else None
    if not isinstance(logs, dict) or len(logs) > keys.MAX_OPLOG_STEPS:
        return f"trace.oplogs is not a mapping of at most {keys.MAX_OPLOG_STEPS} operation logs"
    for step, log in logs.items():
        fine = isinstance(log, list) and len(log) == 3 and isinstance(log[0], str) and type(log[1]) is int
        if not (str(step).isdigit() and fine and type(log[2]) in (int, float)):
            return f"trace.oplogs[{str(step)[:20]!r}] is not [operation log, operations, seconds]"
    return None


@contextlib.contextmanager
def restoring(checkpoint: Checkpoint) -> Iterator[None]:
    """Turn a failure to restore ``checkpoint``'s states (of another shape) into a ResumeError, which keeps it."""
    try:
        yield
    except ReprodlError:
        raise
    except Exception as exc:
        raise ResumeError(
            f"the checkpoint {checkpoint.path} cannot be restored ({_first_line(exc)}). It is kept: start the "
            "training afresh without --resume (`reprodl dataset clean BASE --checkpoints` removes it)"
        ) from exc


def read_checkpoint(checkpoint_dir: Path) -> Checkpoint:
    """The newest usable checkpoint in ``checkpoint_dir`` (a staging directory's ``checkpoint/``).

    A newer one that cannot be read (damaged on disk) is passed over, named in a
    :class:`~reprodl.errors.ReprodlWarning`, and kept until the resumed training replaces it.

    Raises:
        ResumeError: there is no checkpoint, or none is usable (naming each and why; all are kept).
    """
    found = list_checkpoints(checkpoint_dir.parent)
    if not found:
        raise ResumeError(f"no checkpoint in {checkpoint_dir}: start the training afresh (without resume)")
    unusable = []
    for path in found:
        try:
            checkpoint = Checkpoint(path)
        except ResumeError as exc:
            unusable.append(f"the checkpoint {path} is unusable ({exc})")
            continue
        if unusable:
            where = f"epoch {checkpoint.meta.get('epoch')}, step {checkpoint.meta.get('step')}"
            warnings.warn(f"{'; '.join(unusable)}; resumed from {path} ({where}), the one before", ReprodlWarning, 2)
        return checkpoint
    raise ResumeError(
        f"no usable checkpoint in {checkpoint_dir}: {'; '.join(unusable)}. They are kept: start the training "
        "afresh without --resume (`reprodl dataset clean BASE --checkpoints` removes them)"
    )


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
        skipped_restore=[str(p["skipped_restore"]) for p in points if p.get("skipped_restore")] or None,
    )


# --- configs -------------------------------------------------------------------------------
def _flatten(value: Any, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """Every leaf of a JSON config by its path of keys (a tuple: ``{"a.b": 1}`` and ``{"a": {"b": 1}}`` differ)."""
    if isinstance(value, dict) and value:
        out: dict[tuple[str, ...], Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, (*path, str(k))))
        return out
    return {path: value}


def _dotted(path: tuple[str, ...]) -> str:
    """A path of keys as dotted text; a key holding a dot (or empty) quoted, so that no two paths read alike."""
    return ".".join(k if k and "." not in k and not k.startswith("[") else json.dumps([k]) for k in path)


def config_changes(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """The differences of ``now`` from ``saved``, one ``key: old -> new`` each (dotted keys)."""
    a, b = _flatten(json.loads(json.dumps(saved))), _flatten(json.loads(json.dumps(now)))
    missing = "(absent)"
    return [
        f"{_dotted(k)}: {json.dumps(a.get(k, missing))} -> {json.dumps(b.get(k, missing))}".replace(
            '"(absent)"', missing
        )
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
