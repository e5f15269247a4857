"""Time-overhead helpers for the bench scripts that compare durations (lower is better).

``_common`` compares rates (items/s, higher is better); the overhead benchmarks
(capture, provenance CLI, reproduce) compare wall times against a baseline instead:
``ratio = median(candidate) / median(baseline)`` and a target is met when the ratio is
``<=`` it. Runs are interleaved in alternating order (A B, B A, ...) so drift and slow
spells of a noisy machine fall on both sides; each figure is a median over the repeats,
beside the median of the per-round paired ratios (a second, drift-robust estimate).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import _common as C


def cpu_seconds() -> float:
    """User + system CPU time of this process and its waited-for children."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def runqueue_seconds() -> float:
    """Time this process's main thread spent ready to run but waiting for a CPU (Linux).

    Wall time minus its increase over a call is the call's wall time on an idle machine:
    what other processes on a busy machine took from it is removed; waits on I/O and on
    child processes stay in. 0.0 where /proc/self/schedstat is missing.
    """
    try:
        with open("/proc/self/schedstat") as fh:
            return int(fh.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def alternating(
    runs: dict[str, Callable[[], Any]],
    repeats: int,
    warmup: int = 1,
    on_round: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, dict[str, list]]:
    """Run each callable ``repeats`` times, round-robin in alternating order, after ``warmup`` rounds.

    Returns ``{name: {"wall": [...], "cpu": [...], "uncontended": [...], "extra": [...]}}``:
    wall time, CPU time (with children), wall time less run-queue wait (see
    :func:`runqueue_seconds`), and what each call returned (a dict of sub-timings, or None).
    """
    names = list(runs)
    for _ in range(warmup):
        for name in names:
            runs[name]()
    out: dict[str, dict[str, list]] = {n: {"wall": [], "cpu": [], "uncontended": [], "extra": []} for n in names}
    for r in range(repeats):
        order = names if r % 2 == 0 else names[::-1]
        this_round: dict[str, float] = {}
        for name in order:
            c0, q0 = cpu_seconds(), runqueue_seconds()
            t0 = time.perf_counter()
            extra = runs[name]()
            wall = time.perf_counter() - t0
            out[name]["wall"].append(wall)
            out[name]["cpu"].append(cpu_seconds() - c0)
            out[name]["uncontended"].append(wall - (runqueue_seconds() - q0))
            out[name]["extra"].append(extra)
            this_round[name] = wall
        if on_round:
            on_round(r, this_round)
    return out


def summary(values: list[float]) -> dict[str, Any]:
    return {
        "median_s": C.median(values),
        "min_s": min(values),
        "max_s": max(values),
        "times_s": [round(v, 6) for v in values],
    }


def overhead(
    name: str, candidate: str, baseline: str, cand: list[float], base: list[float], target: float | None, note: str = ""
) -> dict[str, Any]:
    """Ratio of median times (candidate / baseline) and the median of paired per-round ratios."""
    ratio = C.median(cand) / C.median(base)
    paired = [a / b for a, b in zip(cand, base)] if len(cand) == len(base) else []
    return {
        "name": name,
        "candidate": candidate,
        "baseline": baseline,
        "unit": "s",
        "candidate_median_s": C.median(cand),
        "baseline_median_s": C.median(base),
        "ratio": ratio,
        "paired_ratio_median": C.median(paired) if paired else None,
        "target_max_ratio": target,
        "status": None if target is None else ("PASS" if ratio <= target else "FAIL"),
        "note": note,
    }


def fmt_s(v: float) -> str:
    return f"{v * 1000:,.0f} ms" if v < 1 else f"{v:,.2f} s"


def write_report(
    bench: str,
    args: argparse.Namespace,
    params: dict[str, Any],
    comparisons: list[dict[str, Any]],
    measurements: dict[str, Any],
    notes: list[str] | None = None,
) -> Path:
    """Print the comparisons (and notes) and write bench-output/<bench>.json."""
    for c in comparisons:
        target = "" if c["target_max_ratio"] is None else f"  target <= {c['target_max_ratio']}x  {c['status']}"
        paired = "" if c["paired_ratio_median"] is None else f" (paired {c['paired_ratio_median']:.3f}x)"
        print(
            f"[{bench}] {c['name']}: {fmt_s(c['candidate_median_s'])} vs {c['baseline']} "
            f"{fmt_s(c['baseline_median_s'])} -> {c['ratio']:.3f}x{paired}{target}"
        )
    for line in notes or []:
        print(f"[{bench}] {line}")
    return C.write_doc(bench, args, params, comparisons, measurements, notes=notes or [])


_MISSING = object()


def _qualified(obj: Any) -> str:
    """``package.module`` for a module, ``package.module.Class`` for a class."""
    if isinstance(obj, types.ModuleType):
        return obj.__name__
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


class ContextPart(str):
    """The label of a part that returns a context manager (``@contextlib.contextmanager``): calling it does
    nothing yet, so its ``__enter__`` is timed under this label too, and its ``__exit__`` under ``exit_label``."""

    exit_label: str

    def __new__(cls, label: str, exit_label: str) -> ContextPart:
        part = super().__new__(cls, label)
        part.exit_label = exit_label
        return part


class _TimedContext:
    """A context manager whose enter and exit are timed (see :class:`ContextPart`)."""

    def __init__(self, cm: Any, watches: Stopwatches, label: ContextPart) -> None:
        self._cm, self._watches, self._label = cm, watches, label

    def __enter__(self) -> Any:
        t0 = time.perf_counter()
        try:
            return self._cm.__enter__()
        finally:
            self._watches.add(self._label, time.perf_counter() - t0)

    def __exit__(self, *exc: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return self._cm.__exit__(*exc)
        finally:
            self._watches.add(self._label.exit_label, time.perf_counter() - t0)


class Stopwatches:
    """Wrap functions (module attributes) to sum the time spent in each, per run."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}

    @contextlib.contextmanager
    def patched(self, targets: list[tuple[Any, str, str]]) -> Iterator[Stopwatches]:
        """``targets``: (object, attribute, label); restores the originals after.

        A target must be the name the timed code looks up when it calls (``module.f(...)``, or ``f(...)``
        in the module that did ``from x import f``): a missing one is refused (AttributeError naming the part
        and the target) rather than skipped, which would report the part as taking no time.
        """
        saved = []
        try:
            for obj, attr, label in targets:
                original = getattr(obj, attr, _MISSING)
                if original is _MISSING:
                    raise AttributeError(
                        f"bench part {label!r}: {_qualified(obj)}.{attr} does not exist (renamed or moved?): point "
                        "the part at the module through which the code calls it now"
                    )
                saved.append((obj, attr, original))
                setattr(obj, attr, self._wrap(original, label))
            yield self
        finally:
            for obj, attr, original in reversed(saved):
                setattr(obj, attr, original)

    def _wrap(self, fn: Callable[..., Any], label: str) -> Callable[..., Any]:
        def wrapper(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                result = fn(*a, **k)
            finally:
                self.add(label, time.perf_counter() - t0)
            return _TimedContext(result, self, label) if isinstance(label, ContextPart) else result

        wrapper.__wrapped__ = fn
        return wrapper

    def add(self, label: str, seconds: float) -> None:
        self.totals[label] = self.totals.get(label, 0.0) + seconds

    def take(self) -> dict[str, float]:
        out, self.totals = self.totals, {}
        return out


def median_of_dicts(rows: list[dict[str, float] | None]) -> dict[str, float]:
    keys = sorted({k for r in rows if r for k in r})
    return {k: C.median([r[k] for r in rows if r and k in r]) for k in keys}
