"""Judging a reproduction: ONE verdict (identical, within tolerance, differs) with typed reasons.

Both ways a model comes back (rebuilt in process, or its recorded code re-executed) gather the
same :class:`Comparison` and call :func:`judge`. The rules (the contract, docs/formats.md):

* ``identical``: every saved model's weights bit-equal (each model compared by name), every
  traced step equal and the same number of optimiser steps;
* a different number of steps (an interrupted original, a longer re-run) is ``differs``;
* weights and trace bit for bit but a recorded metric value not (the evaluation changed) is
  ``differs`` (``within tolerance`` when a given tolerance holds them);
* otherwise, when the expectation was bitwise (the record's mode, and the two environments
  predict the same bits) and the user gave no ``--tolerance``, the verdict is ``differs``
  whatever the metrics say; the first divergent step and its cause are in the divergence;
* ``within tolerance`` only when the expectation was statistical or a tolerance was given, and
  the weights, final metrics and predictions are within it. A divergence in the step trace is
  never hidden by equal saved weights.

Each :class:`Reason` has a ``kind`` a program can test and a ``text`` a person reads.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, Literal

from reprodl.provenance import ProvenanceRecord
from reprodl.reproduction.code import CodeCheck
from reprodl.reproduction.compare import BAND_Z, Tolerance, default_bands, envelope_check, statistical_metrics_ok
from reprodl.reproduction.divergence import Divergence, input_changes
from reprodl.reproduction.environment import EnvDifference, Expectation, restore_text

Verdict = Literal["identical", "within tolerance", "differs"]
ReasonKind = Literal[
    "given",  # a reason found before judging (a transform passed, the re-run stopped...)
    "unverified data",
    "environment",
    "packages",
    "device",
    "code",
    "data order",
    "data order not recorded",
    "data",  # a dataset's recorded digest changed in the re-run's own record
    "initial weights",
    "seeds",
    "steps",
    "logged",
    "trace",
    "weights",
    "bitwise expected",
    "run to run",
    "replay",
    "binomial band",
    "metrics",
    "statistical",
    "nondeterminism",
]


@dataclasses.dataclass(frozen=True)
class Reason:
    """One reason of a verdict: what kind of evidence (``kind``) and the line a person reads (``text``)."""

    kind: ReasonKind
    text: str

    def __str__(self) -> str:
        return self.text

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "text": self.text}


@dataclasses.dataclass(frozen=True)
class Comparison:
    """The re-run beside the original: weights, per-epoch metrics, predictions (empty when not
    compared, as for a re-executed run), data order and the step traces (``divergence``)."""

    weights: dict[str, Any]
    metrics: list[dict[str, Any]]
    predictions: dict[str, Any]
    data_order_matches: bool | None
    divergence: Divergence | None = None


@dataclasses.dataclass(frozen=True)
class Judgement:
    """The verdict, every reason (typed), and the envelope check (statistical mode with an envelope)."""

    verdict: Verdict
    why: list[Reason]
    envelope: dict[str, Any] | None = None

    @property
    def reasons(self) -> list[str]:
        """The reasons' texts."""
        return [r.text for r in self.why]


