"""Where a reproduction left the original, and why: the step traces compared step by step.

A :class:`TraceComparer` receives the re-run's trace rows as they are made (an in-process
re-run) or all at once (a re-executed run's trace), compares each with the recorded row of the
same optimiser step, and finds the first that differs. :func:`explain` then argues a cause
from the evidence: the data order, the batch contents, the code, the environment, or none of
them ("no recorded input changed: the computation differed").

Example:
    >>> report = reproduce(uri)                            # doctest: +SKIP
    >>> report.divergence.step, report.divergence.causes   # doctest: +SKIP
    (37, ['no recorded input changed: the computation differed at step 37 ...'])
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from reprodl.reproduction.code import CodeCheck
from reprodl.reproduction.environment import EnvDifference

MAX_TENSORS_SHOWN = 5
COMPUTATION_DIFFERED = "no recorded input changed: the computation differed"


@dataclasses.dataclass(frozen=True)
class Divergence:
    """The first optimiser step at which the re-run's trace left the recorded one, and the cause.

    ``step`` is the global optimiser step (from 1), ``epoch`` and ``batch`` where it happened
    (from 1; 0 when the run did not say). ``tensors``: the tensors whose fingerprints moved at
    that step (name, recorded, reproduced, abs_diff), largest first. ``indices_differ``: the
    batch's sample indices already differed (data order); ``contents_differ``: its inputs did.
    ``growth``: the largest fingerprint difference at later steps. ``matched_to_end``: no step
    differed (``step`` is None). ``causes``: each verdict line with its evidence.
    """

    compared_steps: int
    matched_to_end: bool
    step: int | None = None
    epoch: int | None = None
    batch: int | None = None
    tensors: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    loss: dict[str, float] | None = None
    indices_differ: bool | None = None
    contents_differ: bool | None = None
    growth: list[dict[str, float]] = dataclasses.field(default_factory=list)
    stopped: bool = False
    causes: list[str] = dataclasses.field(default_factory=list)
    note: str | None = None

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


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


class TraceComparer:
    """Compares re-run trace rows with the recorded trace, step by step (a ``StepCallback``).

    Args:
        recorded: the recorded trace's rows.
        tensors: the recorded tensor names, in column order.
        stop: ask the training to stop at the first divergent step.
    """

    def __init__(self, recorded: np.ndarray, tensors: Sequence[str], *, stop: bool = False) -> None:
        self.recorded = recorded
        self.tensors = list(tensors)
        self.stop = stop
        self._by_step = {int(s): i for i, s in enumerate(recorded["step"])}
        self.compared = 0
        self.first: dict[str, Any] | None = None
        self.growth: list[dict[str, float]] = []
        self._next_growth = 0
        self._last: dict[str, float] | None = None
        self.stopped = False

    def __call__(self, rows: np.ndarray) -> bool:
        """Compare each row; True (stop the training) at the first divergent one when ``stop``."""
        for row in rows:
            i = self._by_step.get(int(row["step"]))
            if i is None:  # a step the recorded trace thinned out, or past its end
                continue
            self.compared += 1
            was = self.recorded[i]
            if self.first is None:
                if not self._row_equal(was, row):
                    self.first = self._describe(was, row)
                    self.growth = [{"step": self.first["step"], "max_abs_diff": self.first["max_abs_diff"]}]
                    self._next_growth = 1
                    self.stopped = self.stop
            else:
                self._note_growth(was, row)
        return self.stopped

    def compare_all(self, rows: np.ndarray) -> None:
        """Compare a whole trace (a re-executed run's, read after it ended)."""
        self(rows)

    def _row_equal(self, was: np.void, now: np.void) -> bool:
        return bool(
            np.array_equal(was["fingerprint"], now["fingerprint"], equal_nan=True)
            and _same(float(was["loss"]), float(now["loss"]))
            and int(was["indices"]) == int(now["indices"])
            and _same(float(was["contents"]), float(now["contents"]))
        )

    def _describe(self, was: np.void, now: np.void) -> dict[str, Any]:
        a, b = was["fingerprint"], now["fingerprint"]
        moved: list[dict[str, Any]] = [
            {"name": name, "recorded": float(x), "reproduced": float(y), "abs_diff": abs(float(x) - float(y))}
            for name, x, y in zip(self.tensors, a, b)
            if not _same(float(x), float(y))
        ]
        moved.sort(key=lambda t: -float(t["abs_diff"]) if not math.isnan(t["abs_diff"]) else -math.inf)
        indices_known = int(was["indices"]) != 0 and int(now["indices"]) != 0
        contents_known = not (math.isnan(float(was["contents"])) or math.isnan(float(now["contents"])))
        return {
            "step": int(now["step"]),
            "epoch": int(was["epoch"]),
            "batch": int(was["batch"]),
            "tensors": moved[:MAX_TENSORS_SHOWN],
            "loss": {"recorded": float(was["loss"]), "reproduced": float(now["loss"])},
            "indices_differ": int(was["indices"]) != int(now["indices"]) if indices_known else None,
            "contents_differ": not _same(float(was["contents"]), float(now["contents"])) if contents_known else None,
            "indices": (int(was["indices"]), int(now["indices"])),
            "contents": (float(was["contents"]), float(now["contents"])),
            "max_abs_diff": _max_diff(a, b),
        }

    def _note_growth(self, was: np.void, now: np.void) -> None:
        """The gap at 1, 2, 4, 8... steps after the first divergent step (and, apart, at the last step)."""
        assert self.first is not None
        after = int(now["step"]) - self.first["step"]
        self._last = {"step": int(now["step"]), "max_abs_diff": _max_diff(was["fingerprint"], now["fingerprint"])}
        if after >= self._next_growth:
            self.growth.append(self._last)
            self._next_growth = after * 2

    def result(
        self,
        *,
        code: CodeCheck | None = None,
        environment: Sequence[EnvDifference] = (),
        settings: Sequence[str] = (),
    ) -> Divergence:
        """The :class:`Divergence` found, with its causes argued from ``code``, ``environment`` and ``settings``."""
        n_recorded = len(self.recorded)
        if self.first is None:
            note = None
            if self.compared < n_recorded:
                note = f"the re-run made {self.compared} of the {n_recorded} recorded steps"
            return Divergence(compared_steps=self.compared, matched_to_end=self.compared == n_recorded, note=note)
        growth = list(self.growth)
        if self._last is not None and growth[-1]["step"] != self._last["step"]:
            growth.append(self._last)
        f = self.first
        div = Divergence(
            compared_steps=self.compared,
            matched_to_end=False,
            step=f["step"],
            epoch=f["epoch"],
            batch=f["batch"],
            tensors=f["tensors"],
            loss=f["loss"],
            indices_differ=f["indices_differ"],
            contents_differ=f["contents_differ"],
            growth=growth,
            stopped=self.stopped,
        )
        causes = explain(div, f, code=code, environment=environment, settings=settings)
        return dataclasses.replace(div, causes=causes)


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return float(np.nanmax(diff)) if diff.size and not np.all(np.isnan(diff)) else 0.0


def no_trace(why: str) -> Divergence:
    """The divergence section when no step-by-step comparison was possible, saying why."""
    return Divergence(compared_steps=0, matched_to_end=False, note=why)


def explain(
    div: Divergence,
    first: dict[str, Any],
    *,
    code: CodeCheck | None,
    environment: Sequence[EnvDifference],
    settings: Sequence[str],
) -> list[str]:
    """The causes that fit the first divergent step, each citing its evidence."""
    where = f"step {div.step}" + (f" (epoch {div.epoch}, batch {div.batch})" if div.epoch else "")
    causes = []
    if div.indices_differ:
        was, now = first["indices"]
        causes.append(
            f"data order changed from {where}: the digest of the batch's sample indices differs "
            f"(recorded {was:016x}, re-run {now:016x})"
        )
    elif div.contents_differ:
        was, now = first["contents"]
        causes.append(
            f"data changed at {where}: the same sample indices gave different inputs (their sum: recorded "
            f"{was!r}, re-run {now!r}); the items match their manifests, so how they were read or transformed differs"
        )
    if code is not None and (code.same_commit is False or code.patch_applies is False):
        causes.append(f"code changed: {code.message}")
    causes += [f"setting changed: {s}" for s in settings]
    fields = [d for d in environment if not d.is_package]
    if fields:
        changed = ", ".join(f"{d.what} {d.recorded} -> {d.now}" for d in fields)
        causes.append(f"environment changed: {changed} (the recorded environment beside this one)")
    n_packages = sum(1 for d in environment if d.is_package)
    if n_packages:
        causes.append(f"environment changed: {n_packages} installed package version(s) differ")
    if not causes:
        checked = "same sample indices" if div.indices_differ is False else "sample indices not traced"
        if div.contents_differ is False:
            checked += ", same batch contents"
        causes.append(f"{COMPUTATION_DIFFERED} at {where} ({checked}, same code, same environment)")
    return causes
