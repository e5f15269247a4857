"""One-command reproduction: re-run a training from its record, compare, report.

The steps: open the model and check its data, code and environment (:mod:`.code`,
:mod:`.environment`); rebuild the training (:mod:`.rebuild`); train again; compare
(:mod:`.compare`); judge (:mod:`.verdict`).

Example:
    >>> report = reproduce("/models/digits_model")      # doctest: +SKIP
    >>> report.verdict                                  # doctest: +SKIP
    'identical'
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import tempfile
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from reprodl import keys
from reprodl.data.datasets import WrappedDataSet
from reprodl.errors import ExitCode, IntegrityError, ReproductionError
from reprodl.modeldataset.read import load_trace, load_weights, read_record
from reprodl.modeldataset.signing import signature_note
from reprodl.modeldataset.verify import DataCheck, check_data
from reprodl.provenance import ModelRef, ProvenanceRecord
from reprodl.reproduction.code import CodeCheck, check_code, check_patch
from reprodl.reproduction.compare import Tolerance, compare_metrics, compare_models, compare_predictions
from reprodl.reproduction.datamap import data_locations, relocated
from reprodl.reproduction.ddp import is_distributed
from reprodl.reproduction.divergence import Divergence, TraceComparer, input_changes, load_oplogs, no_trace
from reprodl.reproduction.environment import (
    EnvDifference,
    Expectation,
    check_environment,
    environment_differences,
)
from reprodl.reproduction.rebuild import (
    check_resources,
    open_recorded,
    rebuild_loss,
    rebuild_model,
    rebuild_optimizer,
    rebuild_scheduler,
    rebuild_transform,
    transform_differences,
)
from reprodl.reproduction.replay import Replays
from reprodl.reproduction.verdict import Comparison, Judgement, Reason, Verdict, judge, stopped_early
from reprodl.reproduction.worldsize import recorded_world_size, replanned, world_size_noted
from reprodl.store import StoredDataSet, open_dataset
from reprodl.training.capture import class_source_sha256
from reprodl.training.params import Parameters

__all__ = [
    "STATISTICAL_SEED_OFFSET",
    "CodeCheck",
    "DataCheck",
    "Divergence",
    "EnvDifference",
    "Expectation",
    "Reason",
    "ReproductionReport",
    "Tolerance",
    "Verdict",
    "check_code",
    "check_patch",
    "environment_differences",
    "reproduce",
]

# A statistical-mode re-run uses the recorded seed plus this, so it never coincides with a
# member of a multi-run (seeds base..base+N-1) by accident.
STATISTICAL_SEED_OFFSET = 100_003


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
    # The counterfactual replays (:mod:`.replay`), when the re-run differed and factors differed.
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
class _Original:
    """The model dataset to reproduce, its record and its weights."""

    model_ds: StoredDataSet
    record: ProvenanceRecord
    state: dict[str, torch.Tensor]


@dataclasses.dataclass(frozen=True)
class _Checks:
    """What was checked before training, and the datasets opened to check them."""

    data: list[DataCheck]
    code: CodeCheck
    environment: list[EnvDifference]
    opened: dict[str, StoredDataSet]
    seconds: float
    expectation: Expectation


@dataclasses.dataclass(frozen=True)
class _Training:
    """The rebuilt training: model, optimiser, loss, scheduler, datasets by role, parameters."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: Any
    scheduler: Any
    roles: dict[str, list[WrappedDataSet]]
    params: Parameters
    reasons: list[str]  # how the rebuilt training may differ from the recorded one


