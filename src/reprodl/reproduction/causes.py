"""Why a reproduction left the original: the divergence causes, one table checked in order.

Each :class:`Cause` is a small entry: its name, the evidence it reads, and a function that
writes its lines (none when the evidence does not point at it). :func:`explain` asks every
entry of :data:`CAUSES`, in the table's order, what it finds at the first divergent step;
the lines are the ``causes`` of the :class:`~reprodl.reproduction.divergence.Divergence`.
A cause sees the lines written before it (``Finding.before``): "computation" writes its line
only when no recorded input changed.

Adding a cause is one function and one table line::

    >>> from reprodl.reproduction import causes
    >>> def clocks(f):                                              # doctest: +SKIP
    ...     return ["GPU clocks changed"] if ... else []
    >>> causes.CAUSES.insert(-2, causes.Cause("clocks", "nvidia-smi", clocks))   # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from reprodl.training.tracefiles import describe as describe_operation

if TYPE_CHECKING:
    from reprodl.reproduction.code import CodeCheck
    from reprodl.reproduction.divergence import Divergence, InputChange
    from reprodl.reproduction.environment import EnvDifference

COMPUTATION_DIFFERED = "no recorded input changed: the computation differed"


@dataclasses.dataclass(frozen=True)
class Evidence:
    """What a cause may cite: the code check, environment differences, changed settings, the recorded
    inputs that changed (:func:`~reprodl.reproduction.divergence.input_changes`) and the recorded data
    references."""

    code: CodeCheck | None = None
    environment: Sequence[EnvDifference] = ()
    settings: Sequence[str] = ()
    inputs: Sequence[InputChange] = ()
    data: Sequence[Any] = ()


@dataclasses.dataclass(frozen=True)
class Finding:
    """What every cause reads: the divergence, the first divergent step's rows compared (``first``:
    its ``indices`` and ``contents``, recorded and re-run), the evidence, where it happened
    (``step 37 (epoch 2, batch 5)``) and the lines the causes before this one wrote."""

    divergence: Divergence
    first: dict[str, Any]
    evidence: Evidence
    where: str
    before: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Cause:
    """One divergence cause: its ``name``, the evidence it ``reads`` (said in docs/architecture.md),
    and ``lines``, the function that writes what it finds (``[]``: not this cause)."""

    name: str
    reads: str
    lines: Callable[[Finding], list[str]]


def _data_order(f: Finding) -> list[str]:
    if not f.divergence.indices_differ:
        return []
    was, now = f.first["indices"]
    return [
        f"data order changed from {f.where}: the digest of the batch's sample indices differs "
        f"(recorded {was:016x}, re-run {now:016x})"
    ]


def _data(f: Finding) -> list[str]:
    changes = [c for c in f.evidence.inputs if c.kind == "data"]
    if not (f.divergence.contents_differ and not f.divergence.indices_differ):
        return [c.text for c in changes]
    was, now = f.first["contents"]
    indices = "same sample indices" if f.divergence.indices_differ is False else "sample indices not traced"
    batch = f"the batch at {f.where} holds a changed item ({indices}, its inputs' digest {was} -> {now})"
    learnt = [c for c in changes if c.role in ("train", None)]  # what a step's batch comes from
    others = [c.text for c in changes if c not in learnt]  # a valid or test set: named, never the batch's source
    if learnt:
        return [f"{c.text}; {batch}" for c in learnt] + others
    train = [r for r in f.evidence.data if r.role == "train"]
    if train and all(r.source == "dtool" for r in train):
        names = ", ".join(r.name for r in train)
        return [
            f"data: {batch}; the train dataset ({names}) matches its manifest, so how its items were read or "
            "transformed differs"
        ] + others
    return [f"data: {batch}; no recorded training data digest changed"] + others


def _recorded(kind: str) -> Callable[[Finding], list[str]]:
    """The lines of the recorded inputs of ``kind`` that the re-run's record shows changed."""

    def lines(f: Finding) -> list[str]:
        return [c.text for c in f.evidence.inputs if c.kind == kind]

    return lines


