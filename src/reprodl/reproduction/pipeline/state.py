"""What the stages of a reproduction hand on: each stage's result, typed and frozen.

:class:`Request` (the arguments) -> :class:`Plan` -> :class:`Checks` -> :class:`RunResult` ->
:class:`Compared` -> :class:`ReproductionReport` (judged, then explained). A stage reads the
results of the stages before it and returns its own; none is changed after it is made.

Example:
    >>> Request.of("/models/m").tol.atol >= 0
    True
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from reprodl.errors import ExitCode
from reprodl.modeldataset.verify import DataCheck
from reprodl.provenance import ProvenanceRecord
from reprodl.reproduction.code import CodeCheck
from reprodl.reproduction.compare import Tolerance
from reprodl.reproduction.divergence import Divergence, TraceComparer
from reprodl.reproduction.environment import EnvDifference, Expectation
from reprodl.reproduction.reexec import ReexecutionPlan
from reprodl.reproduction.replay import Replays
from reprodl.reproduction.verdict import Comparison, Reason, Verdict
from reprodl.store import StoredDataSet

if TYPE_CHECKING:  # the in-process runner's types: importing it imports torch
    from reprodl.reproduction.retrain import Original, Training

# in process (a built-in trainer's record), under torchrun (one by several processes), or by re-executing
# the recorded code (a start_run record)
RunKind = Literal["in-process", "torchrun", "re-executed"]


@dataclasses.dataclass(frozen=True)
class Request:
    """What was asked: :func:`~reprodl.reproduction.pipeline.reproduce`'s arguments, the tolerance parsed."""

    uri: str
    tol: Tolerance = dataclasses.field(default_factory=Tolerance)
    tolerance_given: bool = False
    output: str | None = None
    allow: tuple[str, ...] = ()
    model_class: type | None = None
    device: str | None = None
    seed: int | None = None
    progress: bool = False
    envelope: dict[str, Any] | None = None
    transforms: Mapping[str, Callable[[Any], Any]] | None = None
    trust_code: bool = False
    on_output: Callable[[str], None] | None = None
    stop_at_divergence: bool = False
    trusted_keys: tuple[str | os.PathLike[str], ...] = ()
    data: Mapping[str, str] | None = None
    world_size: int | None = None
    replay: bool = True
    replay_window: int | None = None
    replay_from: str | None = None
    code_digest: str | None = None  # the digest the user trusted at the prompt: the code run must have it
    t0: float = dataclasses.field(default_factory=time.perf_counter)

    @classmethod
    def of(
        cls,
        uri: str,
        *,
        tolerance: Tolerance | str | float | None = None,
        allow: Iterable[str] = (),
        trusted_keys: Iterable[str | os.PathLike[str]] = (),
        **options: Any,
    ) -> Request:
        """The request for ``uri``; ``tolerance`` as :func:`reproduce` takes it (a Tolerance, text, a number)."""
        tol = tolerance if isinstance(tolerance, Tolerance) else Tolerance.parse(tolerance)
        given = tolerance is not None
        return cls(uri, tol, given, allow=tuple(allow), trusted_keys=tuple(trusted_keys), **options)


@dataclasses.dataclass(frozen=True)
class Plan:
    """What will run, and where: the model, its record, how it is re-run, and what was refused before."""

    request: Request
    model_ds: StoredDataSet
    record: ProvenanceRecord  # as recorded
    judged: ProvenanceRecord  # the one the re-run is compared with (at --world-size, its data where --data says)
    where: dict[str, str]  # recorded dataset URI -> the copy read instead
    kind: RunKind
    comparer: TraceComparer | None = None  # against the recorded step trace; None: there is none to compare
    original: Original | None = None  # in process and torchrun: the original's weights
    transforms: list[Any] = dataclasses.field(default_factory=list)  # in process: one per recorded dataset
    reasons: list[str] = dataclasses.field(default_factory=list)  # found while planning (a transform passed)
    reexecution: ReexecutionPlan | None = None  # re-executed: the command, its code and its digest


@dataclasses.dataclass(frozen=True)
class Checks:
    """What was checked before anything ran, and the datasets opened to check them."""

    data: list[DataCheck]
    code: CodeCheck
    environment: list[EnvDifference]
    expectation: Expectation | None  # predicted from the two environments (re-executed: after the run)
    opened: dict[str, StoredDataSet]
    seconds: float