# --- the command ---------------------------------------------------------------------------
def reproduce(
    uri: str,
    *,
    output: str | None = None,
    tolerance: Tolerance | str | float | None = None,
    allow: Iterable[str] = (),
    model_class: type | None = None,
    device: str | None = None,
    seed: int | None = None,
    progress: bool = False,
    envelope: dict[str, Any] | None = None,
    transforms: Mapping[str, Callable[[Any], Any]] | None = None,
    trust_code: bool = False,
    on_output: Callable[[str], None] | None = None,
    stop_at_divergence: bool = False,
    trusted_keys: Iterable[str | os.PathLike[str]] = (),
    data: Mapping[str, str] | None = None,
    world_size: int | None = None,
    replay: bool = True,
    replay_window: int | None = None,
    replay_from: str | None = None,
) -> ReproductionReport:
    """Re-run the training recorded in the model dataset at ``uri`` and compare.

    A model made with :func:`reprodl.start_run` (the user's own loop) is reproduced by re-executing its
    recorded code (:mod:`reprodl.reproduction.reexec`), only with ``trust_code=True``; ``on_output`` then
    receives the script's output lines. Refuses to train (:class:`IntegrityError`, naming the items) if a
    training dataset changed. Bitwise-mode models are compared weight for weight; statistical-mode models are
    re-run with another seed (``seed``, default recorded + 100003) and judged on metrics and predictions,
    against a multi-run envelope when one is given. ``divergence`` names the first step whose trace differs,
    and why; ``stop_at_divergence`` stops the re-run there. Transforms are rebuilt from their recorded
    configs; one of your own must be passed (else :class:`ReproductionError`).

    Args:
        output: base URI to keep the reproduced model dataset in (default: a temporary directory).
        transforms: transform objects by role ("train", "valid", "test") instead of the recorded ones.
        trusted_keys: public keys the model must be signed by. data: another copy of a role's dataset.
        replay: replay a divergent window per restorable factor (:mod:`.replay`). replay_window, replay_from: one.
    """
    tol = tolerance if isinstance(tolerance, Tolerance) else Tolerance.parse(tolerance)
    given, objects, t0 = tolerance is not None, bool(model_class or transforms), time.perf_counter()
    record = read_record(model_ds := open_dataset(uri))
    check_resources(planned := replanned(record, world_size, uri), what=model_ds.uri)  # worker, process counts
    where, comparer = data_locations(record, data), None  # a copy of a dataset (refused unless the same), a moved one
    if record.code.run is not None:  # a start_run record: re-execute its code (with trust)
        run: dict[str, Any] = dict(output=output, tolerance=tol, seed=seed, on_output=on_output, data=where)
        report = _reexecute(model_ds, record, trust_code=trust_code, tolerance_given=given, keys=trusted_keys, **run)
    else:
        signature_note(model_ds, trusted_keys)  # refused here when a trusted key's signature fails
        original = _Original(model_ds, relocated(planned, where), load_weights(model_ds, record))
        options: dict[str, Any] = dict(transforms=transforms, envelope=envelope, allow=allow, model_class=model_class)
        options.update(tolerance_given=given, device=device, seed=seed, output=output, progress=progress)
        comparer = trace_comparer(model_ds, record, stop=stop_at_divergence, plan=(replay, replay_window, replay_from))
        report = _reproduce_in_process(original, tol, t0, comparer=comparer, **options)
    report = world_size_noted(report, record, world_size)  # reproduce --world-size: does the result depend on it?
    if replay:
        asked = ReplayAsk(bool(trust_code), data or {}, tuple(map(str, trusted_keys)), tuple(allow), objects)
        report = with_replays(report, model_ds.uri, asked, kept=comparer.kept if comparer is not None else None)
    record_verdict(report, model_ds, record)
    return report


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


def with_replays(
    report: ReproductionReport, uri: str, asked: ReplayAsk, *, kept: tuple[Path, int] | None = None
) -> ReproductionReport:
    """The report with its counterfactual replays (:mod:`.replay`) when it differs at a step and factors that
    change numerics differ; the expectation settled by them and their conclusion among the reasons and causes.
    ``kept``: the re-run's checkpoint after the last step that matched the record (the replays start there)."""
    from reprodl.reproduction.replay import replay_factors

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


def _reexecute(model_ds: Any, record: ProvenanceRecord, *, keys: Any, **run: Any) -> ReproductionReport:
    """A start_run record: re-execute its stored code (only with trust_code)."""
    from reprodl.reproduction.reexec import reproduce_by_reexecution

    return reproduce_by_reexecution(model_ds, record, trusted_keys=keys, **run)


def record_verdict(report: ReproductionReport, model_ds: StoredDataSet, record: ProvenanceRecord) -> None:
    """Write the verdict on the reproduction kept with ``output`` (annotation ``reprodl_reproduction``).

    What was reproduced (URI, UUID, record digest), the verdict, mode and reasons: what
    ``reprodl catalog reproductions`` lists. An annotation stays writable, so the record digest
    does not cover it; the reproduction's own record names the model it reproduces.
    """
    if report.reproduction_uri is None:
        return
    import datetime

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


