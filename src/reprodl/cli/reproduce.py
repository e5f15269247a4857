"""The reproduce command: re-run a model's training from its record, and print the report."""

from __future__ import annotations

import collections
import contextlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer

from reprodl.cli.common import (
    ALLOW_OPT,
    JSON_OPT,
    QUIET_OPT,
    TRUSTED_KEY_OPT,
    err,
    executor_options,
    handle_errors,
    out,
    print_json,
)
from reprodl.cli.signing import ATTEST_OPT, ATTESTATION_OUT_OPT, attest_report, check_can_attest
from reprodl.errors import ExitCode, ReprodlError

if TYPE_CHECKING:
    from reprodl.reproduction.divergence import Divergence
    from reprodl.reproduction.executors import Executor
    from reprodl.reproduction.pipeline import ReproductionReport

EXECUTOR: Any = None  # replaced by the --executor options (cli.common.executor_options)

_WORLD_SIZE = typer.Option(
    None, "--world-size", help="Re-run a DDP training by N processes, same global batch: does it depend on N?"
)
_TRUST_CODE = typer.Option(
    False,
    "--trust-code",
    help="Run the code recorded with a model trained with start_run (your own loop) without asking.",
)


app = typer.Typer()  # this module's top-level commands: register() adds them to the reprodl app


_DATA_COPY = typer.Option(
    None,
    "--data",
    help="ROLE=URI: read the ROLE dataset (train, valid, test) from another copy of it (same UUID and manifest "
    "digest, e.g. after `reprodl dataset copy`); repeatable.",
)


_NO_REPLAY = typer.Option(
    False,
    "--no-replay",
    help="When the re-run differs and factors that change numerics differ (CPU capability, oneDNN ISA cap, "
    "threads...), do not replay the steps up to the first divergent one with each factor put back.",
)
_REPLAY_WINDOW = typer.Option(None, "--replay-window", hidden=True, min=1)  # what a replay process runs
_REPLAY_FROM = typer.Option(None, "--replay-from", hidden=True)  # the checkpoint a replay process starts from
_STOP_AT_DIVERGENCE = typer.Option(
    False,
    "--stop-at-divergence",
    help="End the re-run at the first optimiser step whose trace differs from the recorded one.",
)


