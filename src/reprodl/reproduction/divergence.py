"""Where a reproduction left the original, and why: the step traces compared step by step.

A :class:`TraceComparer` receives the re-run's trace rows as they are made (an in-process
re-run) or all at once (a re-executed run's trace), compares each with the recorded row of the
same optimiser step, and finds the first that differs. :func:`~reprodl.reproduction.causes.explain`
then argues a cause from the evidence, through the table of causes in :mod:`.causes`: the data
order, the batch contents, the code, the environment, or none of them ("no recorded input
changed: the computation differed").

Example:
    >>> report = reproduce(uri)                            # doctest: +SKIP
    >>> report.divergence.step, report.divergence.causes   # doctest: +SKIP
    (37, ['no recorded input changed: the computation differed at step 37 ...'])
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from reprodl import keys
from reprodl.errors import IntegrityError
from reprodl.files import open_regular
from reprodl.provenance import ProvenanceRecord
from reprodl.reproduction.causes import COMPUTATION_DIFFERED, Evidence, explain
from reprodl.reproduction.code import CodeCheck
from reprodl.reproduction.environment import EnvDifference
from reprodl.training.tracefiles import TraceKind, first_difference, from_jsonl, trace_kind

__all__ = [
    "COMPUTATION_DIFFERED",
    "Divergence",
    "Evidence",
    "InputChange",
    "TraceComparer",
    "input_changes",
    "load_oplogs",
    "no_trace",
]

MAX_TENSORS_SHOWN = 5


@dataclasses.dataclass(frozen=True)
class Divergence:
    """The first optimiser step at which the re-run's trace left the recorded one, and the cause.

    ``step`` is the global optimiser step (from 1), ``epoch`` and ``batch`` where it happened
    (from 1; 0 when the run did not say). ``tensors``: the tensors whose fingerprints moved at
    that step (name, recorded, reproduced, abs_diff), largest first. ``indices_differ``: the
    batch's sample indices already differed (data order); ``contents_differ``: its inputs did.
    ``rng_differ``: the global random generators' state after that step differs (a trace of the
    ``words`` kind; None: not traced); ``rng_before_differ``: after the step before it (None: not
    known, that step not kept or the first step). ``growth``: the largest fingerprint difference at
    later steps. ``matched_to_end``: no step differed (``step`` is None). ``causes``: each verdict
    line with its evidence.
    ``first_differing_operation``: at the first divergent step, the first operation whose output
    differs (:mod:`reprodl.training.oplog`), when both runs logged that step's operations;
    ``operation_note`` says why none is named otherwise (or, matched, that the logged ones matched).
    """

    compared_steps: int
    matched_to_end: bool
    step: int | None = None
    epoch: int | None = None
    batch: int | None = None
    tensors: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    tensors_differ: int = 0  # how many tensors (and the optimiser state) moved: ``tensors`` shows the first few
    loss: dict[str, float] | None = None
    indices_differ: bool | None = None
    contents_differ: bool | None = None
    rng_differ: bool | None = None
    rng_before_differ: bool | None = None
    growth: list[dict[str, float]] = dataclasses.field(default_factory=list)
    stopped: bool = False
    causes: list[str] = dataclasses.field(default_factory=list)
    note: str | None = None
    first_differing_operation: dict[str, Any] | None = None
    operation_note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``reprodl reproduce --json``, key "divergence")."""
        return dataclasses.asdict(self)

    def summary(self) -> str:
        """One line: where the re-run left the original, or that it matched to the end."""
        if self.note and not self.compared_steps:
            return self.note
        if self.matched_to_end:
            return f"the re-run matched the recorded step trace to the end ({self.compared_steps} steps compared)"
        where = f"epoch {self.epoch}, batch {self.batch}" if self.epoch else "epoch and batch not recorded"
        return f"first divergent optimiser step: {self.step} ({where})"


def _rng_differ(was: np.void, now: np.void) -> bool | None:
    """Whether two rows' random generator states differ (None: either trace has none: not of the words kind)."""
    if "rng" not in (was.dtype.names or ()) or "rng" not in (now.dtype.names or ()):
        return None
    return int(was["rng"]) != int(now["rng"])


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