def trace_comparer(
    model_ds: StoredDataSet,
    record: ProvenanceRecord,
    *,
    stop: bool = False,
    plan: tuple[bool, int | None, str | None] = (False, None, None),
) -> TraceComparer | None:
    """A comparer against the model's recorded step trace; None when the record has none, or in statistical
    mode (the re-run uses another seed, so its steps are not the recorded ones). ``plan``, for replays: (keep
    the last checkpoint before a divergence, when the record checkpointed; a replay process's last step,
    where the training stops; the checkpoint it starts from, None: from the start)."""
    if record.training.determinism.mode == "statistical":
        return None
    recorded = load_trace(model_ds, record)
    if recorded is None or record.results.trace is None:
        return None
    keep, until, start = plan
    comparer = TraceComparer(recorded, record.results.trace.tensors, stop=stop, until=until)
    comparer.recorded_oplogs = load_oplogs(model_ds, record)
    if start is not None:
        comparer.start_checkpoint = Path(start)
    elif keep and record.training.checkpoint_every:  # removed with the comparer, or at exit
        comparer.keep_dir = Path(tempfile.mkdtemp(prefix="reprodl-replay-start-"))
        weakref.finalize(comparer, shutil.rmtree, comparer.keep_dir, True)
    if stopped_early(record):  # a re-run as long as the training the record describes, and one step more
        comparer.stop_after = record.training.optimizer_steps
    return comparer


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


def _reproduce_in_process(
    original: _Original,
    tol: Tolerance,
    t0: float,
    *,
    transforms: Mapping[str, Callable[[Any], Any]] | None,
    envelope: dict[str, Any] | None,
    allow: Iterable[str],
    model_class: type | None,
    device: str | None,
    seed: int | None,
    output: str | None,
    progress: bool,
    comparer: TraceComparer | None,
    tolerance_given: bool = False,
) -> ReproductionReport:
    """The steps of an in-process reproduction (a record of the built-in trainer or a config)."""
    reasons: list[str] = []
    _check_distributed_options(original, transforms, model_class)
    data_transforms = _transforms_for(original.record, transforms, reasons)  # refuses before any work
    checks = _check_before_training(original)
    training = _rebuild(
        original, checks.opened, data_transforms, allow=allow, model_class=model_class, device=device, seed=seed
    )
    reasons += training.reasons
    t_train = time.perf_counter()
    if is_distributed(original.record):
        options = {"device": device, "seed": seed, "allow": list(allow)}
        new_record, reproduction_uri, trace = _train_distributed(original, training, output=output, options=options)
        if comparer is not None and trace is not None:
            comparer.compare_all(trace)
    else:
        new_record, reproduction_uri = _train(original, training, output=output, progress=progress, on_step=comparer)
    training_s = time.perf_counter() - t_train
    settings = list(training.reasons)
    if original.record.training.device != new_record.training.device:
        settings.append(f"device {original.record.training.device} -> {new_record.training.device}")
    divergence = divergence_of(
        comparer,
        code=checks.code,
        environment=checks.environment,
        settings=settings,
        mode=original.record.training.determinism.mode,
        record=original.record,
        new=new_record,
    )
    if divergence.stopped:
        reasons.append(f"the re-run was stopped at step {divergence.step}, its first divergent step")
    comparison = _compare(original, training, new_record, tol, allow=allow, model_class=model_class)
    comparison = dataclasses.replace(comparison, divergence=divergence)
    judgement = _judge(
        original, new_record, comparison, checks, tol, envelope=envelope, reasons=reasons, given=tolerance_given
    )
    timings = {"data_check_s": checks.seconds, "training_s": training_s}
    timings.update(original_training_s=original.record.results.wall_time_s, total_s=time.perf_counter() - t0)
    report = _report(original, checks, comparison, judgement, tol, reproduction_uri=reproduction_uri, timings=timings)
    return dataclasses.replace(report, divergence=divergence)


# --- the steps -----------------------------------------------------------------------------
def _check_distributed_options(original: _Original, transforms: Any, model_class: type | None) -> None:
    """Refuse objects passed for a training re-run by torchrun's processes (they cannot be sent there)."""
    if not is_distributed(original.record) or (not transforms and model_class is None):
        return
    raise ReproductionError(
        f"{original.model_ds.uri} was trained by several processes (torchrun) and is re-run the same way, from "
        "its record alone: transforms= and model_class= cannot be passed to those processes. Leave them out "
        "(a transform of reprodl.data.transforms is rebuilt from the record; a model class of yours is "
        "imported with allow=['your.module'])"
    )