@dataclasses.dataclass(frozen=True)
class RunResult:
    """The re-run: its record, where it was kept, how long it took, and what was read from it before a
    temporary output went away."""

    new_record: ProvenanceRecord
    reproduction_uri: str | None  # None: not kept
    seconds: float
    training: Training | None = None  # in process and torchrun: the rebuilt (and re-trained) model
    new_weights: dict[str, Any] | None = None  # re-executed: its saved weights
    new_trace: Any = None  # re-executed and torchrun: its step trace (None: it has none)
    new_oplogs: Any = None  # re-executed: its operation logs


@dataclasses.dataclass(frozen=True)
class Compared:
    """The re-run beside the original: the comparison the verdict reads, and the environments'."""

    comparison: Comparison
    environment: list[EnvDifference]
    expectation: Expectation | None
    reasons: list[str]  # found before judging (how the rebuilt training differs, a stopped re-run)


@dataclasses.dataclass(frozen=True)
class ReproductionReport:
    """What :func:`reproduce` found; ``verdict`` is identical, within tolerance or differs."""

    original_uri: str
    verdict: Verdict
    mode: str
    reasons: list[str] = dataclasses.field(default_factory=list)
    reproduction_uri: str | None = None
    data_checks: list[DataCheck] = dataclasses.field(default_factory=list)
    code: CodeCheck | None = None
    environment_differences: list[EnvDifference] = dataclasses.field(default_factory=list)
    weights: dict[str, Any] = dataclasses.field(default_factory=dict)
    metrics: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    predictions: dict[str, Any] = dataclasses.field(default_factory=dict)
    data_order_matches: bool | None = None
    envelope: dict[str, Any] | None = None
    tolerance: dict[str, float] = dataclasses.field(default_factory=dict)
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    # Predicted from the two environments before re-running; ``held`` settled by the verdict.
    expectation: Expectation | None = None
    divergence: Divergence | None = None
    # The reasons, typed: each a Reason(kind, text); ``reasons`` holds their texts.
    why: list[Reason] = dataclasses.field(default_factory=list)
    # reproduce --world-size: the processes and batches of both runs, and whether the result depends on them.
    world_size: dict[str, Any] | None = None
    # The counterfactual replays (:mod:`..replay`), when the re-run differed and factors differed.
    replays: Replays | None = None

    @property
    def ok(self) -> bool:
        return self.verdict in ("identical", "within tolerance")

    @property
    def exit_code(self) -> int:
        return int(ExitCode.OK if self.ok else ExitCode.FAILED)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``reprodl reproduce --json``): the fields, typed parts as their dicts, and ``ok``."""
        return {
            **dataclasses.asdict(self),
            "data_checks": [c.to_dict() for c in self.data_checks],
            "code": self.code.to_dict() if self.code is not None else {},
            "environment_differences": [d.to_dict() for d in self.environment_differences],
            "expectation": self.expectation.to_dict() if self.expectation is not None else None,
            "divergence": self.divergence.to_dict() if self.divergence is not None else None,
            "replays": self.replays.to_dict() if self.replays is not None else None,
            "ok": self.ok,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)


@dataclasses.dataclass(frozen=True)
class ReplayAsk:
    """What a replay process must be told to re-run as this reproduction did (the objects passed in Python
    cannot be, so their presence rules a replay out)."""

    trust_code: bool
    data: Mapping[str, str]
    trusted_keys: tuple[str, ...]
    allow: tuple[str, ...]
    objects: bool = False  # model_class= or transforms= objects were passed

    def arguments(self) -> list[str]:
        out = ["--trust-code"] if self.trust_code else []
        out += [a for role, uri in self.data.items() for a in ("--data", f"{role}={uri}")]
        out += [a for key in self.trusted_keys for a in ("--trusted-key", key)]
        return out + [a for name in self.allow for a in ("--allow", name)]


def kept_checkpoint(plan: Plan) -> tuple[Path, int] | None:
    """The re-run's checkpoint after its last step that matched the record (replays start there)."""
    return plan.comparer.kept if plan.comparer is not None and plan.kind != "re-executed" else None


__all__ = ["Checks", "Compared", "Plan", "ReplayAsk", "ReproductionReport", "Request", "RunResult"]