_WHERE = ("step", "epoch", "batch", "rng")  # where a step is, and evidence only: not its state
_EVIDENCE = ("indices", "inputs")  # what a step learnt from, compared where both runs traced it


class TraceComparer:
    """Compares re-run trace rows with the recorded trace, step by step (a ``StepCallback``).

    Both traces are of the recorded one's ``kind`` (a tracer given this comparer as ``on_step``
    traces that kind); every field of a row is compared exactly (NaN equal to NaN).

    Args:
        recorded: the recorded trace's rows.
        tensors: the recorded tensor names, in column order.
        stop: ask the training to stop at the first divergent step.
        until: ask the training to stop after this step (a replay's window).
        kind: the recorded trace's kind (``results.trace.kind``): ``words`` or ``exact`` digests.
    """

    def __init__(
        self,
        recorded: np.ndarray,
        tensors: Sequence[str],
        *,
        stop: bool = False,
        until: int | None = None,
        kind: str | None = None,
    ) -> None:
        self.until = until
        self.recorded = recorded
        self.kind: TraceKind = trace_kind(recorded, kind)
        self.tensors = list(tensors)
        self.stop = stop
        self._by_step = {int(s): i for i, s in enumerate(recorded["step"])}
        self.compared = 0
        self._previous: tuple[np.void, np.void] | None = None  # the last rows compared equal
        self.first: dict[str, Any] | None = None
        self.growth: list[dict[str, float]] = []
        self._next_growth = 0
        self._last: dict[str, float] | None = None
        self.stopped = False
        self.stop_after: int | None = None  # stop the training at the first step past this one
        self.recorded_oplogs: dict[int, list[dict[str, Any]]] = {}
        self.oplogs: dict[int, list[dict[str, Any]]] = {}
        self.keep_dir: Path | None = None  # where to keep the last checkpoint before any step differed
        self.kept: tuple[Path, int] | None = None  # that checkpoint and its step
        self.start_checkpoint: Path | None = None  # a replay: the training resumes from this checkpoint

    def checkpoint_written(self, path: Path, step: int) -> None:
        """The re-run wrote the checkpoint ``path`` after ``step``: keep a copy (replacing the one kept before)
        while every step compared so far matched the record, so the re-run's state there is the record's: a
        replay can start from it (:mod:`.replay`). Not where the recorded trace thinned out ``step`` (unseen)."""
        if self.keep_dir is None or self.first is not None or step not in self._by_step:
            return
        dest, tmp = self.keep_dir / f"ckpt-{step:012d}", self.keep_dir / ".copying"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(path, tmp)
        if self.kept is not None:
            shutil.rmtree(self.kept[0], ignore_errors=True)
        tmp.rename(dest)
        self.kept = (dest, step)

    def note_oplog(self, step: int, entries: list[dict[str, Any]]) -> None:
        """The re-run's operation log of ``step`` (a tracer calls this as each log ends)."""
        self.oplogs[step] = list(entries)

    def operation(self, step: int) -> tuple[dict[str, Any] | None, str | None]:
        """(the first differing operation of ``step``, or None with why none is named)."""
        if step not in self.recorded_oplogs:
            logged = ", ".join(str(s) for s in sorted(self.recorded_oplogs)) or "none"
            return None, f"no operation log recorded for step {step} (the original logged steps: {logged})"
        if step not in self.oplogs:
            return None, f"the re-run logged no operations for step {step}"
        found = first_difference(self.recorded_oplogs[step], self.oplogs[step], step=step)
        if found is None:
            return None, f"every operation of step {step} gave the recorded output; the step's state differs after it"
        return found, None

    def __call__(self, rows: np.ndarray) -> bool:
        """Compare each row; True (stop the training) at the first divergent one when ``stop``, and at
        the first step past ``stop_after`` when that is set."""
        for row in rows:
            if self.stop_after is not None and int(row["step"]) > self.stop_after:
                self.stopped = True
            i = self._by_step.get(int(row["step"]))
            if i is None:  # a step the recorded trace thinned out, or past its end
                continue
            self.compared += 1
            was = self.recorded[i]
            if self.first is None:
                if not self._row_equal(was, row):
                    self.first = self._describe(was, row, self._previous)
                    self.growth = [{"step": self.first["step"], **self._gap(was, row)}]
                    self._next_growth = 1
                    self.stopped = self.stop
                self._previous = (was, row)
            else:
                self._note_growth(was, row)
        return self.stopped or (self.until is not None and any(int(r["step"]) >= self.until for r in rows))

    def compare_all(self, rows: np.ndarray) -> None:
        """Compare a whole trace (a re-executed run's, read after it ended)."""
        self(rows)

    def _row_equal(self, was: np.void, now: np.void) -> bool:
        names = [n for n in (was.dtype.names or ()) if n not in _WHERE and n in (now.dtype.names or ())]
        if self.kind != "sampled":  # 0: the batch's indices or inputs not traced (a record made before they were)
            names = [n for n in names if n not in _EVIDENCE or (int(was[n]) != 0 and int(now[n]) != 0)]
        return all(np.array_equal(was[n], now[n], equal_nan=was[n].dtype.kind == "f") for n in names)

    def _describe(self, was: np.void, now: np.void, previous: tuple[np.void, np.void] | None) -> dict[str, Any]:
        exact = self.kind != "sampled"  # digests (words or exact), not fingerprints
        a, b = (was["digest"], now["digest"]) if exact else (was["fingerprint"], now["fingerprint"])
        moved = [_moved(name, x, y) for name, x, y in zip(self.tensors, a, b) if not _equal(x, y)]
        moved.sort(key=_largest_first)
        if exact and int(was["optimizer"]) != int(now["optimizer"]):
            moved.append(_moved("(optimiser state)", was["optimizer"], now["optimizer"]))
        column, unknown = ("inputs", 0) if exact else ("contents", None)
        contents_known = _known(was[column], unknown) and _known(now[column], unknown)
        indices_known = int(was["indices"]) != 0 and int(now["indices"]) != 0
        step = int(now["step"])
        return {
            "step": step,
            "epoch": int(was["epoch"]),
            "batch": int(was["batch"]),
            "tensors": moved[:MAX_TENSORS_SHOWN],
            "tensors_differ": len(moved),
            "loss": _losses(float(was["loss"]), float(now["loss"])),
            "indices_differ": int(was["indices"]) != int(now["indices"]) if indices_known else None,
            "contents_differ": not _equal(was[column], now[column]) if contents_known else None,
            "rng_differ": _rng_differ(was, now),
            "rng_before_differ": _rng_differ(*previous) if previous and int(previous[1]["step"]) == step - 1 else None,
            "indices": (int(was["indices"]), int(now["indices"])),
            "contents": (_value(was[column]), _value(now[column])),
        }

    def _gap(self, was: np.void, now: np.void) -> dict[str, float]:
        """How far apart two rows are: tensors whose digests differ (exact), or the largest fingerprint gap."""
        if self.kind != "sampled":
            differ = int(np.sum(was["digest"] != now["digest"])) + int(int(was["optimizer"]) != int(now["optimizer"]))
            return {"tensors_differ": differ}
        return {"max_abs_diff": _max_diff(was["fingerprint"], now["fingerprint"])}

    def _note_growth(self, was: np.void, now: np.void) -> None:
        """The gap at 1, 2, 4, 8... steps after the first divergent step (and, apart, at the last step)."""
        assert self.first is not None
        after = int(now["step"]) - self.first["step"]
        self._last = {"step": int(now["step"]), **self._gap(was, now)}
        if after >= self._next_growth:
            self.growth.append(self._last)
            self._next_growth = after * 2

    def result(
        self,
        *,
        code: CodeCheck | None = None,
        environment: Sequence[EnvDifference] = (),
        settings: Sequence[str] = (),
        inputs: Sequence[InputChange] = (),
        data: Sequence[Any] = (),
    ) -> Divergence:
        """The :class:`Divergence` found, with its causes argued from the evidence: ``code``, ``environment``,
        ``settings``, the recorded ``inputs`` that changed (:func:`input_changes`) and the recorded ``data``."""
        n_recorded = len(self.recorded)
        if self.first is None:
            note = None
            if self.compared < n_recorded:
                note = f"the re-run made {self.compared} of the {n_recorded} recorded steps"
            return Divergence(
                compared_steps=self.compared,
                matched_to_end=self.compared == n_recorded,
                note=note,
                operation_note=self._clean_operations(),
            )
        growth = list(self.growth)
        if self._last is not None and growth[-1]["step"] != self._last["step"]:
            growth.append(self._last)
        f = self.first
        operation, operation_note = self.operation(f["step"])
        div = Divergence(
            compared_steps=self.compared,
            matched_to_end=False,
            step=f["step"],
            epoch=f["epoch"],
            batch=f["batch"],
            tensors=f["tensors"],
            tensors_differ=f["tensors_differ"],
            loss=f["loss"],
            indices_differ=f["indices_differ"],
            contents_differ=f["contents_differ"],
            rng_differ=f["rng_differ"],
            rng_before_differ=f["rng_before_differ"],
            growth=growth,
            stopped=self.stopped,
            first_differing_operation=operation,
            operation_note=operation_note,
        )
        evidence = Evidence(code=code, environment=environment, settings=settings, inputs=inputs, data=data)
        return dataclasses.replace(div, causes=explain(div, f, evidence))

    def _clean_operations(self) -> str | None:
        """For a re-run that matched: the logged steps whose every operation matched too (None: none compared)."""
        same = [
            s
            for s in sorted(self.recorded_oplogs)
            if s in self.oplogs and first_difference(self.recorded_oplogs[s], self.oplogs[s], step=s) is None
        ]
        if not same:
            return None
        return f"every logged operation gave the recorded output (steps {', '.join(map(str, same))})"