def _check_before_training(original: _Original) -> _Checks:
    """Data (refused with :class:`IntegrityError` when changed), code and environment."""
    record, model_ds = original.record, original.model_ds
    t_data = time.perf_counter()
    opened: dict[str, StoredDataSet] = {}
    data = check_data(record, model_ds, opened=opened)
    seconds = time.perf_counter() - t_data
    problems = [p for c in data for p in c.problems]
    if problems:
        raise IntegrityError(
            "refusing to reproduce: the training data changed since training:\n  " + "\n  ".join(problems),
            problems=problems,
        )
    code = check_patch(record, model_ds, check_code(record))
    environment, expectation = check_environment(record)  # the prediction, made before re-running
    return _Checks(data, code, environment, opened, seconds, expectation)


def _rebuild(
    original: _Original,
    opened: dict[str, StoredDataSet],
    data_transforms: list[Any],
    *,
    allow: Iterable[str],
    model_class: type | None,
    device: str | None,
    seed: int | None,
) -> _Training:
    """The recorded training rebuilt: its parameters for this run, model, optimiser, loss, data."""
    record = original.record
    run_params = _run_params(record, device=device, seed=seed)
    model = rebuild_model(
        record, original.model_ds, allow=allow, model_class=model_class, seed=int(run_params.get("seed", 0))
    )
    current_src = class_source_sha256(type(model))
    reasons = []
    if record.architecture.source_sha256 and current_src and current_src != record.architecture.source_sha256:
        reasons.append(f"the source of {record.architecture.import_path} differs from the recorded one")
    optimizer = rebuild_optimizer(record, model, allow)
    loss_fn = rebuild_loss(record, allow)
    scheduler = rebuild_scheduler(record, optimizer, allow)
    roles: dict[str, list[WrappedDataSet]] = {"train": [], "valid": [], "test": []}
    for ref, transform in zip(record.data, data_transforms):
        roles[ref.role].append(open_recorded(ref, transform=transform, dataset=opened.get(ref.uri)))
    return _Training(model, optimizer, loss_fn, scheduler, roles, Parameters(**run_params), reasons)


def _run_params(record: ProvenanceRecord, *, device: str | None, seed: int | None) -> dict[str, Any]:
    """The recorded parameters with this run's seed (statistical mode: another one) and device."""
    run_params = dict(record.training.params)
    if record.training.determinism.mode == "statistical":
        run_params["seed"] = seed if seed is not None else int(run_params.get("seed", 0)) + STATISTICAL_SEED_OFFSET
    elif seed is not None:
        run_params["seed"] = seed
    run_params["verify_data"] = "none"  # just checked, deeply
    if device is not None:
        run_params["device"] = device
    elif not torch.cuda.is_available():
        run_params["device"] = "cpu"
    return run_params


def _train(
    original: _Original, training: _Training, *, output: str | None, progress: bool, on_step: Any = None
) -> tuple[ProvenanceRecord, str | None]:
    """Train again into a model dataset under ``output`` (else a temporary directory, removed).

    Returns the new record and the reproduction's URI (None when it was not kept).
    """
    from reprodl.training.loop import DerivedDataSet, train_model_with_metadata_capture

    record, model_ds, roles = original.record, original.model_ds, training.roles
    ref_self = ModelRef(
        uri=model_ds.uri, uuid=model_ds.uuid, record_digest=record.digest, weights_sha256=record.results.weights_sha256
    )
    with contextlib.ExitStack() as stack:
        base = output
        if base is None:
            base = stack.enter_context(tempfile.TemporaryDirectory(prefix="reprodl-reproduce-"))
        with DerivedDataSet(
            base,
            _reproduction_name(record.model_name),
            roles["train"],
            valid=roles["valid"],
            test=roles["test"],
            parent=record.lineage.parent.uri if record.lineage.parent else None,
        ) as out:
            new_record = train_model_with_metadata_capture(
                training.model,
                roles["train"][0],
                training.optimizer,
                training.loss_fn,
                training.params,
                out,
                scheduler=training.scheduler,
                progress=progress,
                model_name=record.model_name,
                reproduces=ref_self,
                on_step=on_step,
                checkpoint_every=record.training.checkpoint_every if getattr(on_step, "keep_dir", None) else None,
            )
    return new_record, out.uri if output is not None else None


def _train_distributed(
    original: _Original, training: _Training, *, output: str | None, options: dict[str, Any]
) -> tuple[ProvenanceRecord, str | None, Any]:
    """Train again under torchrun with the recorded world size (:mod:`.ddp`); the new weights are
    loaded into ``training.model``. Returns the new record, the reproduction's URI (None when not kept) and
    its step trace (None: it has none)."""
    from reprodl.reproduction.ddp import train_under_torchrun

    with contextlib.ExitStack() as stack:
        base = output
        if base is None:
            base = stack.enter_context(tempfile.TemporaryDirectory(prefix="reprodl-reproduce-"))
        elif "://" not in base:
            base = os.path.abspath(base)
        options = {**options, "world_size": recorded_world_size(original.record)}  # another with --world-size
        uri = train_under_torchrun(original.model_ds, original.record, base=base, options=options)
        new_ds = open_dataset(uri)
        new_record = read_record(new_ds)
        training.model.load_state_dict(load_weights(new_ds, new_record))
        trace = load_trace(new_ds, new_record)
    return new_record, (uri if output is not None else None), trace


