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
and :func:`first_difference` names the first operation whose output differs.

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


def from_jsonl(data: bytes) -> list[dict[str, Any]]:
    """The entries of :func:`to_jsonl` bytes (lines that are not JSON objects are skipped; the caller
    bounds ``data``, :data:`reprodl.keys.MAX_OPLOG_BYTES`)."""
    out = []
    for line in data.decode("utf-8", errors="replace").splitlines()[: keys.MAX_OPLOG_OPS]:
        try:
            entry = json.loads(line)
        except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
            continue
        if isinstance(entry, dict):
            out.append(_entry(entry))
    return out


_TEXT_FIELDS = ("op", "module", "phase", "where")
MAX_FIELD_CHARS = 500  # of a read entry's name, module, phase, place and each output digest


def _entry(raw: dict[str, Any]) -> dict[str, Any]:
    """A read entry with the fields compared and shown of the types written: names as strings and the
    outputs as a list of strings, each cut to :data:`MAX_FIELD_CHARS` (a record's log is anyone's JSON)."""
    entry = {**raw, **{k: str(raw[k])[:MAX_FIELD_CHARS] for k in _TEXT_FIELDS if k in raw}}
    if "out" in raw:
        outs = raw["out"] if isinstance(raw["out"], list) else [raw["out"]]
        entry["out"] = [str(x)[:MAX_FIELD_CHARS] for x in outs]
    return entry


def first_difference(
    recorded: Sequence[dict[str, Any]], new: Sequence[dict[str, Any]], *, step: int
) -> dict[str, Any] | None:
    """The first operation whose name or output digest differs between two logs of step ``step``; None: none.

    The result (``divergence.first_differing_operation`` of ``reproduce --json``) holds ``step``,
    ``index`` (the operation's position in the step), ``op``, ``module``, ``phase``, ``where``,
    ``recorded`` and ``reproduced`` (the output digests), and ``kind``: ``output`` (same operation,
    other bits) or ``operation`` (another operation ran there: the code or the kernels' dispatch changed).
    """
    for i, (was, now) in enumerate(zip(recorded, new)):
        same_op = was.get("op") == now.get("op")
        if same_op and was.get("out") == now.get("out"):
            continue
        return {
            "step": step,
            "index": i,
            "op": str(now.get("op", "")),
            "module": str(now.get("module", "")),
            "phase": str(now.get("phase", "")),
            "where": str(now.get("where", "")),
            "recorded_op": str(was.get("op", "")),
            "recorded": list(was.get("out", [])),
            "reproduced": list(now.get("out", [])),
            "kind": "output" if same_op else "operation",
        }
    if len(recorded) != len(new):
        i = min(len(recorded), len(new))
        extra = (recorded if len(recorded) > len(new) else new)[i]
        return {
            "step": step,
            "index": i,
            "op": str(extra.get("op", "")),
            "module": str(extra.get("module", "")),
            "phase": str(extra.get("phase", "")),
            "where": str(extra.get("where", "")),
            "recorded_op": str(extra.get("op", "")) if len(recorded) > len(new) else "",
            "recorded": [],
            "reproduced": [],
            "kind": "operation",
        }
    return None


def describe(difference: dict[str, Any]) -> str:
    """One line: ``first differing operation: aten.convolution.default in GenNet.conv1, forward (reprodl/zoo.py:60)``
    and where in the step."""
    where = f" ({difference['where']})" if difference.get("where") else ""
    module = difference.get("module") or "no module"
    text = f"first differing operation: {difference['op']} in {module}, {difference['phase']}{where}"
    if difference.get("kind") == "operation":
        text += f" (the original ran {difference.get('recorded_op') or 'no operation'} there)"
    return f"{text}, operation {difference['index'] + 1} of step {difference['step']}"


@functools.cache
def _dynamo_skipping() -> type[OpLogger]:
    class DynamoSkippingOpLogger(OpLogger):
        @classmethod
        def _should_skip_dynamo(cls) -> bool:
            return True

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            return OpLogger.__torch_dispatch__(self, func, types, args, kwargs)

    return DynamoSkippingOpLogger