def _largest_first(t: dict[str, Any]) -> float:
    gap = t["abs_diff"]
    return -gap if gap is not None and not math.isnan(gap) else 0.0


def _equal(x: Any, y: Any) -> bool:
    return _same(float(x), float(y)) if np.asarray(x).dtype.kind == "f" else int(x) == int(y)


def _known(x: Any, unknown: int | None) -> bool:
    return not math.isnan(float(x)) if unknown is None else int(x) != unknown


def _value(x: Any) -> Any:
    return float(x) if np.asarray(x).dtype.kind == "f" else f"{int(x):016x}"


def _losses(was: float, now: float) -> dict[str, float] | None:
    """The loss at the divergent step on both sides; None when neither run knew it (NaN: not recorded)."""
    if math.isnan(was) and math.isnan(now):
        return None
    return {"recorded": was, "reproduced": now}


def _moved(name: str, x: Any, y: Any) -> dict[str, Any]:
    """A tensor whose digest (exact: hexadecimal, no distance) or fingerprint (sampled) moved."""
    if np.asarray(x).dtype.kind == "f":
        return {"name": name, "recorded": float(x), "reproduced": float(y), "abs_diff": abs(float(x) - float(y))}
    return {"name": name, "recorded": f"{int(x):016x}", "reproduced": f"{int(y):016x}", "abs_diff": None}


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return float(np.nanmax(diff)) if diff.size and not np.all(np.isnan(diff)) else 0.0


