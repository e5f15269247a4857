"""Counterfactual replay: which differing factor made a re-run differ, proven by re-running with it put back.

When a re-run differs from its record at a first divergent step and factors that change numerics
differ (:mod:`.factors`), :func:`replay_factors` re-runs the window up to that step once per factor
this machine can restore, each in a fresh process (``python -m reprodl.cli reproduce URI
--replay-window STEP --no-replay``) whose environment has that one factor set back to its recorded
value. A factor whose replay brings the window back bit for bit is the cause, confirmed by replay;
factors that cannot be restored here are listed as unconfirmed; when no replay brings the bits
back, the conclusion says so. The in-process trainer stops at the window's end; a start_run script
re-runs to its end.

Where a replay starts (``start``): a finished model dataset holds no checkpoint of its training
(they live in its staging directory until it is frozen, for a resume). So when the record says the
training checkpointed (``training.checkpoint_every``, built-in trainer), the re-run checkpoints at
the same epochs and keeps a copy of its last checkpoint after which every step still matched the
record (:meth:`.TraceComparer.checkpoint_written`): the step trace compared the digests of every
model tensor and of the optimiser state, the batch indices and inputs and the loss, so its state
there is the record's. Each replay resumes from it (``--replay-from``) and replays only the steps
after it. Otherwise (no checkpoints, a start_run record, a divergence before the first checkpoint)
a replay starts at step 1. This is also what makes a late divergence provable: a training resumed
under another factor than it started with records only the later one, and a replay from step 1
with that factor put back would differ from the first step on.

Example:
    >>> report = reproduce(uri)                       # doctest: +SKIP
    >>> report.replays.conclusion                     # doctest: +SKIP
    'cause confirmed by replay: ATen CPU capability AVX2 -> AVX512'
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from reprodl.reproduction.factors import Factor

Outcome = Literal["confirmed", "not confirmed", "failed"]
CONFIRMED = "cause confirmed by replay"


@dataclasses.dataclass(frozen=True)
class Replay:
    """One replay: the ``factor`` put back, what came of it, the step where the replay left the record
    (None: it matched through the window), its wall time, and the step it started at (``start``)."""

    factor: Factor
    outcome: Outcome
    divergent_step: int | None
    seconds: float
    detail: str = ""
    start: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "factor": self.factor.to_dict(), "label": self.factor.label}


@dataclasses.dataclass(frozen=True)
class Replays:
    """The replays of a differing re-run: the window (steps ``start``..``window``), each replay, the factors
    that could not be restored here, the conclusion (one line), and the replays' total cost in seconds."""

    window: int
    runs: list[Replay]
    unrestorable: list[Factor]
    conclusion: str
    seconds: float
    start: int = 1

    @property
    def confirmed(self) -> list[Factor]:
        return [r.factor for r in self.runs if r.outcome == "confirmed"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "start": self.start,
            "window": self.window,
            "runs": [r.to_dict() for r in self.runs],
            "unrestorable": [f.to_dict() for f in self.unrestorable],
            "confirmed": [f.label for f in self.confirmed],
            "conclusion": self.conclusion,
            "seconds": self.seconds,
        }


def replay_factors(
    uri: str,
    factors: Iterable[Factor],
    *,
    window: int,
    arguments: Iterable[str] = (),
    timeout: float | None = None,
    start: tuple[Path, int] | None = None,
) -> Replays:
    """Replay steps 1..``window`` of ``uri``'s training once per restorable factor, that factor put back.

    ``arguments``: more ``reprodl reproduce`` options each replay needs (``--trust-code``, ``--data``...).
    ``start``: a checkpoint of the re-run and its step, every step up to it matched the record: the replays
    resume from it (``--replay-from``) and replay the steps after it only.
    """
    factors, t0 = list(factors), time.perf_counter()
    args = list(arguments) + (["--replay-from", str(start[0])] if start is not None else [])
    first = start[1] + 1 if start is not None else 1
    runs = [
        _replay_one(uri, f, window=(first, window), arguments=args, timeout=timeout) for f in factors if f.restorable
    ]
    unrestorable = [f for f in factors if not f.restorable]
    return Replays(window, runs, unrestorable, conclusion(runs, unrestorable), time.perf_counter() - t0, start=first)


def conclusion(runs: list[Replay], unrestorable: list[Factor]) -> str:
    """One line: the confirmed cause(s); else which factors were put back and still differ, and which
    are unconfirmed (a replay that failed, a factor that cannot be restored here): never more than that."""
    confirmed = [r.factor.label for r in runs if r.outcome == "confirmed"]
    if confirmed:
        return f"{CONFIRMED}: " + "; ".join(confirmed)
    left = [f"{r.factor.label} (the replay failed: {r.detail})" for r in runs if r.outcome == "failed"]
    left += [f"{f.label} (cannot be restored here)" for f in unrestorable]
    unconfirmed = f"unconfirmed: {'; '.join(left)}" if left else ""
    tried = ", ".join(r.factor.label for r in runs if r.outcome == "not confirmed")
    if not tried:
        none = "no replay completed" if runs else "no factor could be restored on this machine, so none was replayed"
        return f"{none}; {unconfirmed}" if unconfirmed else none
    explained = f"no restorable factor explains the divergence: with each put back ({tried}) the window still differs"
    return f"{explained}; {unconfirmed}" if unconfirmed else explained


def _replay_one(
    uri: str, factor: Factor, *, window: tuple[int, int], arguments: list[str], timeout: float | None
) -> Replay:
    """One replay of the steps ``window`` (first, last) in a fresh process whose environment has ``factor`` put back."""
    (first, window_end), env = window, replay_environment(factor.restore or {})
    command = [sys.executable, "-m", "reprodl.cli", "reproduce", uri, "--json", "--quiet", "--no-replay"]
    command += ["--replay-window", str(window_end), *arguments]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return Replay(factor, "failed", None, time.perf_counter() - t0, f"the replay ran past {timeout}s", first)
    seconds = time.perf_counter() - t0
    try:
        divergence = json.loads(proc.stdout).get("divergence") or {}
    except json.JSONDecodeError:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return Replay(factor, "failed", None, seconds, f"the replay exited {proc.returncode}: {tail[0][:300]}", first)
    step, compared = divergence.get("step"), int(divergence.get("compared_steps") or 0)
    if step is None and compared >= window_end - first + 1 or step is not None and step > window_end:
        return Replay(
            factor, "confirmed", step, seconds, f"steps {first}..{window_end} bit for bit with it put back", first
        )
    if step is None:
        return Replay(factor, "failed", None, seconds, divergence.get("note") or "no step trace was compared", first)
    return Replay(factor, "not confirmed", step, seconds, f"still differs from step {step} with it put back", first)


def replay_environment(restore: Mapping[str, str | None]) -> dict[str, str]:
    """This process's environment with ``restore`` applied (None: unset), reprodl importable as here."""
    env = dict(os.environ)
    for name, value in restore.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    here = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH", "")) if p)
    return env
