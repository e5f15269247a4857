"""The step trace: after every optimiser step, a cheap fingerprint of the parameters.

Each traced step is one row of a NumPy structured array (:data:`row_dtype`), stored as the
item ``trace.npy`` of the model dataset and covered by the record (``results.trace``, with its
sha256). A row holds:

* ``step``: the global optimiser step (from 1); ``epoch`` and ``batch``: where it happened
  (from 1; 0 when unknown, as in a user's own loop);
* ``loss``: the loss of the step's last batch (NaN when not known);
* ``indices``: the first 8 bytes of the sha256 of the sample indices (int64) the step's
  batches held, in order (0 when unknown);
* ``contents``: the float64 sum of the step's input batches (NaN when unknown);
* ``fingerprint``: per parameter tensor, the float64 sum of a fixed sample of at most
  :data:`SAMPLE` of its elements, chosen by a generator seeded with :data:`SAMPLE_SEED`.

The fingerprints and losses are written into a preallocated buffer on the parameters' device
and copied to the host every :data:`CHUNK` steps (one synchronisation), so tracing costs no
per-step synchronisation. A comparison (``on_step``) flushes every step instead.

Size: 40 + 8 x (number of parameter tensors) bytes per step. Every step is kept up to
``max_rows`` steps (:func:`max_rows`: 100,000, fewer for models of many tensors, so a trace
stays under :data:`MAX_BYTES`); after that every ``stride``-th step is kept, the stride
doubling each time the thinned part reaches ``max_rows`` again.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

SAMPLE = 64
SAMPLE_SEED = 20_240_601
CHUNK = 1024
MAX_STEPS = 100_000
MAX_BYTES = 64 * 1024 * 1024
FIRST_STRIDE = 10
_FIXED_BYTES = 40  # step (8), epoch (4), batch (4), loss (8), indices (8), contents (8)


def row_dtype(n_tensors: int) -> np.dtype[Any]:
    """The dtype of one trace row for a model of ``n_tensors`` parameter tensors."""
    return np.dtype(
        [
            ("step", "<i8"),
            ("epoch", "<i4"),
            ("batch", "<i4"),
            ("loss", "<f8"),
            ("indices", "<u8"),
            ("contents", "<f8"),
            ("fingerprint", "<f8", (n_tensors,)),
        ]
    )


def bytes_per_step(n_tensors: int) -> int:
    """Bytes one traced step takes in ``trace.npy``."""
    return _FIXED_BYTES + 8 * n_tensors


def max_rows(n_tensors: int) -> int:
    """Steps kept one by one before thinning: 100,000, or fewer so the trace stays under MAX_BYTES / 2."""
    return max(1000, min(MAX_STEPS, MAX_BYTES // 2 // bytes_per_step(n_tensors)))


def indices_digest(indices: Sequence[int] | torch.Tensor) -> int:
    """The first 8 bytes (little-endian) of the sha256 of ``indices`` as int64."""
    data = np.asarray(indices.tolist() if isinstance(indices, torch.Tensor) else indices, dtype="<i8")
    return int.from_bytes(hashlib.sha256(data.tobytes()).digest()[:8], "little")


@dataclasses.dataclass
class _Pending:
    """What the batches since the last optimiser step contributed: their indices and contents."""

    hasher: Any = None
    contents: torch.Tensor | None = None

    def reset(self) -> None:
        self.hasher, self.contents = None, None


StepCallback = Callable[[np.ndarray], bool]


class StepTracer:
    """Fingerprints ``model``'s parameters after each optimiser step (see the module docstring).

    Args:
        model: the model whose parameters are traced (named parameters, in order).
        on_step: called with each row (a 1-element array of :func:`row_dtype`) as it is made;
            returning True asks the training to stop (``stop_requested``).
    """

    def __init__(self, model: torch.nn.Module, *, on_step: StepCallback | None = None) -> None:
        named = list(model.named_parameters())
        self.names = [n for n, _ in named]
        self._params = [p for _, p in named]
        g = torch.Generator().manual_seed(SAMPLE_SEED)
        self._samples = [torch.randperm(p.numel(), generator=g)[:SAMPLE] for p in self._params]
        self._on_device: dict[torch.device, list[torch.Tensor]] = {}
        self.dtype = row_dtype(len(self.names))
        self.max_rows = max_rows(len(self.names))
        self.on_step = on_step
        self.stop_requested = False
        self.n_steps = 0
        self._chunk = 1 if on_step is not None else CHUNK
        self._buffer: torch.Tensor | None = None
        self._meta: list[tuple[int, int, int, int]] = []  # (step, epoch, batch, indices digest)
        self._kept: list[np.ndarray] = []
        self._tail: list[np.ndarray] = []
        self.stride = FIRST_STRIDE
        self._pending = _Pending()

    # --- what the training calls -----------------------------------------------------------
    def batch(self, *, indices: Sequence[int] | torch.Tensor | None = None, inputs: Any = None) -> None:
        """Note a batch the next optimiser step learns from: its sample indices and its inputs."""
        p = self._pending
        if indices is not None:
            if p.hasher is None:
                p.hasher = hashlib.sha256()
            data = np.asarray(indices.tolist() if isinstance(indices, torch.Tensor) else indices, dtype="<i8")
            p.hasher.update(data.tobytes())
        if isinstance(inputs, torch.Tensor):
            total = inputs.detach().sum(dtype=torch.float64)
            p.contents = total if p.contents is None else p.contents + total

    def step(self, *, loss: torch.Tensor | float | None = None, epoch: int = 0, batch: int = 0) -> None:
        """Record the parameters as they are after an optimiser step."""
        self.n_steps += 1
        buffer = self._buffer_for()
        row = len(self._meta)
        buffer[row, 2:] = torch.stack([self._fingerprint(p, i) for i, p in enumerate(self._params)]).to(buffer.device)
        if loss is not None:
            buffer[row, 0] = loss.detach().double() if isinstance(loss, torch.Tensor) else float(loss)
        else:
            buffer[row, 0] = float("nan")
        contents = self._pending.contents
        buffer[row, 1] = contents.to(buffer.device) if contents is not None else float("nan")
        hasher = self._pending.hasher
        digest = int.from_bytes(hasher.digest()[:8], "little") if hasher is not None else 0
        self._meta.append((self.n_steps, epoch, batch, digest))
        self._pending.reset()
        if len(self._meta) >= self._chunk:
            self.flush()

    def flush(self) -> None:
        """Copy the buffered rows to the host (one synchronisation), keeping them as the bound allows."""
        if not self._meta or self._buffer is None:
            return
        values = self._buffer[: len(self._meta)].cpu().numpy()
        rows = np.zeros(len(self._meta), dtype=self.dtype)
        meta = np.array([m[:3] for m in self._meta], dtype=np.int64)
        rows["step"], rows["epoch"], rows["batch"] = meta[:, 0], meta[:, 1], meta[:, 2]
        rows["indices"] = np.array([m[3] for m in self._meta], dtype="<u8")
        rows["loss"], rows["contents"], rows["fingerprint"] = values[:, 0], values[:, 1], values[:, 2:]
        self._meta = []
        for i in range(len(rows)):
            self._keep(rows[i : i + 1])

    # --- the result --------------------------------------------------------------------------
    def rows(self) -> np.ndarray:
        """Every kept row, in step order."""
        self.flush()
        parts = self._kept + self._tail
        return np.concatenate(parts) if parts else np.zeros(0, dtype=self.dtype)

    def to_bytes(self) -> bytes:
        """``trace.npy``: the kept rows as a NumPy file (no pickle)."""
        import io

        out = io.BytesIO()
        np.save(out, self.rows(), allow_pickle=False)
        return out.getvalue()

    def description(self) -> dict[str, Any]:
        """The record's ``results.trace`` fields known before writing (item and sha256 come then)."""
        rows = self.rows()
        return {
            "n_steps": self.n_steps,
            "n_rows": int(len(rows)),
            "bytes_per_step": bytes_per_step(len(self.names)),
            "tensors": list(self.names),
            "sample": SAMPLE,
            "sample_seed": SAMPLE_SEED,
            "every_step_up_to": self.max_rows,
            "stride": self.stride if self._tail else 1,
        }

    def state(self) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
        """(kept rows, thinned rows, counters): what a checkpoint stores to :meth:`restore` this tracer."""
        self.flush()
        empty = np.zeros(0, dtype=self.dtype)
        kept = np.concatenate(self._kept) if self._kept else empty
        tail = np.concatenate(self._tail) if self._tail else empty
        return kept, tail, {"n_steps": self.n_steps, "stride": self.stride}

    def restore(self, kept: np.ndarray, tail: np.ndarray, counters: dict[str, int]) -> None:
        """Continue from a checkpoint's :meth:`state` (rows of the same model's parameters)."""
        if kept.dtype != self.dtype or tail.dtype != self.dtype:
            raise ValueError(f"the checkpoint's step trace has rows of {kept.dtype}, this model's are {self.dtype}")
        self._meta, self._pending = [], _Pending()
        self._kept = [kept[i : i + 1] for i in range(len(kept))]
        self._tail = [tail[i : i + 1] for i in range(len(tail))]
        self.n_steps, self.stride = int(counters.get("n_steps", len(kept))), int(counters.get("stride", FIRST_STRIDE))

    # --- internals ---------------------------------------------------------------------------
    def _buffer_for(self) -> torch.Tensor:
        if self._buffer is None:
            device = self._params[0].device if self._params else torch.device("cpu")
            self._buffer = torch.zeros((self._chunk, 2 + len(self._params)), dtype=torch.float64, device=device)
        return self._buffer

    def _fingerprint(self, p: torch.Tensor, i: int) -> torch.Tensor:
        samples = self._on_device.get(p.device)
        if samples is None:
            samples = self._on_device[p.device] = [s.to(p.device) for s in self._samples]
        return p.detach().reshape(-1).index_select(0, samples[i]).sum(dtype=torch.float64)

    def _keep(self, row: np.ndarray) -> None:
        if self.on_step is not None and self.on_step(row):
            self.stop_requested = True
        if len(self._kept) < self.max_rows:
            self._kept.append(row)
            return
        step = int(row["step"][0])
        if (step - self.max_rows) % self.stride:
            return
        self._tail.append(row)
        if len(self._tail) >= self.max_rows:
            self.stride *= 2
            self._tail = [r for r in self._tail if (int(r["step"][0]) - self.max_rows) % self.stride == 0]