def judge(
    record: ProvenanceRecord,
    new: ProvenanceRecord,
    comparison: Comparison,
    *,
    code: CodeCheck | None,
    environment: Sequence[EnvDifference],
    expectation: Expectation | None,
    tol: Tolerance,
    tolerance_given: bool = False,
    envelope: dict[str, Any] | None = None,
    reasons: Sequence[str | Reason] = (),
) -> Judgement:
    """Judge the re-run ``new`` of ``record`` by the rules above; ``reasons`` found earlier come first."""
    found = [r if isinstance(r, Reason) else Reason("given", r) for r in reasons]
    found += _unverified(record) + environment_reasons(environment)
    found += setting_reasons(record, new, code, data_order_matches=comparison.data_order_matches)
    found += _input_reasons(record, new, comparison)
    steps_ok = _steps_reasons(record, new, found, comparison.divergence)
    if not steps_ok:
        return Judgement("differs", found + _difference_reasons(record, comparison, nondeterminism=False))
    came_back = bits_back(comparison)
    changed = _metric_changes(comparison) if came_back else []
    if changed:
        found.append(_metrics_reason(changed))
    if record.training.determinism.mode == "statistical":
        if came_back and not changed:
            return Judgement("identical", found)
        return _judge_statistical(record, new, comparison, tol, envelope, found, tolerance_given=tolerance_given)
    if came_back and not changed:
        return Judgement("identical", found)
    if came_back:  # bit for bit, but what the run logged did not come back
        if tolerance_given:
            return Judgement("within tolerance" if _within(record, comparison, tol, {}) else "differs", found)
        return Judgement("differs", found)
    found += _difference_reasons(record, comparison, nondeterminism=not found)
    if expectation is not None and expectation.expected == "bitwise" and not tolerance_given:
        found.append(
            Reason(
                "bitwise expected",
                "bitwise expected (same environment and deterministic settings) and it did not hold: differs "
                "whatever the metrics say (pass --tolerance to judge within a tolerance)",
            )
        )
        return Judgement("differs", found)
    if expectation is not None and expectation.restorable and not tolerance_given:
        found.append(_restorable_reason(expectation))
        return Judgement("differs", found)
    limits = _default_limits(record, comparison, found) if not tolerance_given else {}
    return Judgement("within tolerance" if _within(record, comparison, tol, limits) else "differs", found)


def _metric_changes(comparison: Comparison) -> list[dict[str, Any]]:
    """The compared metrics whose re-run value is not the recorded one (NaN in both is the same)."""
    return [r for r in comparison.metrics if not _same_value(r.get("original"), r.get("reproduction"))]