def no_trace(why: str) -> Divergence:
    """The divergence section when no step-by-step comparison was possible, saying why."""
    return Divergence(compared_steps=0, matched_to_end=False, note=why)


@dataclasses.dataclass(frozen=True)
class InputChange:
    """A recorded input of the training that the re-run's own record shows changed.

    ``kind`` is "data", "initial weights", "seeds" or "code"; ``role`` the data's role (data only);
    ``text`` the cause line with its evidence (``data: the in-memory train tensor's digest changed ...``).
    """

    kind: Literal["data", "initial weights", "seeds", "code"]
    text: str
    role: str | None = None


_DATA_DIGESTS = (("manifest_digest", "digest"), ("selection_digest", "selection"), ("labels_digest", "labels"))


def input_changes(record: ProvenanceRecord, new: ProvenanceRecord) -> list[InputChange]:
    """The recorded inputs whose re-run values (the re-run's record) differ from the original's:
    each dataset's digests, the initial weights' digest and the seeds."""
    out = []
    if len(record.data) != len(new.data):
        n_was, n_now = len(record.data), len(new.data)
        out.append(InputChange("data", f"data: the re-run read {n_now} dataset(s), the original {n_was}"))
    for was, now in zip(record.data, new.data):
        label = _data_label(was)
        for field, what in _DATA_DIGESTS:
            a, b = getattr(was, field), getattr(now, field)
            if a != b:
                text = f"data: {label}'s {what} changed ({_short(a)} -> {_short(b)})"
                out.append(InputChange("data", text, was.role))
                break
    out.sort(key=lambda c: c.role != "train")  # what the steps learnt from first (stable: the rest as recorded)
    a_init, b_init = record.architecture.initial_weights_sha256, new.architecture.initial_weights_sha256
    if a_init and b_init and a_init != b_init:
        text = f"initial weights: their digest changed ({_short(a_init)} -> {_short(b_init)})"
        out.append(InputChange("initial weights", text))
    a_seeds, b_seeds = record.training.seeds.model_dump(), new.training.seeds.model_dump()
    changed = [k for k in a_seeds if a_seeds[k] != b_seeds.get(k)]
    if changed:
        shown = ", ".join(f"{k} {a_seeds[k]} -> {b_seeds.get(k)}" for k in changed[:3])
        out.append(InputChange("seeds", f"seeds: {shown}"))
    return out