def _compare(
    original: _Original,
    training: _Training,
    new_record: ProvenanceRecord,
    tol: Tolerance,
    *,
    allow: Iterable[str],
    model_class: type | None,
) -> Comparison:
    """The re-trained model beside the original: weights, metrics, data order, predictions."""
    record, model = original.record, training.model
    new_state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    # every saved model's weights (a record the built-in trainer made saves one, under its default name)
    name = record.model_components()[0].name
    weights = compare_models({name: original.state}, {name: new_state}, tol)
    roles = training.roles
    eval_sets = roles["test"] or roles["valid"] or roles["train"]
    original_model = None
    if not weights["identical"]:
        # Bit-identical weights in the same class predict the same: one evaluation serves both.
        original_model = rebuild_model(record, original.model_ds, allow=allow, model_class=model_class)
        original_model.load_state_dict(original.state)
    model.cpu()
    return Comparison(
        weights=weights,
        metrics=compare_metrics(record, new_record),
        predictions=compare_predictions(original_model, model, eval_sets[0]),
        data_order_matches=record.training.data_order_digests == new_record.training.data_order_digests,
    )


def _judge(
    original: _Original,
    new_record: ProvenanceRecord,
    comparison: Comparison,
    checks: _Checks,
    tol: Tolerance,
    *,
    envelope: dict[str, Any] | None,
    reasons: list[str],
    given: bool = False,
) -> Judgement:
    """The verdict; a statistical-mode model is judged against its multi-run envelope when there is one."""
    if envelope is None and original.record.training.determinism.mode == "statistical":
        envelope = find_envelope(original.model_ds)
    return judge(
        original.record,
        new_record,
        comparison,
        code=checks.code,
        environment=checks.environment,
        expectation=checks.expectation,
        tol=tol,
        tolerance_given=given,
        envelope=envelope,
        reasons=reasons,
    )


def _report(
    original: _Original,
    checks: _Checks,
    comparison: Comparison,
    judgement: Judgement,
    tol: Tolerance,
    *,
    reproduction_uri: str | None,
    timings: dict[str, float],
) -> ReproductionReport:
    """The report of the steps' results."""
    return ReproductionReport(
        original_uri=original.model_ds.uri,
        verdict=judgement.verdict,
        mode=original.record.training.determinism.mode,
        reasons=judgement.reasons,
        reproduction_uri=reproduction_uri,
        data_checks=checks.data,
        code=checks.code,
        environment_differences=checks.environment,
        weights=comparison.weights,
        metrics=comparison.metrics,
        predictions=comparison.predictions,
        data_order_matches=comparison.data_order_matches,
        envelope=judgement.envelope,
        tolerance=dataclasses.asdict(tol),
        timings=timings,
        expectation=checks.expectation.settle(judgement.verdict),
        why=judgement.why,
    )


def _transforms_for(
    record: ProvenanceRecord, given: Mapping[str, Callable[[Any], Any]] | None, reasons: list[str]
) -> list[Any]:
    """Per recorded dataset, the transform to read it through: passed, rebuilt, or None."""
    given = dict(given or {})
    present = {ref.role for ref in record.data}
    unknown = sorted(set(given) - present)
    if unknown:
        raise ReproductionError(f"transforms= names roles {unknown}, but the record has datasets for {sorted(present)}")
    out = []
    for ref in record.data:
        transform = given.get(ref.role)
        if transform is None:
            out.append(rebuild_transform(ref) if ref.transform is not None else None)
            continue
        if ref.transform is None:
            raise ReproductionError(
                f"a transform was passed for the {ref.role} dataset {ref.name}, but the recorded training read it "
                "without one: leave it out of transforms="
            )
        why = transform_differences(ref, transform)
        if why:
            reasons.append(why)
        out.append(transform)
    return out


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


def _reproduction_name(name: str) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%S")
    name = re.sub(r"[^A-Za-z0-9_.-]", "", name)[:40] or "model"  # a record's model_name is anyone's text
    return f"{name}.reproduction-{stamp}-{os.getpid()}"[:80]
