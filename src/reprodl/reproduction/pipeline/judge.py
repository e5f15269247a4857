"""Stage 5, judge: the one verdict (:func:`reprodl.reproduction.verdict.judge`) and the report of it.

A statistical-mode model is judged against its multi-run envelope when there is one; a re-executed
run's code is the stored code, so the code is not a cause. At ``--world-size`` the report says whether
the result depends on the number of processes.

Example:
    >>> judge(planned, checks, ran, compared).verdict      # doctest: +SKIP
    'identical'
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from reprodl import keys
from reprodl.reproduction import verdict
from reprodl.reproduction.pipeline.state import Checks, Compared, Plan, ReproductionReport, RunResult
from reprodl.reproduction.worldsize import world_size_noted
from reprodl.store import StoredDataSet


def judge(plan: Plan, checks: Checks, ran: RunResult, compared: Compared) -> ReproductionReport:
    """The report: the verdict, its reasons, and every check and comparison it was judged on."""
    request, record, in_process = plan.request, plan.judged, plan.kind != "re-executed"
    envelope = request.envelope
    if in_process and envelope is None and record.training.determinism.mode == "statistical":
        envelope = find_envelope(plan.model_ds)
    judgement = verdict.judge(
        record,
        ran.new_record,
        compared.comparison,
        code=checks.code if in_process else None,  # re-executed: the stored code ran, so it is not a cause
        environment=compared.environment,
        expectation=compared.expectation,
        tol=request.tol,
        tolerance_given=request.tolerance_given,
        envelope=envelope if in_process else None,
        reasons=compared.reasons,
    )
    timings = {"data_check_s": checks.seconds} if in_process else {}
    timings.update(training_s=ran.seconds, original_training_s=record.results.wall_time_s)
    rerun_wall = ran.new_record.results.wall_time_s
    if not in_process and rerun_wall is not None:  # like for like: each record's training time, and the process's
        timings.update(training_s=rerun_wall, process_s=ran.seconds)
    timings["total_s"] = time.perf_counter() - request.t0
    comparison = compared.comparison
    report = ReproductionReport(
        original_uri=plan.model_ds.uri,
        verdict=judgement.verdict,
        mode=record.training.determinism.mode,
        reasons=judgement.reasons,
        reproduction_uri=ran.reproduction_uri,
        data_checks=checks.data,
        code=checks.code,
        environment_differences=compared.environment,
        weights=comparison.weights,
        metrics=comparison.metrics,
        predictions=comparison.predictions,
        data_order_matches=comparison.data_order_matches,
        envelope=judgement.envelope if in_process else None,
        tolerance=dataclasses.asdict(request.tol),
        timings=timings,
        expectation=compared.expectation.settle(judgement.verdict, bits_back=verdict.bits_back(compared.comparison))
        if compared.expectation is not None
        else None,
        why=judgement.why,
        divergence=comparison.divergence,
    )
    return world_size_noted(report, plan.record, request.world_size)  # --world-size: does the result depend on it?


def find_envelope(model_ds: StoredDataSet) -> dict[str, Any] | None:
    """The multi-run summary this model belongs to, if one was written."""
    uri = model_ds.get_annotation(keys.SUMMARY_URI)
    if not uri:
        return None
    from reprodl.training.multirun import load_summary

    try:
        return load_summary(uri)
    except Exception:  # noqa: BLE001 - an unreachable summary leaves the plain tolerance
        return None
