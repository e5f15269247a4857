"""Stage 6, explain: why a re-run differed (counterfactual replays of the factors that differed), and the
verdict written on the reproduction kept with ``output``.

The divergence's causes and operations were argued from the two records while comparing
(:mod:`.compare`); here, when the re-run differs at a step and factors that change numerics differ,
each restorable factor is put back in a replay of the steps up to the divergence (:mod:`..replay`),
and the expectation is settled by what they show.

Example:
    >>> explain(planned, report).replays          # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import datetime
from pathlib import Path

from reprodl import keys
from reprodl.provenance import ProvenanceRecord
from reprodl.reproduction.pipeline.state import Plan, ReplayAsk, ReproductionReport, kept_checkpoint
from reprodl.reproduction.replay import replay_factors
from reprodl.reproduction.verdict import Reason
from reprodl.store import StoredDataSet, open_dataset


def explain(plan: Plan, report: ReproductionReport) -> ReproductionReport:
    """``report`` with its replays (unless ``replay=False``), its verdict recorded with the reproduction."""
    request = plan.request
    if request.replay:
        objects = bool(request.model_class or request.transforms)
        keys_ = tuple(map(str, request.trusted_keys))
        asked = ReplayAsk(bool(request.trust_code), request.data or {}, keys_, request.allow, objects)
        report = with_replays(report, plan.model_ds.uri, asked, kept=kept_checkpoint(plan))
    record_verdict(report, plan.model_ds, plan.record)
    return report


def with_replays(
    report: ReproductionReport, uri: str, asked: ReplayAsk, *, kept: tuple[Path, int] | None = None
) -> ReproductionReport:
    """The report with its counterfactual replays (:mod:`..replay`) when it differs at a step and factors that
    change numerics differ; the expectation settled by them and their conclusion among the reasons and causes.
    ``kept``: the re-run's checkpoint after the last step that matched the record (the replays start there)."""
    expectation, div = report.expectation, report.divergence
    if report.verdict == "identical" or expectation is None or not expectation.factors:
        return report
    if div is None or div.step is None:
        return report
    if asked.objects:
        note = "no replay: model_class= or transforms= objects cannot be passed to a replay process"
        return dataclasses.replace(report, reasons=[*report.reasons, note], why=[*report.why, Reason("replay", note)])
    replays = replay_factors(uri, expectation.factors, window=div.step, arguments=asked.arguments(), start=kept)
    confirmed = bool(replays.confirmed) if replays.runs else None
    line = f"{replays.conclusion} (replays of steps {replays.start}..{replays.window}: {replays.seconds:.1f}s)"
    return dataclasses.replace(
        report,
        replays=replays,
        expectation=expectation.settle(report.verdict, confirmed=confirmed),
        reasons=[*report.reasons, line],
        why=[*report.why, Reason("replay", line)],
        divergence=dataclasses.replace(div, causes=[replays.conclusion, *div.causes]),
        timings={**report.timings, "replays_s": replays.seconds},
    )


def record_verdict(report: ReproductionReport, model_ds: StoredDataSet, record: ProvenanceRecord) -> None:
    """Write the verdict on the reproduction kept with ``output`` (annotation ``reprodl_reproduction``).

    What was reproduced (URI, UUID, record digest), the verdict, mode and reasons: what
    ``reprodl catalog reproductions`` lists. An annotation stays writable, so the record digest
    does not cover it; the reproduction's own record names the model it reproduces.
    """
    if report.reproduction_uri is None:
        return
    open_dataset(report.reproduction_uri).put_annotation(
        keys.REPRODUCTION_RESULT,
        {
            "verdict": report.verdict,
            "mode": report.mode,
            "original_uri": model_ds.uri,
            "original_uuid": model_ds.uuid,
            "original_record_digest": record.digest,
            "reasons": report.reasons[:20],
            "judged_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        },
    )
