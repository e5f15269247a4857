"""The operation log: every operation one optimiser step dispatched, with an exact digest of its output.

The step tracer (:mod:`reprodl.training.trace`) says at which optimiser step a re-run left the
original; the operation log says in which operation. For the steps it is asked to log (by
default the first, :data:`DEFAULT_STEPS`, and the step before each checkpoint), the tracer runs the step under an
:class:`OpLogger`: a ``TorchDispatchMode`` that notes, for each ATen operation dispatched from
the first batch of the step to the end of its optimiser step,

* ``op``: the operation (``aten.convolution.default``);
* ``module``: the innermost module running it (``DigitsCNN.conv1``, the class of the root
  module then the state-dict path; ``""`` outside every module, as in the optimiser's step),
  tracked by :class:`torch.utils.module_tracker.ModuleTracker`;
* ``phase``: ``forward`` (inside a module's forward), ``backward`` (run by autograd) or ``other``
  (the optimiser's step, a loss computed outside a module, data collation);
* ``out``: per tensor output, ``torch.hash_tensor`` of it (16 hex digits; the XOR of every
  element's bits, exact) — the digest the step trace uses;
* ``where``: forward, the first source line outside torch (``reprodl/zoo.py:60``); backward, the
  autograd node (``ConvolutionBackward0``).

It is stored as JSON lines in the model dataset (``oplog/step-<n>.jsonl``, named with their
sha256 in the record's ``results.trace.oplog``). A reproduction logs the same step the same way
and :func:`~reprodl.training.tracefiles.first_difference` names the first operation whose output differs.

Cost: one ``hash_tensor`` per output and a walk of the Python stack per forward operation, for
the logged steps only (``bench/bench_oplog.py`` measures it); about 100 bytes per operation.
Bounded: a log keeps a step's first :data:`reprodl.keys.MAX_OPLOG_OPS` operations, a run keeps
at most :data:`~reprodl.keys.MAX_OPLOG_STEPS` logs within :data:`~reprodl.keys.MAX_OPLOG_BYTES`
(the first step's and the latest ones), and a reproduction reads no more than that.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.module_tracker import ModuleTracker

from reprodl import keys

DEFAULT_STEPS: tuple[int, ...] = (1,)
_TORCH_DIR = os.path.dirname(torch.__file__)


def oplog_off() -> bool:
    """True when ``REPRODL_OPLOG_STEPS`` is ``none`` (``0``, ``off``): no step logged, not even before a checkpoint."""
    return os.environ.get(keys.OPLOG_STEPS_ENV, "").strip().lower() in ("none", "0", "off")


def oplog_steps() -> tuple[int, ...]:
    """The steps to log: ``REPRODL_OPLOG_STEPS`` (``1,5``; ``none`` for none), else :data:`DEFAULT_STEPS`.

    A training with checkpoints also logs the step before each checkpoint
    (:class:`~reprodl.training.trace.StepTracer`'s ``oplog_every``), unless this is ``none``.
    """
    value = os.environ.get(keys.OPLOG_STEPS_ENV, "").strip().lower()
    if not value:
        return DEFAULT_STEPS
    if oplog_off():
        return ()
    try:
        return tuple(sorted({int(v) for v in value.split(",") if v.strip()}))
    except ValueError:
        return DEFAULT_STEPS


def item_name(step: int) -> str:
    """The model-dataset item of step ``step``'s operation log."""
    return f"{keys.OPLOG_DIR}step-{step}.jsonl"


def _hex(digest: int) -> str:
    return f"{digest & 0xFFFFFFFFFFFFFFFF:016x}"


def _digest(t: torch.Tensor) -> torch.Tensor | None:
    """``torch.hash_tensor`` of an output (None for an empty tensor or one it cannot digest)."""
    if t.numel() == 0 or t.is_sparse or t.is_meta:
        return None
    try:
        return torch.hash_tensor(torch.view_as_real(t) if t.is_complex() else t.detach())
    except RuntimeError:
        return None


def _source_line() -> str:
    """The first Python frame outside torch (and this module): ``folder/file.py:line``."""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename
        if not name.startswith(_TORCH_DIR) and name != __file__:
            return f"{os.path.basename(os.path.dirname(name))}/{os.path.basename(name)}:{frame.f_lineno}"
        frame = frame.f_back  # type: ignore[assignment]  # f_back is None past the outermost frame: the loop ends there
    return ""


class OpLogger(TorchDispatchMode):
    """Logs each dispatched operation of a block (see the module docstring); :meth:`stop` ends it.
    Make one with :meth:`new`."""

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        return False  # torch would wrap __torch_dispatch__ in a disable that imports torch._dynamo at the first op

    @classmethod
    def new(cls, step: int) -> OpLogger:
        """A logger of ``step``: where torch._dynamo is loaded already (a compiled model), one whose
        ``__torch_dispatch__`` dynamo skips, as torch's own modes; otherwise one that loads no compiler."""
        return _dynamo_skipping()(step) if "torch._dynamo" in sys.modules else cls(step)

    def __init__(self, step: int) -> None:
        super().__init__()
        self.step = step
        self.paused = False
        self.seconds = 0.0
        self._rows: list[tuple[str, str, str, str, list[torch.Tensor | None]]] = []
        self._tracker = ModuleTracker()
        self._active = False
        self.truncated = False  # more than keys.MAX_OPLOG_OPS operations ran: the first ones are kept

    def start(self) -> OpLogger:
        """Enter the mode (and the module tracker)."""
        self._t0 = time.perf_counter()
        self._tracker.__enter__()
        self.__enter__()
        self._active = True
        return self

    def stop(self) -> None:
        """Leave the mode; the entries are kept (:meth:`entries`)."""
        if not self._active:
            return
        self._active = False
        self.__exit__(None, None, None)
        self._tracker.__exit__()
        self.seconds += time.perf_counter() - self._t0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if self.paused or self.truncated:
            return out
        if len(self._rows) >= keys.MAX_OPLOG_OPS:
            self.truncated = True
            return out
        backward = torch._C._current_graph_task_id() != -1
        module = "" if backward and not self._tracker.parents - {"Global"} else _innermost(self._tracker.parents)
        if backward:
            node = torch._C._current_autograd_node()
            phase, where = "backward", (node.name() if node is not None else "")
        else:
            phase, where = ("forward" if module else "other"), _source_line()
        flat, _ = tree_flatten(out)
        digests = [_digest(t) for t in flat if isinstance(t, torch.Tensor)]
        self._rows.append((str(func), module, phase, where, digests))
        return out

    def entries(self) -> list[dict[str, Any]]:
        """The logged operations, in dispatch order (the digests copied to the host at once)."""
        present = [d.to("cpu", non_blocking=False) for row in self._rows for d in row[4] if d is not None]
        values = iter(torch.stack(present).view(torch.int64).tolist() if present else [])
        out = []
        for i, (op, module, phase, where, digests) in enumerate(self._rows):
            hashes = [_hex(next(values)) if d is not None else "" for d in digests]
            out.append({"i": i, "op": op, "module": module, "phase": phase, "out": hashes, "where": where})
        return out


def renamed(entries: list[dict[str, Any]], names: dict[str, str]) -> list[dict[str, Any]]:
    """``entries`` with each module named by the original model, not its wrappers: a module name starting with
    a key of ``names`` (:func:`reprodl.training.wrappers.wrapper_names`) starts with its value instead."""
    if not names:
        return entries
    ranked = sorted(names.items(), key=lambda kv: -len(kv[0]))
    out = []
    for entry in entries:
        module = entry["module"]
        for prefix, name in ranked:
            if module == prefix or module.startswith(prefix + "."):
                entry = {**entry, "module": name + module[len(prefix) :]}
                break
        out.append(entry)
    return out


def _innermost(parents: Iterable[str]) -> str:
    """The deepest module of ModuleTracker's set of running modules (``""``: none but "Global")."""
    names = [p for p in parents if p != "Global"]
    return max(names, key=lambda n: (n.count("."), n)) if names else ""


def to_jsonl(entries: Sequence[dict[str, Any]]) -> bytes:
    """The log as JSON lines (one operation a line)."""
    return "".join(json.dumps(e, separators=(",", ":")) + "\n" for e in entries).encode()


def bounded_jsonl(entries: Sequence[dict[str, Any]], limit: int) -> tuple[bytes, int]:
    """(the log as JSON lines cut to its first lines within ``limit`` bytes, the operations kept)."""
    data = to_jsonl(entries)
    if len(data) <= limit:
        return data, len(entries)
    data = data[: data.rfind(b"\n", 0, limit) + 1]
    return data, data.count(b"\n")


@functools.cache
def _dynamo_skipping() -> type[OpLogger]:
    class DynamoSkippingOpLogger(OpLogger):
        @classmethod
        def _should_skip_dynamo(cls) -> bool:
            return True

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            return OpLogger.__torch_dispatch__(self, func, types, args, kwargs)

    return DynamoSkippingOpLogger
