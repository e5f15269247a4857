"""Reading what the step tracer wrote, without torch: a trace's kind, and the operation logs compared.

A reproduction compares a re-run's step trace and operation logs with the recorded ones; a re-executed run's
are compared in the parent of the process that trained (``reprodl reproduce``), which imports no torch. The
tracer (:mod:`reprodl.training.trace`) and the operation logger (:mod:`reprodl.training.oplog`), which write
them, need torch; reading them here needs NumPy and JSON only.

Example:
    >>> first_difference([{"op": "aten.mm", "out": ["1"]}], [{"op": "aten.mm", "out": ["1"]}], step=1) is None
    True
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from reprodl import keys

TraceKind = Literal["words", "exact", "sampled"]


def trace_kind(rows: np.ndarray, recorded: str | None = None) -> TraceKind:
    """The kind of a trace's rows: ``sampled`` (older records' fingerprints) when they are of that layout, else
    the digests' kind the record names (``recorded``): ``words``, or ``exact`` (also when it names none)."""
    if rows.dtype.names is not None and "fingerprint" in rows.dtype.names:
        return "sampled"
    return "words" if recorded == "words" else "exact"


def from_jsonl(data: bytes) -> list[dict[str, Any]]:
    """The entries of :func:`~reprodl.training.oplog.to_jsonl` bytes (lines that are not JSON objects are
    skipped; the caller bounds ``data``, :data:`reprodl.keys.MAX_OPLOG_BYTES`)."""
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
        kind = "output" if same_op else "operation"
        return _difference(step, i, now, was.get("op", ""), was.get("out", []), now.get("out", []), kind)
    if len(recorded) != len(new):
        i = min(len(recorded), len(new))
        extra = (recorded if len(recorded) > len(new) else new)[i]
        recorded_op = extra.get("op", "") if len(recorded) > len(new) else ""
        return _difference(step, i, extra, recorded_op, [], [], "operation")
    return None


def _difference(
    step: int, index: int, entry: dict[str, Any], recorded_op: Any, recorded: Any, reproduced: Any, kind: str
) -> dict[str, Any]:
    """:func:`first_difference`'s result for the operation ``entry`` at ``index``."""
    return {
        "step": step,
        "index": index,
        **{k: str(entry.get(k, "")) for k in ("op", "module", "phase", "where")},
        "recorded_op": str(recorded_op),
        "recorded": list(recorded),
        "reproduced": list(reproduced),
        "kind": kind,
    }


def describe(difference: dict[str, Any]) -> str:
    """One line: ``first differing operation: aten.convolution.default in GenNet.conv1, forward (reprodl/zoo.py:60)``
    and where in the step."""
    where = f" ({difference['where']})" if difference.get("where") else ""
    module = difference.get("module") or "no module"
    text = f"first differing operation: {difference['op']} in {module}, {difference['phase']}{where}"
    if difference.get("kind") == "operation":
        text += f" (the original ran {difference.get('recorded_op') or 'no operation'} there)"
    return f"{text}, operation {difference['index'] + 1} of step {difference['step']}"