def _code(f: Finding) -> list[str]:
    code = f.evidence.code
    out = [c.text for c in f.evidence.inputs if c.kind == "code"]
    if code is not None and (code.same_commit is False or code.patch_applies is False):
        out.append(f"code changed: {code.message}")
    return out


def _settings(f: Finding) -> list[str]:
    return [f"setting changed: {s}" for s in f.evidence.settings]


def _environment(f: Finding) -> list[str]:
    out = []
    fields = [d for d in f.evidence.environment if not d.is_package]
    if fields:
        changed = ", ".join(f"{d.what} {d.recorded} -> {d.now}" for d in fields)
        out.append(f"environment changed: {changed} (the recorded environment beside this one)")
    n_packages = sum(1 for d in f.evidence.environment if d.is_package)
    if n_packages:
        out.append(f"environment changed: {n_packages} installed package version(s) differ")
    return out


def _random_draws(f: Finding) -> list[str]:
    """The global random generators' state after the divergent step (and the one before), recorded and re-run."""
    div = f.divergence
    if not div.rng_differ:
        return []
    if div.rng_before_differ:
        return [
            f"random draws differed before {f.where}: the global random generators' state already differed after "
            "the step before it (the steps' weights and optimiser state still equal): the re-run drew another "
            "number of random values earlier (a draw added or removed)"
        ]
    known = " (equal after the step before)" if div.rng_before_differ is False else ""
    return [
        f"random draws differed at {f.where}: the global random generators' state after it differs from the "
        f"recorded one{known}: the re-run drew another number of random values in that step (a dropout, an "
        "augmentation or a randn added or removed, or a draw whose size depends on the data)"
    ]


def _computation(f: Finding) -> list[str]:
    if f.before:
        return []
    div = f.divergence
    checked = "same sample indices" if div.indices_differ is False else "sample indices not traced"
    if div.contents_differ is False:
        checked += ", same batch contents"
    elif div.contents_differ is None:  # batches the loop made itself: only the recorded datasets are known equal
        checked += ", batch contents not traced"
    data = "same data" if div.contents_differ is False else "same recorded datasets"
    draws = ", random draws" if div.rng_differ is False else ""
    same = f"{data}, seeds{draws}, initial weights, code and environment"
    return [f"{COMPUTATION_DIFFERED} at {f.where} ({checked}, {same})"]


def _operation(f: Finding) -> list[str]:
    found = f.divergence.first_differing_operation
    return [] if found is None else [describe_operation(found)]


#: The causes, in the order they are checked and reported.
CAUSES: list[Cause] = [
    Cause("data order", "the digest of the divergent batch's sample indices, recorded and re-run", _data_order),
    Cause("data", "the datasets' digests in both records; the divergent batch's inputs digest", _data),
    Cause("initial weights", "the initial weights' digest in both records", _recorded("initial weights")),
    Cause("seeds", "the seeds in both records", _recorded("seeds")),
    Cause("code", "the code check (commit, patch) of the recorded code against this checkout", _code),
    Cause("settings", "the settings the reproduction changed (device, precision, ...)", _settings),
    Cause("environment", "the recorded environment beside this one (fields, then package versions)", _environment),
    Cause(
        "random draws",
        "the digest of the global random generators' state after the divergent step and the step before, recorded "
        "and re-run",
        _random_draws,
    ),
    Cause("computation", "the lines above: none, so the computation itself differed", _computation),
    Cause("operation", "the operation logs of the divergent step: its first differing operation", _operation),
]


def explain(div: Divergence, first: dict[str, Any], evidence: Evidence) -> list[str]:
    """The causes that fit the first divergent step, each citing its evidence: every entry of
    :data:`CAUSES`, in order."""
    where = f"step {div.step}" + (f" (epoch {div.epoch}, batch {div.batch})" if div.epoch else "")
    lines: list[str] = []
    for cause in CAUSES:
        lines += cause.lines(Finding(div, first, evidence, where, tuple(lines)))
    return lines
