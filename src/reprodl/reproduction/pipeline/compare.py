"""Stage 4, compare: the re-run beside the original: weights, step trace, metrics, predictions, data order.

In process the re-trained model's weights are compared, its predictions beside the original's when the
weights differ, and its trace was compared step by step while it trained. A torchrun or re-executed
re-run's trace is compared here; a re-execution's logged metrics are compared entry by entry, and its
environment (recorded by its own run) with the original's.

Example:
    >>> compare(planned, checks, ran).comparison.weights["identical"]     # doctest: +SKIP
    True
"""

from __future__ import annotations

from reprodl.provenance import ProvenanceRecord
from reprodl.reproduction.code import CodeCheck
from reprodl.reproduction.compare import compare_metrics, compare_predictions
from reprodl.reproduction.divergence import Divergence, TraceComparer, input_changes, no_trace
from reprodl.reproduction.environment import EnvDifference, rerun_environment
from reprodl.reproduction.pipeline.state import Checks, Compared, Plan, RunResult
from reprodl.reproduction.reexec import compare_logged, order_matches
from reprodl.reproduction.verdict import Comparison
from reprodl.reproduction.weightdiff import compare_models, saved_weights


def compare(plan: Plan, checks: Checks, ran: RunResult) -> Compared:
    """What the verdict reads: the comparison, the environments' differences and the prediction made of them."""
    if plan.kind == "re-executed":
        return _reexecuted(plan, ran)
    original, training, new = plan.original, ran.training, ran.new_record
    assert original is not None and training is not None
    comparer = plan.comparer
    if plan.kind == "torchrun" and comparer is not None and ran.new_trace is not None:
        comparer.compare_all(ran.new_trace)
    record = original.record
    settings = list(training.reasons)
    if record.training.device != new.training.device:
        settings.append(f"device {record.training.device} -> {new.training.device}")
    divergence = divergence_of(
        comparer,
        code=checks.code,
        environment=checks.environment,
        settings=settings,
        mode=record.training.determinism.mode,
        record=record,
        new=new,
    )
    reasons = [*plan.reasons, *training.reasons]
    if divergence.stopped:
        reasons.append(f"the re-run was stopped at step {divergence.step}, its first divergent step")
    comparison = _in_process(plan, ran, divergence)
    return Compared(comparison, checks.environment, checks.expectation, reasons)


def _in_process(plan: Plan, ran: RunResult, divergence: Divergence) -> Comparison:
    """The re-trained model beside the original: weights, metrics, data order, predictions."""
    original, training, request = plan.original, ran.training, plan.request
    assert original is not None and training is not None
    record, model = original.record, training.model
    new_state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    # every saved model's weights (a record the built-in trainer made saves one, under its default name)
    name = record.model_components()[0].name
    weights = compare_models({name: original.state}, {name: new_state}, request.tol)
    roles = training.roles
    eval_sets = roles["test"] or roles["valid"] or roles["train"]
    original_model = None
    if not weights["identical"]:
        from reprodl.reproduction.rebuild import rebuild_model  # here: a re-executed run's comparison needs no torch

        # Bit-identical weights in the same class predict the same: one evaluation serves both.
        original_model = rebuild_model(record, original.model_ds, allow=request.allow, model_class=request.model_class)
        original_model.load_state_dict(original.state)
    model.cpu()
    return Comparison(
        weights=weights,
        metrics=compare_metrics(record, ran.new_record),
        predictions=compare_predictions(original_model, model, eval_sets[0]),
        data_order_matches=record.training.data_order_digests == ran.new_record.training.data_order_digests,
        divergence=divergence,
    )


def _reexecuted(plan: Plan, ran: RunResult) -> Compared:
    """A re-executed run's own record against the original's (its code is the stored code: not a cause)."""
    record, new, model_ds = plan.record, ran.new_record, plan.model_ds
    assert ran.new_weights is not None
    weights = compare_models(saved_weights(model_ds, record), ran.new_weights, plan.request.tol)
    comparer = plan.comparer if ran.new_trace is not None else None
    if comparer is not None:
        comparer.oplogs = ran.new_oplogs
        comparer.compare_all(ran.new_trace)
    environment, expectation = rerun_environment(record, new)
    was, now = record.training.device, new.training.device
    settings = [] if was == now else [f"device {was} -> {now}"]
    mode = record.training.determinism.mode
    divergence = divergence_of(
        comparer, code=None, environment=environment, settings=settings, mode=mode, record=record, new=new
    )
    comparison = Comparison(weights, compare_logged(record, new), {}, order_matches(record, new), divergence)
    return Compared(comparison, environment, expectation, [])


def divergence_of(
    comparer: TraceComparer | None,
    *,
    code: CodeCheck | None,
    environment: list[EnvDifference],
    settings: list[str],
    mode: str = "bitwise",
    record: ProvenanceRecord | None = None,
    new: ProvenanceRecord | None = None,
) -> Divergence:
    """The divergence section: the comparer's result (its causes argued from the two records when given),
    or why there is none."""
    if mode == "statistical":
        return no_trace("statistical mode: the re-run uses another seed, so its steps are not compared one by one")
    if comparer is None:
        return no_trace(
            "the original has no step trace (trained before reprodl recorded one): the first divergent step "
            "cannot be named"
        )
    inputs = input_changes(record, new) if record is not None and new is not None else []
    data = record.data if record is not None else []
    return comparer.result(code=code, environment=environment, settings=settings, inputs=inputs, data=data)