@app.command("reproduce")
@handle_errors
@executor_options
def reproduce_cmd(
    uri: str = typer.Argument(..., help="Model dataset URI."),
    output: Optional[str] = typer.Option(
        None, "--output", help="Base URI to keep the reproduced model in (default: discarded)."
    ),
    tolerance: Optional[str] = typer.Option(
        None, "--tolerance", help="atol, or 'atol=1e-5,rtol=1e-4,metric=0.02,agreement=0.99'."
    ),
    seed: Optional[int] = typer.Option(
        None, "--seed", help="Seed for the re-run (statistical mode: default recorded + 100003)."
    ),
    allow: Optional[list[str]] = ALLOW_OPT,
    trust_code: bool = _TRUST_CODE,
    stop_at_divergence: bool = _STOP_AT_DIVERGENCE,
    trusted_key: Optional[list[str]] = TRUSTED_KEY_OPT,
    data: Optional[list[str]] = _DATA_COPY,
    no_replay: bool = _NO_REPLAY,
    replay_window: Optional[int] = _REPLAY_WINDOW,
    replay_from: Optional[str] = _REPLAY_FROM,
    attest: Optional[Path] = ATTEST_OPT,
    attestation: Optional[Path] = ATTESTATION_OUT_OPT,
    world_size: Optional[int] = _WORLD_SIZE,
    engine: Executor = EXECUTOR,
    quiet: bool = QUIET_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Re-run a model's training from its record and say whether the model came back.

    A model trained with reprodl.start_run is reproduced by re-executing its recorded code in a
    temporary copy: that runs only with --trust-code, or after a yes at an interactive prompt.
    With --trusted-key, the model's signature is checked before anything is shown or run.
    --data train=URI reads a copy of the training data (the same dataset only); --attest KEY signs the outcome.
    --executor slurm|ray re-runs it as a Slurm job or Ray task, and says on which allocation.
    """

    check_can_attest(uri, attest)
    plan, trust_code = _ask_trust(uri, trust_code, as_json, trusted_key or ())
    if not engine.local:
        raise typer.Exit(_reproduce_on(engine, uri, plan, locals(), quiet=quiet, as_json=as_json))
    raise typer.Exit(_reproduce_here(uri, plan, locals()))


def _reproduce_here(uri: str, plan: Any, given: dict[str, Any]) -> int:
    """``reprodl reproduce`` in this process (``given``: the command's arguments); its exit code."""
    from reprodl.reproduction.pipeline import reproduce

    quiet, as_json, trust_code, data = given["quiet"], given["as_json"], given["trust_code"], given["data"]
    attest, attestation = given["attest"], given["attestation"]
    if not (quiet or as_json or (plan is not None and not trust_code)):  # a refusal says nothing first
        err.print(f"Reproducing {uri}: checking data, code and environment, then re-training...")
    script = _ScriptOutput(quiet)
    with script.shown_on_failure():
        report = reproduce(
            uri,
            output=given["output"],
            tolerance=given["tolerance"],
            allow=given["allow"] or (),
            seed=given["seed"],
            progress=not (quiet or as_json),
            trust_code=trust_code,
            stop_at_divergence=given["stop_at_divergence"],
            trusted_keys=given["trusted_key"] or (),
            data=_roles_to_uris(data or []),
            replay=not given["no_replay"],
            replay_window=given["replay_window"],
            replay_from=given["replay_from"],
            on_output=script,  # the re-executed script's output: on stderr (stdout is the report's, --json's)
            world_size=given["world_size"],
            code_digest=plan.code_digest if plan is not None and trust_code else None,  # the bytes trusted run
        )
    attested = attest_report(report, attest, attestation) if attest is not None else None
    if as_json:
        print_json(report.to_dict() | ({"attestation": attested} if attested else {}))
    else:
        print_report(report)
        if attested:
            out.print(f"Attestation: {attested['path']} (signed by key {attested['key_hint']})", markup=False)
    return report.exit_code


class _ScriptOutput:
    """Where a re-executed script's output goes: stderr, line by line (stdout holds the report, and
    ``--json``'s is JSON only); with ``--quiet`` its last lines are kept, and shown only when it fails."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.tail: collections.deque[str] = collections.deque(maxlen=40)

    def __call__(self, line: str) -> None:
        if self.quiet:
            self.tail.append(line)
        else:
            err.print(line, markup=False, highlight=False)

    @contextlib.contextmanager
    def shown_on_failure(self) -> Any:
        try:
            yield
        except ReprodlError:
            for line in self.tail:
                err.print(line, markup=False, highlight=False)
            raise


def _reproduce_on(engine: Any, uri: str, plan: Any, given: dict[str, Any], *, quiet: bool, as_json: bool) -> int:
    """``reprodl reproduce --executor slurm|ray``: the re-run on the engine (``given``: the command's
    arguments); its verdict and allocation."""
    from reprodl.reproduction.executors import reproduce_on

    if given["attest"] is not None:
        raise typer.BadParameter("signs a re-run made here: leave out --executor to attest", param_hint="--attest")
    names = ("output", "tolerance", "seed", "trust_code", "stop_at_divergence", "world_size")
    options = {name: given[name] for name in names}
    options.update(allow=given["allow"] or [], trusted_keys=given["trusted_key"] or [])
    options["data"] = _roles_to_uris(given["data"] or [])
    if plan is not None and given["trust_code"]:  # the bytes trusted run on the engine, or nothing does
        options["code_digest"] = plan.code_digest

    if not (quiet or as_json):
        err.print(f"Reproducing {uri} on {engine.kind}: submitted; waiting for the re-run...", markup=False)
    report = reproduce_on(engine, uri, **options)
    if as_json:
        print_json(report)
    else:
        for reason in report.get("reasons", []):
            out.print(f"  - {reason}", markup=False)
        where = report["allocation"]
        rerun = where["rerun"]
        out.print(
            f"Ran on: {rerun['scheduler']} job {rerun['job_id']} on {rerun['node']} ({where['label']})", markup=False
        )
        out.print(f"Verdict: {report['verdict']} ({where['label']})", markup=False)
    return int(ExitCode.OK if report.get("ok") else ExitCode.FAILED)


def _ask_trust(uri: str, trust_code: bool, as_json: bool, trusted_keys: Any = ()) -> tuple[Any, bool]:
    """(the re-execution plan when the model's code would run and trust was not given, whether to
    trust it): at a terminal the plan is shown and the user asked."""

    from reprodl.reproduction.reexec import reexecution_plan

    plan = None
    if not trust_code:
        with contextlib.suppress(ReprodlError):  # reproduce() reports it, after checking its arguments
            plan = reexecution_plan(uri, trusted_keys=trusted_keys)
    if plan is not None and sys.stdin.isatty() and not as_json:
        err.print(plan.describe(), markup=False)
        trust_code = typer.confirm("Run this code?", default=False, err=True)
    return plan, trust_code


def _roles_to_uris(pairs: list[str]) -> dict[str, str]:
    """``["train=URI", ...]`` as ``{"train": URI}``; a malformed or repeated pair is a usage error."""
    out: dict[str, str] = {}
    for pair in pairs:
        role, sep, uri = pair.partition("=")
        if not sep or role not in ("train", "valid", "test") or not uri:
            raise typer.BadParameter(
                f"--data takes ROLE=URI with ROLE one of train, valid, test, but got {pair!r}", param_hint="--data"
            )
        if role in out:
            raise typer.BadParameter(f"--data names the role {role!r} twice", param_hint="--data")
        out[role] = uri
    return out


def print_report(report: ReproductionReport) -> None:
    """The report of ``reprodl reproduce``: checks, comparisons, timings, reasons, verdict."""
    colour = {"identical": "green", "within tolerance": "yellow", "differs": "red"}[report.verdict]
    _print_checks(report)
    _print_comparison(report)
    t = report.timings
    process = f", the re-run's process {t['process_s']:.2f}s" if "process_s" in t else ""
    out.print(
        f"time: re-training {t.get('training_s', 0):.2f}s (original {t.get('original_training_s', 0):.2f}s{process}), "
        f"total {t.get('total_s', 0):.2f}s"
    )
    for reason in report.reasons:
        out.print(f"  - {reason}", markup=False)
    if report.divergence is not None:
        _print_divergence(report.divergence)
    if report.replays is not None:
        _print_replays(report.replays)
    _print_outcome(report)
    out.print(f"Verdict: [bold {colour}]{report.verdict}[/]")


def _print_comparison(report: ReproductionReport) -> None:
    """Weights, the last epoch's metrics, predictions and the multi-run envelope."""
    w = report.weights
    out.print(
        f"weights: {w['n_identical']}/{w['n_tensors']} tensors bit-identical, max abs diff {w['max_abs_diff']:.3g}"
    )
    last = max((r["epoch"] for r in report.metrics), default=0)
    for r in report.metrics:
        if r["epoch"] == last:
            at = r.get("at", "epoch")  # a metric logged by step: its step
            out.print(f"  {r['metric']} ({at} {last}): {r['original']:.6g} -> {r['reproduction']:.6g}", markup=False)
    p = report.predictions
    if p:
        out.print(
            f"predictions on {p['dataset']} ({p['usetype'] or 'all'}): {p['agreement']:.2%} agree; accuracy "
            f"{p['original_accuracy']:.2%} -> {p['reproduction_accuracy']:.2%}"
        )
    if report.envelope:
        for m in report.envelope["metrics"]:
            out.print(f"  envelope {m['metric']}: {m['value']:.4f} in [{m['low']:.4f}, {m['high']:.4f}]? {m['within']}")


def _print_outcome(report: ReproductionReport) -> None:
    """Where the reproduction was kept, whether the prediction held, and the world size's effect."""
    if report.reproduction_uri:
        out.print(f"reproduction: {report.reproduction_uri}")
    if report.expectation is not None and report.expectation.held is not None:
        held = "held" if report.expectation.held else "did not hold"
        out.print(f"prediction ({report.expectation.expected} expected): {held}", markup=False)
    if report.world_size is not None:
        ws = report.world_size
        depends = "depends" if ws["depends_on_world_size"] else "does not depend"
        out.print(
            f"world size {ws['original']} -> {ws['rerun']} (global batch {ws['global_batch']}): the result {depends} "
            "on the world size",
            markup=False,
        )


def _gap(g: dict[str, Any]) -> str:
    """One point of the gap's growth: tensors whose digests differ (exact trace), or the largest fingerprint gap."""
    if "tensors_differ" in g:
        return f"step {g['step']}: {g['tensors_differ']} tensor(s) differ"
    return f"step {g['step']}: {g['max_abs_diff']:.3g}"


def _print_divergence(div: Divergence) -> None:
    """The divergence section: the first divergent step, what moved, how the gap grew, the causes."""
    out.print(f"divergence: {div.summary()}", markup=False)
    if div.matched_to_end or div.step is None:
        if div.note and div.compared_steps:
            out.print(f"  {div.note}", markup=False)
        return
    for t in div.tensors:
        if t["abs_diff"] is None:  # an exact trace: digests
            out.print(f"  {t['name']}: digest {t['recorded']} -> {t['reproduced']}", markup=False)
        else:
            gap = f"{t['abs_diff']:.3g}"
            out.print(f"  {t['name']}: fingerprint {t['recorded']!r} -> {t['reproduced']!r} ({gap})", markup=False)
    if div.tensors_differ > len(div.tensors):
        out.print(
            f"  (+{div.tensors_differ - len(div.tensors)} more of the {div.tensors_differ} that moved)", markup=False
        )
    if div.loss is not None:
        out.print(f"  loss at that step: {div.loss['recorded']!r} -> {div.loss['reproduced']!r}", markup=False)
    said = {True: "differed", False: "were the same", None: "not traced"}
    out.print(
        f"  batch sample indices {said[div.indices_differ]}; batch contents {said[div.contents_differ]}",
        markup=False,
    )
    if len(div.growth) > 1:
        shown = ", ".join(_gap(g) for g in div.growth)
        out.print(f"  the gap 1, 2, 4, 8... steps later and at the last step: {shown}", markup=False)
    if div.stopped:
        out.print("  the re-run was stopped there (--stop-at-divergence)")
    for cause in div.causes:
        out.print(f"  {cause}" if cause.startswith("cause ") else f"  cause: {cause}", markup=False)


def _print_replays(replays: Any) -> None:
    """Each counterfactual replay (the factor put back, its outcome, its cost) and the conclusion."""
    out.print(f"replays of steps {replays.start}..{replays.window}, one factor put back in each:", markup=False)
    for r in replays.runs:
        out.print(f"  {r.factor.label}: {r.outcome} ({r.detail}; {r.seconds:.1f}s)", markup=False)
    for f in replays.unrestorable:
        out.print(f"  {f.label}: unconfirmed ({f.why_not})", markup=False)
    out.print(f"  {replays.conclusion}", markup=False)


def _print_checks(report: ReproductionReport) -> None:
    """What was checked before training: each dataset, the code, the environment."""
    for c in report.data_checks:
        out.print(f"data  {c.role:5} {c.name}: {'unchanged' if c.ok else 'CHANGED'}", markup=False)
    out.print(f"code  {report.code.message if report.code else ''}", markup=False)
    if report.environment_differences:
        out.print(f"environment: {len(report.environment_differences)} difference(s)")
        for d in report.environment_differences[:15]:
            out.print(f"  {d.what}: {d.recorded} -> {d.now}", markup=False)
    else:
        out.print("environment: same as recorded")
    e = report.expectation
    if e is not None:
        out.print(f"expected before re-running: {e.expected}", markup=False)
        for line in e.because:
            out.print(f"  {line}", markup=False)


def register(root: typer.Typer) -> None:
    """Add this module's commands to ``root``, the ``reprodl`` app (:func:`reprodl.cli.build`)."""
    root.registered_commands.extend(app.registered_commands)
