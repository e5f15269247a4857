"""Judging a reproduction: the verdict (identical, within tolerance, differs) and the reasons.

Bitwise-mode models are judged weight for weight; statistical-mode models on their final
metrics, against a multi-run envelope when there is one. The reasons say what differed from
the recorded training (environment, device, code, data order) whatever the verdict.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Literal

from reprodl.provenance import ProvenanceRecord
from reprodl.reproduction.code import CodeCheck
from reprodl.reproduction.compare import Tolerance, envelope_check, statistical_metrics_ok
from reprodl.reproduction.environment import EnvDifference

Verdict = Literal["identical", "within tolerance", "differs"]


@dataclasses.dataclass(frozen=True)
class Comparison:
    """The re-run beside the original: weights, per-epoch metrics, predictions, data order."""

    weights: dict[str, Any]
    metrics: list[dict[str, Any]]
    predictions: dict[str, Any]
    data_order_matches: bool


@dataclasses.dataclass(frozen=True)
class Judgement:
    """The verdict, every reason, and the envelope check (statistical mode with an envelope)."""

    verdict: Verdict
    reasons: list[str]
    envelope: dict[str, Any] | None = None


def judge(
    record: ProvenanceRecord,
    new: ProvenanceRecord,
    comparison: Comparison,
    *,
    code: CodeCheck,
    environment: Sequence[EnvDifference],
    tol: Tolerance,
    envelope: dict[str, Any] | None = None,
    reasons: Sequence[str] = (),
) -> Judgement:
    """Judge the re-run ``new`` of ``record``; ``reasons`` found earlier come first."""
    found = [*reasons, *environment_reasons(environment)]
    found += setting_reasons(record, new, code, data_order_matches=comparison.data_order_matches)
    if record.training.determinism.mode == "statistical":
        return _judge_statistical(record, new, comparison, tol, envelope, found)
    return _judge_bitwise(record, comparison, tol, found)


def environment_reasons(environment: Sequence[EnvDifference]) -> list[str]:
    """One reason naming each differing environment field, one counting the differing packages."""
    fields = [d for d in environment if not d.is_package]
    n_packages = sum(1 for d in environment if d.is_package)
    out = []
    if fields:
        out.append("environment differs: " + ", ".join(f"{d.what} {d.recorded} -> {d.now}" for d in fields))
    if n_packages:
        out.append(f"{n_packages} installed package version(s) differ")
    return out


def setting_reasons(
    record: ProvenanceRecord, new: ProvenanceRecord, code: CodeCheck, *, data_order_matches: bool
) -> list[str]:
    """What else the re-run did differently: the device, the code's commit, the data order."""
    out = []
    if record.training.device != new.training.device:
        out.append(f"device differs: {record.training.device} -> {new.training.device}")
    if code.same_commit is False:
        out.append(code.message)
    if data_order_matches is False:
        out.append("the order in which samples were seen differs (data-order digests)")
    return out


def _judge_statistical(
    record: ProvenanceRecord,
    new: ProvenanceRecord,
    comparison: Comparison,
    tol: Tolerance,
    envelope: dict[str, Any] | None,
    reasons: list[str],
) -> Judgement:
    """Final metrics within the envelope (when given) or the tolerance: never identical."""
    reasons.append(
        f"statistical mode: re-run with seed {new.training.seeds.seed} (recorded "
        f"{record.training.seeds.seed}); judged on final metrics, not bits"
    )
    checked = envelope_check(envelope, new) if envelope is not None else None
    if checked is not None:
        ok = bool(checked["within"])
    else:
        ok = statistical_metrics_ok(comparison.metrics, record.training.epochs, tol)
    if not ok:
        reasons.append("final metrics fall outside the tolerance" + (" envelope" if envelope else ""))
    return Judgement("within tolerance" if ok else "differs", reasons, checked)


def _judge_bitwise(record: ProvenanceRecord, comparison: Comparison, tol: Tolerance, reasons: list[str]) -> Judgement:
    """Identical weights; else weights, final metrics and prediction agreement within ``tol``."""
    weights = comparison.weights
    if weights["identical"]:
        return Judgement("identical", reasons)
    nondeterminism = not reasons  # nothing else differed
    reasons.append(
        f"weights differ: {weights['n_tensors'] - weights['n_identical']} of "
        f"{weights['n_tensors']} tensors, max abs diff {weights['max_abs_diff']:.3g}"
    )
    if nondeterminism:
        reasons.append("same environment, data and code: non-determinism in the training")
    metric_ok = all(
        r["abs_diff"] is None or r["abs_diff"] <= tol.metric_abs
        for r in comparison.metrics
        if r["epoch"] == record.training.epochs
    )
    agree_ok = comparison.predictions.get("agreement", 0.0) >= tol.agreement
    ok = weights["within_tolerance"] and metric_ok and agree_ok
    return Judgement("within tolerance" if ok else "differs", reasons)