def _data_label(ref: Any) -> str:
    """How a cause names a recorded dataset: ``the in-memory train tensor``, ``the train dataset digits``."""
    if ref.source == "in-memory":
        return f"the in-memory {ref.role} " + ("tensor" if ref.name == "Tensor" else ref.name)
    if ref.source == "unverified":
        return f"the {ref.role} data {ref.name} (unverified)"
    return f"the {ref.role} dataset {ref.name}"


def _short(digest: str | None) -> str:
    return "none" if not digest else digest.removeprefix("sha256:")[:12]


def load_oplogs(ds: Any, record: ProvenanceRecord) -> dict[int, list[dict[str, Any]]]:
    """The operation logs a model dataset holds, by step, each checked against its sha256 in the record
    (an item missing or changed: :class:`~reprodl.errors.IntegrityError`); {} when the record names none.

    Read within the bounds reprodl writes them in (``keys.MAX_OPLOG_STEPS`` logs, ``keys.MAX_OPLOG_BYTES``
    together): a record naming more, or items larger, is refused before more is read.
    """

    info = record.results.trace
    logs = (info.oplog or []) if info is not None else []
    if len(logs) > keys.MAX_OPLOG_STEPS:
        raise IntegrityError(
            f"{ds.uri}: the provenance record names {len(logs)} operation logs, more than the "
            f"{keys.MAX_OPLOG_STEPS} reprodl writes: use an unchanged copy of the model",
            problems=["too many operation logs"],
        )
    out: dict[int, list[dict[str, Any]]] = {}
    left = keys.MAX_OPLOG_BYTES
    for log in logs:
        data = _read_bounded(ds, log.item, left)
        if len(data) > left:
            raise IntegrityError(
                f"{ds.uri}: the operation logs ({log.item} and those before it) are larger than the "
                f"{keys.MAX_OPLOG_BYTES} bytes reprodl writes: use an unchanged copy of the model",
                problems=["operation log too large"],
            )
        left -= len(data)
        actual = "sha256:" + hashlib.sha256(data).hexdigest()
        if actual != log.sha256:
            raise IntegrityError(
                f"{ds.uri}: the operation log {log.item} does not match the provenance record (record {log.sha256}, "
                f"item {actual}): use a complete, unchanged copy of the model",
                problems=["operation log digest mismatch"],
            )
        out[log.step] = from_jsonl(data)
    return out


def _read_bounded(ds: Any, item: str, limit: int) -> bytes:
    """At most ``limit + 1`` bytes of the item named ``item`` (b"": none such)."""
    try:
        path = ds.item_path(ds.identifier_of(item))
    except (KeyError, OSError):
        return b""
    with open_regular(path, what=f"{ds.uri}: the operation log {item}", error=IntegrityError) as f:
        return f.read(limit + 1)