def _same_value(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return bool(a == b)


def _metrics_reason(changed: list[dict[str, Any]]) -> Reason:
    """The metrics that did not come back although the weights and the trace did."""
    shown = "; ".join(
        f"{r['metric']} at {r.get('at', 'epoch')} {r['epoch']} {r['original']!r} -> {r['reproduction']!r}"
        for r in changed[:3]
    ) + (f"; and {len(changed) - 3} more" if len(changed) > 3 else "")
    return Reason(
        "metrics",
        f"the weights and every traced step came back bit for bit, but {len(changed)} recorded metric value(s) "
        f"did not: {shown} (what the run evaluated or logged changed: its data, its code or something it read)",
    )


def _default_limits(record: ProvenanceRecord, comparison: Comparison, found: list[Reason]) -> dict[str, float]:
    """With no tolerance given and no envelope: each final accuracy's band from its binomial standard error,
    stated among the reasons."""
    bands = default_bands(record, comparison.metrics)
    for name, b in bands.items():
        found.append(
            Reason(
                "binomial band",
                f"{name} judged within ±{b['band']:.4f}: {BAND_Z:g} binomial standard errors sqrt(p(1-p)/n) of "
                f"p = {b['p']:.4f} on n = {b['n']} evaluated items (no --tolerance, no envelope)",
            )
        )
    return {name: b["band"] for name, b in bands.items()}


def _restorable_reason(expectation: Expectation) -> Reason:
    """run_to_run with every differing factor restorable here: the record's bits are within reach, not reached."""
    labels = "; ".join(f.label for f in expectation.factors)
    how = " ".join(restore_text(f) for f in expectation.factors)
    return Reason(
        "run to run",
        f"run_to_run expected: the same bits under the recorded factors, and every factor that differs here "
        f"({labels}) can be restored on this machine; re-run with `{how}` to reproduce it bit for bit: differs "
        "whatever the metrics say (pass --tolerance to judge within a tolerance)",
    )


def bits_back(comparison: Comparison) -> bool:
    """Whether every saved model's weights and every traced step came back bit for bit."""
    return bool(comparison.weights.get("identical")) and _trace_ok(comparison.divergence)


def _trace_ok(div: Divergence | None) -> bool:
    """No divergent step (or no trace to compare)."""
    return div is None or div.step is None


def stopped_early(record: ProvenanceRecord) -> bool:
    """Whether a built-in trainer's record holds fewer epochs than its ``n_epochs`` (the training was
    stopped early, or the record claims more epochs than it trained): its re-run is stopped one
    optimiser step past the recorded ones, so that it is as long as the training the record describes."""
    t = record.training
    epochs, done = t.params.get("n_epochs", t.epochs), len(record.results.history)
    return record.code.run is None and isinstance(epochs, int) and epochs > done


def _steps_reasons(
    record: ProvenanceRecord, new: ProvenanceRecord, found: list[Reason], divergence: Divergence | None = None
) -> bool:
    """Whether both runs took as many optimiser steps (and logged as many entries); the reasons when not."""
    was, now = record.training.optimizer_steps, new.training.optimizer_steps
    ok = was is None or now is None or was == now
    if was is not None and now is not None and not ok:
        longer = "the re-run went further (was the original interrupted?)" if now > was else "the re-run stopped early"
        diverged = divergence.step if divergence is not None else None
        if diverged is not None and diverged <= min(was, now):  # a loop that stops on its own: a consequence
            longer = f"after the step trace diverged at step {diverged}"
        elif now > was and stopped_early(record):
            epochs, done = record.training.params.get("n_epochs", record.training.epochs), len(record.results.history)
            longer = (
                f"the original stopped in epoch {done} of its n_epochs={epochs:,}; the re-run, with the recorded "
                "settings, went on and was stopped one step past the recorded ones"
            )
        found.append(Reason("steps", f"optimiser steps differ: {was} recorded, {now} in the re-run ({longer})"))
    if len(record.results.logged) != len(new.results.logged):
        n_was, n_now = len(record.results.logged), len(new.results.logged)
        found.append(Reason("logged", f"logged metrics differ: {n_was} entries recorded, {n_now} in the re-run"))
    return ok


def _difference_reasons(record: ProvenanceRecord, comparison: Comparison, *, nondeterminism: bool) -> list[Reason]:
    """What differed: the step trace (where), the weights (how much)."""
    out = []
    div, w = comparison.divergence, comparison.weights
    if div is not None and div.step is not None:
        saved = record.results.saved_at_step
        where = f" (epoch {div.epoch}, batch {div.batch})" if div.epoch else ""
        text = f"the step trace differs from step {div.step}{where}"
        if w.get("identical"):
            at = f"at step {saved}" if saved is not None else "before it"
            text += f", although the saved weights (taken {at}) are bit-equal"
        out.append(Reason("trace", text))
    if not w.get("identical"):
        models = w.get("differing_models") or []  # several saved models: which of them differ
        where = f" ({', '.join(f'model {m!r}' for m in models)})" if len(w.get("models", [])) > 1 else ""
        out.append(
            Reason(
                "weights",
                f"weights differ{where}: {w['n_tensors'] - w['n_identical']} of {w['n_tensors']} tensors, "
                f"max abs diff {w['max_abs_diff']:.3g}",
            )
        )
    if nondeterminism:
        out.append(Reason("nondeterminism", "same environment, data and code: the computation differed"))
    return out


def _within(record: ProvenanceRecord, comparison: Comparison, tol: Tolerance, limits: dict[str, float]) -> bool:
    """Weights, the final metrics (each within its ``limits``, else ``tol``) and (when compared) the predictions
    within ``tol``."""
    w = comparison.weights
    last = max((r["epoch"] for r in comparison.metrics if r.get("epoch") is not None), default=0)
    metric_ok = all(
        r["abs_diff"] is None or r["abs_diff"] <= limits.get(r["metric"], tol.metric_abs)
        for r in comparison.metrics
        if r["epoch"] == last
    )
    predictions = comparison.predictions
    agree_ok = not predictions or predictions.get("agreement", 0.0) >= tol.agreement
    return bool(w.get("identical") or w.get("within_tolerance")) and metric_ok and agree_ok


def _unverified(record: ProvenanceRecord) -> list[Reason]:
    return [
        Reason(
            "unverified data",
            f"unverified data: the {r.role} data {r.name} ({r.input_type}) was recorded by class only; "
            "reprodl cannot tell whether it changed",
        )
        for r in record.data
        if r.source == "unverified"
    ]


def environment_reasons(environment: Sequence[EnvDifference]) -> list[Reason]:
    """One reason naming each differing environment field, one counting the differing packages."""
    fields = [d for d in environment if not d.is_package]
    n_packages = sum(1 for d in environment if d.is_package)
    out = []
    if fields:
        text = "environment differs: " + ", ".join(f"{d.what} {d.recorded} -> {d.now}" for d in fields)
        out.append(Reason("environment", text))
    if n_packages:
        out.append(Reason("packages", f"{n_packages} installed package version(s) differ"))
    return out


def _input_reasons(record: ProvenanceRecord, new: ProvenanceRecord, comparison: Comparison) -> list[Reason]:
    """The recorded inputs the re-run's own record shows changed (data digests, initial weights; seeds outside
    statistical mode, which re-seeds on purpose), each with its evidence, whatever the verdict."""
    statistical = record.training.determinism.mode == "statistical"
    came_back = comparison.weights.get("identical") and _trace_ok(comparison.divergence)
    out = []
    for change in input_changes(record, new):
        if change.kind == "seeds" and statistical:
            continue
        text = change.text
        if came_back:
            text += ", yet the model came back bit for bit (its weights and every traced step are equal)"
        out.append(Reason(change.kind, text))
    return out


def setting_reasons(
    record: ProvenanceRecord, new: ProvenanceRecord, code: CodeCheck | None, *, data_order_matches: bool | None
) -> list[Reason]:
    """What else the re-run did differently: the device, the code's commit, the data order."""
    out = []
    if record.training.device != new.training.device:
        out.append(Reason("device", f"device differs: {record.training.device} -> {new.training.device}"))
    if code is not None and code.same_commit is False:
        out.append(Reason("code", code.message))
    if data_order_matches is False:
        out.append(Reason("data order", "the order in which samples were seen differs (data-order digests)"))
    elif data_order_matches is None:
        why = record.training.data_order_not_recorded
        out.append(
            Reason(
                "data order not recorded",
                "data order not recorded (no loader of the run recorded its order): reprodl cannot tell whether "
                "it changed" + (f"; {why}" if why else ""),
            )
        )
    return out


def _judge_statistical(
    record: ProvenanceRecord,
    new: ProvenanceRecord,
    comparison: Comparison,
    tol: Tolerance,
    envelope: dict[str, Any] | None,
    reasons: list[Reason],
    *,
    tolerance_given: bool = False,
) -> Judgement:
    """Final metrics within the envelope (when given), the tolerance (when given), else the binomial band."""
    reasons.append(
        Reason(
            "statistical",
            f"statistical mode: re-run with seed {new.training.seeds.seed} (recorded "
            f"{record.training.seeds.seed}); judged on final metrics, not bits",
        )
    )
    checked = envelope_check(envelope, new) if envelope is not None else None
    if checked is not None:
        ok = bool(checked["within"])
    else:
        last = max((r["epoch"] for r in comparison.metrics if r.get("epoch") is not None), default=0)
        limits = _default_limits(record, comparison, reasons) if not tolerance_given else {}
        ok = statistical_metrics_ok(comparison.metrics, last or record.training.epochs, tol, limits)
    if not ok:
        outside = "final metrics fall outside the tolerance" + (" envelope" if envelope else "")
        reasons.append(Reason("metrics", outside))
    return Judgement("within tolerance" if ok else "differs", reasons, checked)
