"""The step trace: after every optimiser step, an exact digest of the training state.

Each traced step is one row of a NumPy structured array (:func:`row_dtype`), stored as the
item ``trace.npy`` of the model dataset and covered by the record (``results.trace``, with its
sha256 and its ``kind``). A row of the ``words`` kind (written since record format 1.3; the
``exact`` kind of format 1.2 has the same columns) holds:

* ``step``: the global optimiser step (from 1); ``epoch`` and ``batch``: where it happened
  (from 1; 0 when unknown, as in a user's own loop);
* ``loss``: the loss of the step's last batch (NaN when not known);
* ``indices``: the first 8 bytes of the sha256 of the sample indices (int64) the step's
  batches held, in order (0 when unknown);
* ``inputs``: the digest of the step's input batches (0 when unknown);
* ``optimizer``: the digest of every optimiser's state (momentum buffers, Adam's moments and
  step counts...), 0 when there is none;
* ``rng`` (``words`` only): the BLAKE2b (8 bytes) of the global random generators' state after
  the step: evidence for a divergence's cause, not part of the state compared;
* ``digest``: per tensor of the model (parameters, then buffers), its digest.

A ``words`` digest (:mod:`reprodl.training.worddigest`) is the XOR of the tensor's bytes taken
as 64-bit words; an ``exact`` one is ``torch.hash_tensor``: the XOR of every element's bits
upcast to 64 bits. Either is exact (no rounding) and independent of the order of reduction, and
a change in any one element changes it. The optimiser's per-tensor digests are combined with a
fixed odd multiplier per position. XOR cannot see changes that cancel exactly: two elements of
one tensor exchanging their values, or an even number of equal elements changing to the same
new value.

Records written before format 1.2 have traces of the ``sampled`` kind: ``contents`` (the float64
sum of the inputs) instead of ``inputs`` and ``optimizer``, and as ``fingerprint`` per parameter
tensor the float64 sum of :data:`SAMPLE` elements chosen by a generator seeded with
:data:`SAMPLE_SEED`. They are still read, and a re-run of such a record traces the same kind (as
does a re-run of an ``exact`` one).

What a step does is kept small (each call just after the training's compute runs with cold
caches): the inputs digest in one call as the batch is noted, the sample indices kept as they
are, the state's per-tensor digests in a few calls; the indices' sha256, the rows and the losses
are put together when the buffered rows are flushed, every :data:`CHUNK` steps (a model on an
accelerator: its digests kept on the device, copied to the host then, one synchronisation). A
comparison (``on_step``) flushes every step instead.

Size: 56 + 8 x (number of tensors) bytes per step (exact: 48 + 8 x; sampled: 40 + 8 x parameter tensors).
Every step is kept up to ``max_rows`` steps (:func:`max_rows`: 100,000, fewer for models of
many tensors, so a trace stays under :data:`MAX_BYTES`); after that every ``stride``-th step is
kept, the stride doubling each time the thinned part reaches ``max_rows`` again.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch

from reprodl import keys
from reprodl.training.oplog import OpLogger, bounded_jsonl, item_name, oplog_off, oplog_steps, renamed
from reprodl.training.statedigest import Staged, StateDigests, as_numpy, combined, resolve, tensor_digest, zero
from reprodl.training.tracefiles import TraceKind, trace_kind  # noqa: F401 - trace_kind: imported from here too
from reprodl.training.worddigest import WordLayout, inputs_digest, rng_digests, rng_states, word_digest

KIND: TraceKind = "words"
SAMPLE = 64
SAMPLE_SEED = 20_240_601
CHUNK = 1024
MAX_STEPS = 100_000
MAX_BYTES = 64 * 1024 * 1024
FIRST_STRIDE = 10
# step 8, epoch 4, batch 4, loss 8, indices 8 (+ inputs 8, optimizer 8 for the digests' kinds; + rng 8: words)
_FIXED_BYTES = {"words": 56, "exact": 48, "sampled": 40}


def row_dtype(n_tensors: int, kind: TraceKind = KIND) -> np.dtype[Any]:
    """The dtype of one trace row of ``kind`` for a model of ``n_tensors`` traced tensors."""
    head = [("step", "<i8"), ("epoch", "<i4"), ("batch", "<i4"), ("loss", "<f8"), ("indices", "<u8")]
    if kind == "sampled":
        return np.dtype([*head, ("contents", "<f8"), ("fingerprint", "<f8", (n_tensors,))])
    rng = [("rng", "<u8")] if kind == "words" else []
    return np.dtype([*head, ("inputs", "<u8"), ("optimizer", "<u8"), *rng, ("digest", "<u8", (n_tensors,))])


def bytes_per_step(n_tensors: int, kind: TraceKind = KIND) -> int:
    """Bytes one traced step takes in ``trace.npy``."""
    return _FIXED_BYTES[kind] + 8 * n_tensors


def max_rows(n_tensors: int, kind: TraceKind = KIND) -> int:
    """Steps kept one by one before thinning: 100,000, or fewer so the trace stays under MAX_BYTES / 2."""
    return max(1000, min(MAX_STEPS, MAX_BYTES // 2 // bytes_per_step(n_tensors, kind)))


@dataclasses.dataclass
class _Pending:
    """What the batches since the last optimiser step contributed: their indices and inputs."""

    indices: list[Any] = dataclasses.field(default_factory=list)  # digested at the flush (no call a step)
    inputs: list[Any] = dataclasses.field(default_factory=list)

    def reset(self) -> None:
        self.indices, self.inputs = [], []


StepCallback = Callable[[np.ndarray], bool]


class StepTracer:
    """Digests the training state after each optimiser step (see the module docstring).

    Args:
        model: the model whose tensors are traced (named parameters, then named buffers, in order).
        optimizers: the optimisers whose state is traced with it.
        on_step: called with each row (a 1-element array of :func:`row_dtype`) as it is made;
            returning True asks the training to stop (``stop_requested``). When it has a
            ``kind`` attribute (a :class:`reprodl.reproduction.divergence.TraceComparer`), the
            trace is of that kind, so that it compares with the recorded one.
        kind: ``exact`` (the default), or ``sampled`` to re-run a record of that older kind.
        oplog: the optimiser steps whose operations are logged (:mod:`reprodl.training.oplog`);
            default :func:`~reprodl.training.oplog.oplog_steps` (the first). A step's log runs from
            its first :meth:`batch` to its :meth:`step`; when ``on_step`` has a ``note_oplog``
            method it gets ``(step, entries)`` as each log ends. ``oplog_every`` (set by a training
            with checkpoints: the optimiser steps between two) logs each step before a checkpoint
            too. Kept: at most ``keys.MAX_OPLOG_STEPS`` logs within ``keys.MAX_OPLOG_BYTES`` (the
            first step's and the latest).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        optimizers: Iterable[torch.optim.Optimizer] = (),
        on_step: StepCallback | None = None,
        kind: TraceKind | None = None,
        oplog: Sequence[int] | None = None,
    ) -> None:
        self.oplog_steps = set(oplog_steps() if oplog is None else oplog)
        self.oplog_steps |= set(getattr(on_step, "recorded_oplogs", None) or ())  # a re-run: the recorded ones
        self.oplog_every: int | None = None
        self.module_names: dict[str, str] = {}  # the op log's names of wrapped modules: shown as the original's
        self.oplog_below: int | None = None  # no checkpoint at this step or later (the built-in trainer's last epoch)
        self._oplogger: OpLogger | None = None
        self._oplogs: dict[int, tuple[bytes, int, float]] = {}  # step: (jsonl, operations, seconds)
        self.kind: TraceKind = kind or getattr(on_step, "kind", None) or KIND
        named = list(model.named_parameters())
        self._params = [p for _, p in named]
        self._buffers: list[tuple[torch.nn.Module, str]] = []
        self.names = [n for n, _ in named]
        if self.kind != "sampled":  # buffers are looked up each step: a module may replace one
            modules = dict(model.named_modules())
            for name, _ in model.named_buffers():
                owner, _, attr = name.rpartition(".")
                self._buffers.append((modules[owner], attr))
                self.names.append(name)
        self._optimizers = list(optimizers)
        self._samples: list[torch.Tensor] = []
        if self.kind == "sampled":
            g = torch.Generator().manual_seed(SAMPLE_SEED)
            self._samples = [torch.randperm(p.numel(), generator=g)[:SAMPLE] for p in self._params]
        self._on_device: dict[torch.device, list[torch.Tensor]] = {}
        self._device = self._params[0].device if self._params else torch.device("cpu")
        self._state = self._state_digests()
        self.dtype = row_dtype(len(self.names), self.kind)
        self.max_rows = max_rows(len(self.names), self.kind)
        self.on_step = on_step
        self.stop_requested = False
        self.n_steps = 0
        self._chunk = 1 if on_step is not None else CHUNK
        self._values: list[Any] = []  # per buffered step: (inputs, staged state digests), or the fingerprints
        self._rng: list[tuple[torch.Tensor, ...]] = []  # per buffered step (words): the random generators' states
        self._losses: list[Any] = []
        self._meta: list[tuple[int, int, int, list[Any]]] = []  # (step, epoch, batch, the batches' indices)
        self._kept: list[np.ndarray] = []  # chunks of rows
        self._n_kept = 0
        self._tail: list[np.ndarray] = []
        self.stride = FIRST_STRIDE
        self._pending = _Pending()
        self._batched = False  # whether batch() was ever called

    # --- what the training calls -----------------------------------------------------------
    def batch(self, *, indices: Sequence[int] | torch.Tensor | None = None, inputs: Any = None) -> None:
        """Note a batch the next optimiser step learns from: its sample indices and its inputs."""
        p = self._pending
        self._batched = True  # the loop's batches are noted here: a forward pass's inputs are not the step's
        if self._oplogger is not None:
            self._oplogger.paused = True
        if indices is not None:
            p.indices.append(indices)
        if isinstance(inputs, torch.Tensor):
            if self.kind != "sampled":
                p.inputs.append(self._inputs_digest(inputs))
            else:
                p.inputs.append(inputs.detach().sum(dtype=torch.float64))
        if self._oplogger is not None:
            self._oplogger.paused = False
        else:
            self._start_oplog_if_due()

    def forward(self, inputs: torch.Tensor | None = None) -> None:
        """A watched model's forward pass with gradients (``inputs``: its first argument, a tensor), for a loop
        that draws its own batches or steps a closure optimiser (no :meth:`batch`): the first such pass of a
        step gives the step's inputs digest, and starts its operation log when it is a step to log."""
        if self._batched:  # the loop's batches are noted, and start the logs
            return
        if self.kind != "sampled" and inputs is not None and not self._pending.inputs:
            if self._oplogger is not None:
                self._oplogger.paused = True
            self._pending.inputs.append(self._inputs_digest(inputs))
            if self._oplogger is not None:
                self._oplogger.paused = False
        if self._oplogger is None:
            self._start_oplog_if_due()

    def _start_oplog_if_due(self) -> None:
        """Start logging the next step's operations when it is one to log (none running)."""
        if self._wants_oplog(self.n_steps + 1):
            self._oplogger = OpLogger.new(self.n_steps + 1).start()

    def _wants_oplog(self, step: int) -> bool:
        """Whether ``step`` (not yet logged) is one to log: a named one, or the step before a checkpoint."""
        if step in self._oplogs:
            return False
        every = self.oplog_every
        if every and step % every == 0 and (self.oplog_below is None or step < self.oplog_below) and not oplog_off():
            return True
        return step in self.oplog_steps

    def step(self, *, loss: torch.Tensor | float | None = None, epoch: int = 0, batch: int = 0) -> None:
        """Record the training state as it is after an optimiser step."""
        self._end_oplog()
        self.n_steps += 1
        self._values.append(self._sampled_values() if self.kind == "sampled" else self._exact_values())
        if self.kind == "words":
            self._rng.append(rng_states(self._device))
        self._losses.append(loss.detach() if isinstance(loss, torch.Tensor) else loss)
        self._meta.append((self.n_steps, epoch, batch, self._pending.indices))
        self._pending.reset()
        if len(self._meta) >= self._chunk:
            self.flush()

    def flush(self) -> None:
        """Copy the buffered rows to the host (one synchronisation), keeping them as the bound allows."""
        if not self._meta:
            return
        rows = np.zeros(len(self._meta), dtype=self.dtype)
        meta = np.array([m[:3] for m in self._meta], dtype=np.int64)
        rows["step"], rows["epoch"], rows["batch"] = meta[:, 0], meta[:, 1], meta[:, 2]
        rows["indices"] = np.array([_indices_digest(m[3]) for m in self._meta], dtype="<u8")
        rows["loss"] = _as_floats(self._losses)
        if self.kind != "sampled":
            models, optimizers = resolve([v[1] for v in self._values])
            rows["inputs"] = _host([v[0] for v in self._values])
            if self.kind == "words":
                rows["rng"] = rng_digests(self._rng)
                self._rng = []
            rows["optimizer"], rows["digest"] = _host(optimizers), _host(models)
        else:
            values = _host(self._values)
            rows["contents"], rows["fingerprint"] = values[:, 0].view(np.float64), values[:, 1:].view(np.float64)
        self._values, self._losses, self._meta = [], [], []
        room = 0 if self.on_step is not None else max(0, min(len(rows), self.max_rows - self._n_kept))
        if room:  # kept as they are, in one chunk (nothing to compare them with)
            self._kept.append(rows[:room])
            self._n_kept += room
        for i in range(room, len(rows)):
            self._keep(rows[i : i + 1])

    def _end_oplog(self) -> None:
        """End the running operation log (its step has taken its optimiser step) and keep it."""
        logger, self._oplogger = self._oplogger, None
        if logger is None:
            return
        logger.stop()
        entries = renamed(logger.entries(), self.module_names)
        data, n = bounded_jsonl(entries, keys.MAX_OPLOG_BYTES // 2)
        self._oplogs[logger.step] = (data, n, logger.seconds)
        self._bound_oplogs()
        note = getattr(self.on_step, "note_oplog", None)
        if note is not None:
            note(logger.step, entries)

    def _bound_oplogs(self) -> None:
        """Drop the oldest logs but the first step's while more than ``MAX_OPLOG_STEPS`` or ``MAX_OPLOG_BYTES``."""
        while len(self._oplogs) > 1 and (
            len(self._oplogs) > keys.MAX_OPLOG_STEPS
            or sum(len(d) for d, _, _ in self._oplogs.values()) > keys.MAX_OPLOG_BYTES
        ):
            del self._oplogs[sorted(self._oplogs)[1]]

    def close(self) -> None:
        """Leave an operation log still running (a training that ended or failed inside a logged step)."""
        logger, self._oplogger = self._oplogger, None
        if logger is not None:
            logger.stop()

    def oplog_items(self) -> dict[str, bytes]:
        """The operation logs, by model-dataset item (``oplog/step-<n>.jsonl``)."""
        self.close()
        return {item_name(step): data for step, (data, _, _) in sorted(self._oplogs.items())}

    # --- the result --------------------------------------------------------------------------
    def rows(self) -> np.ndarray:
        """Every kept row, in step order."""
        self.close()
        self.flush()
        parts = self._kept + self._tail
        return np.concatenate(parts) if parts else np.zeros(0, dtype=self.dtype)

    def last_step_with(self, digests: dict[str, int]) -> int | None:
        """The last kept step after which the named tensors had these digests (:meth:`digest` values, as int64
        or uint64); None when no kept step had them all (or the trace is sampled)."""
        if self.kind == "sampled" or not digests or not set(digests) <= set(self.names):
            return None
        self.flush()
        parts = self._kept + self._tail
        if not parts:
            return None
        rows = np.concatenate(parts)
        columns = [self.names.index(n) for n in digests]
        want = np.array([d & (2**64 - 1) for d in digests.values()], dtype=np.uint64)
        hits = np.flatnonzero((rows["digest"][:, columns] == want).all(axis=1))
        return int(rows["step"][hits[-1]]) if hits.size else None

    def to_bytes(self) -> bytes:
        """``trace.npy``: the kept rows as a NumPy file (no pickle)."""
        import io

        out = io.BytesIO()
        np.save(out, self.rows(), allow_pickle=False)
        return out.getvalue()

    def description(self) -> dict[str, Any]:
        """The record's ``results.trace`` fields known before writing (item and sha256 come then)."""
        rows = self.rows()
        sampled = self.kind == "sampled"
        return {
            "kind": self.kind,
            "n_steps": self.n_steps,
            "n_rows": int(len(rows)),
            "bytes_per_step": bytes_per_step(len(self.names), self.kind),
            "tensors": list(self.names),
            "optimizers": [type(o).__name__ for o in self._optimizers] if not sampled else [],
            "sample": SAMPLE if sampled else 0,
            "sample_seed": SAMPLE_SEED if sampled else 0,
            "every_step_up_to": self.max_rows,
            "stride": self.stride if self._tail else 1,
            "oplog": None
            if not self._oplogs
            else [
                {
                    "step": step,
                    "item": item_name(step),
                    "sha256": "sha256:" + hashlib.sha256(data).hexdigest(),
                    "n_ops": n,
                    "bytes": len(data),
                    "seconds": round(seconds, 6),
                }
                for step, (data, n, seconds) in sorted(self._oplogs.items())
            ],
        }

    def state(self) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """(kept rows, thinned rows, counters): what a checkpoint stores to :meth:`restore` this tracer
        (the counters hold the operation logs made so far, so a resumed run's record keeps them)."""
        self.flush()
        empty = np.zeros(0, dtype=self.dtype)
        kept = np.concatenate(self._kept) if self._kept else empty
        tail = np.concatenate(self._tail) if self._tail else empty
        logs = {str(k): [data.decode(), n, seconds] for k, (data, n, seconds) in self._oplogs.items()}
        return kept, tail, {"n_steps": self.n_steps, "stride": self.stride, "oplogs": logs, "kind": self.kind}

    def restore(self, kept: np.ndarray, tail: np.ndarray, counters: dict[str, Any]) -> None:
        """Continue from a checkpoint's :meth:`state` (rows of the same model's tensors), in its digests' kind (a
        checkpoint written before the ``words`` kind holds ``exact`` rows: the resumed steps are digested so too)."""
        kind = counters.get("kind", "exact")
        if self.kind != "sampled" and kind in ("words", "exact") and kind != self.kind:
            self.kind = kind
            self.dtype, self.max_rows = row_dtype(len(self.names), kind), max_rows(len(self.names), kind)
            self._state = self._state_digests()
        if kept.dtype != self.dtype or tail.dtype != self.dtype:
            raise ValueError(f"the checkpoint's step trace has rows of {kept.dtype}, this model's are {self.dtype}")
        self._meta, self._values, self._losses, self._pending, self._rng = [], [], [], _Pending(), []
        self._kept, self._n_kept = [kept], len(kept)
        self._tail = [tail[i : i + 1] for i in range(len(tail))]
        self.n_steps, self.stride = int(counters.get("n_steps", len(kept))), int(counters.get("stride", FIRST_STRIDE))
        logs = counters.get("oplogs") or {}
        self._oplogs = {int(k): (str(v[0]).encode(), int(v[1]), float(v[2])) for k, v in logs.items()}

    # --- internals ---------------------------------------------------------------------------
    def digest(self, t: torch.Tensor) -> torch.Tensor:
        """A tensor's digest of this trace's kind (``words`` or ``exact``), as in its rows."""
        return word_digest(t) if self.kind == "words" else tensor_digest(t)

    def _inputs_digest(self, t: torch.Tensor) -> Any:
        return inputs_digest(t) if self.kind == "words" else tensor_digest(t)

    def _state_digests(self) -> StateDigests:
        layout = WordLayout if self.kind == "words" else None
        return StateDigests(self._params, self._buffers, self._optimizers, self._device, layout)

    def _exact_values(self) -> tuple[Any, Staged]:
        """(inputs digest, the state's digests as :meth:`StateDigests.stage` gives them) (uint64), on the
        first parameter's device or the host; put together at :meth:`flush`."""
        inputs = self._pending.inputs
        device = self._device
        return (combined(inputs, device) if inputs else zero(device)), self._state.stage()

    def _sampled_values(self) -> torch.Tensor:
        """[contents, fingerprint per parameter tensor] (float64, as the older records' trace)."""
        device = self._params[0].device if self._params else torch.device("cpu")
        contents = self._pending.inputs
        total = sum(contents[1:], contents[0]) if contents else torch.tensor(float("nan"), dtype=torch.float64)
        values = [total.to(device), *(self._fingerprint(p, i) for i, p in enumerate(self._params))]
        return torch.stack(values).view(torch.uint64)

    def _fingerprint(self, p: torch.Tensor, i: int) -> torch.Tensor:
        samples = self._on_device.get(p.device)
        if samples is None:
            samples = self._on_device[p.device] = [s.to(p.device) for s in self._samples]
        return p.detach().reshape(-1).index_select(0, samples[i]).sum(dtype=torch.float64)

    def _keep(self, row: np.ndarray) -> None:
        if self.on_step is not None and self.on_step(row):
            self.stop_requested = True
        if self._n_kept < self.max_rows:
            self._kept.append(row)
            self._n_kept += 1
            return
        step = int(row["step"][0])
        if (step - self.max_rows) % self.stride:
            return
        self._tail.append(row)
        if len(self._tail) >= self.max_rows:
            self.stride *= 2
            self._tail = [r for r in self._tail if (int(r["step"][0]) - self.max_rows) % self.stride == 0]


def _host(values: list[Any]) -> np.ndarray:
    """Each step's values stacked on the host (one copy from each device; NumPy ones as they are)."""
    if not all(isinstance(v, torch.Tensor) for v in values):
        arrays = [as_numpy(v) for v in values]
        if arrays[0].ndim == 0:
            return np.array(arrays, dtype=np.uint64)
        return np.concatenate(arrays).reshape(len(arrays), arrays[0].size)
    if len(values) == 1:
        return values[0].cpu().numpy()[None]
    try:
        return torch.stack(values).cpu().numpy()
    except RuntimeError:  # on several devices (the inputs' digests on theirs)
        return torch.stack([v.cpu() for v in values]).numpy()


def _indices_digest(pieces: list[Any]) -> int:
    """The first 8 bytes of the sha256 of a step's batches' sample indices (int64, in order); 0: none noted."""
    if not pieces:
        return 0
    hasher = hashlib.sha256()
    for indices in pieces:
        hasher.update(_index_bytes(indices))
    return int.from_bytes(hasher.digest()[:8], "little")


def _index_bytes(indices: Sequence[int] | torch.Tensor) -> bytes:
    """The sample indices as little-endian int64 bytes (a CPU int64 tensor without a list made of it)."""
    if isinstance(indices, torch.Tensor) and indices.dtype == torch.int64 and indices.device.type == "cpu":
        return indices.detach().numpy().astype("<i8", copy=False).tobytes()
    data = indices.tolist() if isinstance(indices, torch.Tensor) else indices
    return np.asarray(data, dtype="<i8").tobytes()


def _as_floats(losses: list[Any]) -> np.ndarray:
    """The steps' losses as float64 (NaN when unknown or not one number); one copy from the device."""
    if losses and all(isinstance(x, torch.Tensor) and x.dim() == 0 for x in losses):
        try:
            return torch.stack(losses).double().cpu().numpy()
        except RuntimeError:  # on several devices or of several dtypes: one by one below
            pass
    return np.array([_as_float(x) for x in losses], dtype=np.float64)


def _as_float(loss: Any) -> float:
    """A step's loss as a float (NaN when unknown or not one number)."""
    if loss is None:
        return float("nan")
    if isinstance(loss, torch.Tensor):
        return float(loss.double().reshape(-1)[0]) if loss.numel() == 1 else float("nan")
    return float(loss)
