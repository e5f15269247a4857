"""Model commands: provenance, train, predict, evaluate, reproduce, diff, verify, lineage, schema."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer

from reprodl.cli.common import (
    JSON_OPT,
    QUIET_OPT,
    err,
    executor_options,
    handle_errors,
    out,
    print_json,
)
from reprodl.cli.signing import ATTEST_OPT, ATTESTATION_OUT_OPT
from reprodl.errors import ExitCode, ReprodlError

if TYPE_CHECKING:
    from reprodl.reproduction.divergence import Divergence
    from reprodl.reproduction.executors import Executor
    from reprodl.reproduction.pipeline import ReproductionReport
    from reprodl.training.config import TrainConfig

EXECUTOR: Any = None  # replaced by the --executor options (cli.common.executor_options)

_WORLD_SIZE = typer.Option(
    None, "--world-size", help="Re-run a DDP training by N processes, same global batch: does it depend on N?"
)
_ALLOW = typer.Option(
    None, "--allow", help="Module (or module:Class) trusted to be imported for the architecture; repeatable."
)
_TRUSTED_KEY = typer.Option(
    None,
    "--trusted-key",
    help="Public key (KEY.pub file or its text; an ECDSA PEM checks a model-signing bundle) the model must be "
    "signed by; repeatable.",
)
_TRUST_CODE = typer.Option(
    False,
    "--trust-code",
    help="Run the code recorded with a model trained with start_run (your own loop) without asking.",
)


app = typer.Typer()  # this module's top-level commands: register() adds them to the reprodl app


@app.command("provenance")
@handle_errors
def provenance_cmd(uri: str = typer.Argument(..., help="Model dataset URI."), as_json: bool = JSON_OPT) -> None:
    """Print how a model was made: architecture, parameters, data (URI, name, README) and more."""
    from reprodl import keys
    from reprodl.errors import ModelLoadError
    from reprodl.modeldataset.legacy import is_dtoolai_model
    from reprodl.modeldataset.read import read_record
    from reprodl.provenance import legacy_provenance, legacy_summary_lines, summary_lines
    from reprodl.store import open_dataset

    ds = open_dataset(uri)
    try:
        record = read_record(ds)
    except ModelLoadError:
        legacy = legacy_provenance(ds) if keys.PROVENANCE_FILE not in {ds.relpath(i) for i in ds.identifiers} else None
        if legacy is None:
            raise
        legacy["weights"] = _dtoolai_weights(ds) if is_dtoolai_model(ds) else None
        if as_json:
            print_json(legacy)
        else:
            for line in legacy_summary_lines(legacy):
                out.print(line, markup=False)
        return
    if as_json:
        print_json(record.model_dump(mode="json"))
        return
    for line in summary_lines(record):
        out.print(line, markup=False)


def _dtoolai_weights(ds: Any) -> dict[str, Any]:
    """A dtoolAI model's weights, read as its TrainedTorchModel reads them (weights_only=True; refused otherwise)."""
    from reprodl import keys
    from reprodl.modeldataset.legacy import read_dtoolai_weights

    state = read_dtoolai_weights(ds)
    return {"item": keys.DTOOLAI_WEIGHTS_FILE, "tensors": len(state), "values": sum(v.numel() for v in state.values())}


@app.command("convert")
@handle_errors
def convert_cmd(
    uri: str = typer.Argument(..., help="URI of a model dataset made by dtoolAI (model.pt and annotations)."),
    base_uri: str = typer.Argument(..., help="Base URI to write the reprodl model dataset in."),
    name: Optional[str] = typer.Option(None, "--name", help="Name of the new model dataset (default: the model's)."),
    as_json: bool = JSON_OPT,
) -> None:
    """Convert a model made by dtoolAI into a reprodl model dataset (safetensors and a record).

    The state dict in model.pt is read with torch.load(weights_only=True), which runs no code;
    the record holds what dtoolAI's annotations tell and names what they do not (converted_from).
    """
    from reprodl.modeldataset.legacy import convert_dtoolai_model

    new_uri = convert_dtoolai_model(uri, base_uri, name)
    if as_json:
        print_json({"uri": new_uri, "converted_from": uri})
    else:
        out.print(f"Converted {uri} to {new_uri}", markup=False)


@app.command("schema")
@handle_errors
def schema_cmd(
    which: str = typer.Argument("provenance", help="provenance or readme."),
    markdown: bool = typer.Option(
        False, "--markdown", help="The record's fields as a Markdown table (the one in docs/formats.md)."
    ),
) -> None:
    """Print the JSON Schema of the provenance record (or of dataset READMEs)."""
    if markdown and which != "provenance":
        raise typer.BadParameter(f"--markdown renders the provenance schema only, not {which!r}")
    if which == "provenance" and markdown:
        from reprodl.provenance.record import fields_table

        typer.echo(fields_table(), nl=False)
    elif which == "provenance":
        from reprodl.provenance import record_json_schema

        print_json(record_json_schema())
    elif which == "readme":
        from reprodl.data.readme import readme_json_schema

        print_json(readme_json_schema())
    else:
        raise typer.BadParameter(f"unknown schema {which!r}: use provenance or readme")


class _EpochPrinter:
    """A Rich progress bar per epoch and a one-line summary per epoch."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.progress: Any = None
        self.task: Any = None
        self.label = ""

    def __enter__(self) -> _EpochPrinter:
        if not self.quiet:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=err,
                transient=True,
            )
            self.progress.__enter__()
        return self

    def batch(self, label: str, done: int, total: int) -> None:
        if self.progress is None:
            return
        if label != self.label:
            if self.task is not None:
                self.progress.remove_task(self.task)
            self.task = self.progress.add_task(label, total=total)
            self.label = label
        if done == total or done % 5 == 0:
            self.progress.update(self.task, completed=done)

    def epoch(self, m: Any) -> None:
        if self.quiet:
            return
        line = f"epoch {m.epoch}: train loss {m.train_loss:.4f}"
        if m.valid_accuracy is not None:
            line += f", valid loss {m.valid_loss:.4f}, valid accuracy {m.valid_accuracy:.2%}"
        err.print(line + f" ({m.wall_time_s:.1f}s)", markup=False)

    def __exit__(self, *exc: Any) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)


@app.command("train")
@handle_errors
@executor_options
def train_cmd(
    config: Path = typer.Argument(
        ..., help="Training config (YAML): name, output, data, model, optimizer, loss, params."
    ),
    set_: Optional[list[str]] = typer.Option(
        None, "--set", help="Override a value: lr=0.05, epochs=3, params.seed=1, optimizer.momentum=0.9."
    ),
    seeds: int = typer.Option(0, "--seeds", help="Train one model per seed (N runs) and write a variance summary."),
    splits: int = typer.Option(0, "--splits", help="Train one model per stratified train/test split (N runs)."),
    require_clean: bool = typer.Option(
        False, "--require-clean", help="Refuse to train unless the code (the config's git repository) is committed."
    ),
    no_untracked: bool = typer.Option(
        False,
        "--no-untracked",
        help="Store no untracked files with the model (git-ignored files and secrets never are).",
    ),
    name_suffix: str = typer.Option(
        "none",
        "--name-suffix",
        help="'auto': when the config's name is taken in its output, number the run (digits-cnn-2, -3...); "
        "'none': refuse a taken name.",
    ),
    tensorboard: Optional[Path] = typer.Option(
        None,
        "--tensorboard",
        help="Also log each epoch's metrics for TensorBoard, under DIR/<name> (extra tensorboard).",
    ),
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Continue the killed training of this config from its last checkpoint (config key checkpoint_every).",
    ),
    engine: Executor = EXECUTOR,
    quiet: bool = QUIET_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Train a model from a config file, capturing its provenance; writes a model dataset.

    With --seeds or --splits, --executor slurm|ray trains each run as a Slurm job or a Ray task.
    """
    from reprodl.training.config import free_name, load_config

    if name_suffix not in ("auto", "none"):
        raise typer.BadParameter(f"should be 'auto' or 'none', but got {name_suffix!r}", param_hint="--name-suffix")
    flags = [
        *(["require_clean_code=true"] if require_clean else []),
        *(["store_untracked=false"] if no_untracked else []),
    ]
    cfg = load_config(config, [*(set_ or []), *flags])
    if name_suffix == "auto":
        cfg.name = free_name(cfg.output, cfg.name)
    _check_train_flags(many=bool(seeds or splits), auto=name_suffix == "auto", **locals())
    if seeds or splits:
        _train_many(cfg, seeds=seeds, splits=splits, as_json=as_json, engine=engine)
    else:
        _train_one(cfg, quiet=quiet, as_json=as_json, tensorboard=tensorboard, resume=resume)


def _check_train_flags(*, many: bool, auto: bool, resume: bool, tensorboard: Any, engine: Executor, **_: Any) -> None:
    """Refuse the flags of ``train`` that do not go together."""
    if resume and (many or auto):
        raise typer.BadParameter(
            "resumes one training: leave out --seeds, --splits and --name-suffix", param_hint="--resume"
        )
    if many and tensorboard is not None:
        raise typer.BadParameter("logs one training: leave it out with --seeds or --splits", param_hint="--tensorboard")
    if not many and not engine.local:
        raise typer.BadParameter("runs several trainings: give --seeds or --splits", param_hint="--executor")


def _refuse_under_torchrun(flag: str) -> None:
    """Several trainings (--seeds, --splits) run one after another in one process, not under torchrun."""
    from reprodl.training.distributed import launched_world_size

    n = launched_world_size()
    if n > 1:
        raise typer.BadParameter(
            f"trains several models one after another in one process, but this is one of {n} (torchrun): "
            "run it without torchrun, or train each seed under torchrun with --set seed=N",
            param_hint=flag,
        )


def _train_many(cfg: TrainConfig, *, seeds: int, splits: int, as_json: bool, engine: Executor) -> None:
    """``train --seeds N`` or ``--splits N``: one line per run, then the variance summary."""
    _refuse_under_torchrun("--seeds" if seeds else "--splits")
    from reprodl.reproduction.executors import train_many_on
    from reprodl.training.multirun import train_many

    def on_run(i: int, uri: str, record: Any) -> None:
        if not as_json:
            out.print(f"run {i + 1}/{seeds or splits}: {uri}  final {json.dumps(record.results.final)}", markup=False)

    if engine.local:
        result = train_many(cfg, seeds=seeds, splits=splits, on_run=on_run)
    else:
        result = train_many_on(engine, cfg, seeds=seeds, splits=splits, on_run=on_run)
    if as_json:
        print_json({"summary_uri": result.summary_uri, "models": result.model_uris, "summary": result.summary})
        return
    out.print(f"Summary dataset: {result.summary_uri}")
    for metric, s in result.summary["final"].items():
        out.print(f"  {metric}: mean {s['mean']:.4f} std {s['std']:.4f} min {s['min']:.4f} max {s['max']:.4f}")


def _train_one(
    cfg: TrainConfig, *, quiet: bool, as_json: bool, tensorboard: Path | None = None, resume: bool = False
) -> None:
    """One training, with progress bars unless quiet; then where the model dataset is.

    Under torchrun only rank 0 reports (the other ranks train silently).
    """
    from reprodl.training.capture import untracked_summary
    from reprodl.training.config import build_and_train
    from reprodl.training.distributed import launched_rank

    if launched_rank() != 0:
        build_and_train(cfg, progress=False, resume=resume)
        return

    with contextlib.ExitStack() as stack:
        printer = stack.enter_context(_EpochPrinter(quiet or as_json))
        on_epoch = printer.epoch
        if tensorboard is not None:
            from reprodl.training.tensorboard import TensorBoardLogger

            board = stack.enter_context(TensorBoardLogger(tensorboard / cfg.name))

            def on_epoch(m: Any) -> None:
                printer.epoch(m)
                board(m)

        uri, record = build_and_train(
            cfg,
            progress=printer.batch if not (quiet or as_json) else False,
            on_epoch=on_epoch,
            resume=resume,
        )
    git, resumed = record.code.git, record.training.resumed
    if as_json:
        print_json(
            {
                "uri": uri,
                "record_digest": record.digest,
                "final": record.results.final,
                "untracked_stored": git.untracked_items if git else [],
                "untracked_skipped": git.untracked_skipped_reasons if git else {},
                "resumed": resumed.model_dump(mode="json") if resumed else None,
            }
        )
        return
    stored = untracked_summary(git)
    if stored:
        out.print(stored, markup=False)
    if resumed:
        out.print(f"Resumed from epoch {resumed.from_epoch[-1]} (step {resumed.from_step[-1]})", markup=False)
    out.print(f"Model dataset: {uri}")


@app.command("predict")
@handle_errors
def predict_cmd(
    uri: str = typer.Argument(..., help="Model dataset URI."),
    images: list[Path] = typer.Argument(..., help="Image files (any mode and size)."),
    allow: Optional[list[str]] = _ALLOW,
    as_json: bool = JSON_OPT,
) -> None:
    """Classify images with a trained model."""
    from reprodl.data.images import open_image
    from reprodl.model import TrainedTorchModel

    model = TrainedTorchModel(uri, allow=allow or ())
    results = []
    for path in images:
        results.append({"image": str(path), "category": model.convert_and_predict(open_image(path))})
    if as_json:
        print_json(results)
    else:
        for r in results:
            out.print(f"{r['image']}: {r['category']}", markup=False)


@app.command("evaluate")
@handle_errors
def evaluate_cmd(
    uri: str = typer.Argument(..., help="Model dataset URI."),
    dataset_uri: str = typer.Argument(..., help="Dataset to evaluate on."),
    usetype: Optional[str] = typer.Option(None, "--usetype", help="Only samples of this usetype (e.g. test)."),
    allow: Optional[list[str]] = _ALLOW,
    as_json: bool = JSON_OPT,
) -> None:
    """Accuracy, per-class precision/recall and confusion matrix, beside the majority-class and
    stratified-random baselines with P(model > baseline) (a paired bootstrap over the samples),
    and the accuracy at batch sizes 256, 7 and 1 with its band (what the batch size alone moves)."""
    from reprodl.data.kinds import open_training_data
    from reprodl.model import TrainedTorchModel

    model = TrainedTorchModel(uri, allow=allow or ())
    result = model.evaluate(open_training_data(dataset_uri, usetype))
    if as_json:
        print_json(result)
        return
    out.print(
        f"accuracy {result['accuracy']:.2%} on {result['n_samples']} samples "
        f"(majority-class baseline {result['majority_baseline_accuracy']:.2%}, class {result['majority_class']})"
    )
    for name, row in result["baselines"].items():
        out.print(
            f"baseline {name.replace('_', '-')}: accuracy {row['accuracy']:.2%}, "
            f"P(model > it) {row['probability_model_better']:.3f} (paired bootstrap over the samples)",
            markup=False,
        )
    inv = result["batch_size_invariance"]
    sizes = ", ".join(f"{s}: {a:.2%}" for s, a in inv["accuracy"].items())
    out.print(
        f"batch size: accuracy {sizes}; band {inv['band']:.4%} "
        + ("(the same at every size)" if inv["invariant"] else f"({inv['predictions_changed']} predictions change)"),
        markup=False,
    )
    out.print("class  precision  recall  support")
    for name, c in result["per_class"].items():
        out.print(f"{name:>5}  {c['precision']:9.2%}  {c['recall']:6.2%}  {c['support']:7d}", markup=False)


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
    allow: Optional[list[str]] = _ALLOW,
    trust_code: bool = _TRUST_CODE,
    stop_at_divergence: bool = _STOP_AT_DIVERGENCE,
    trusted_key: Optional[list[str]] = _TRUSTED_KEY,
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
    from reprodl.cli.signing import check_can_attest

    check_can_attest(uri, attest)
    plan, trust_code = _ask_trust(uri, trust_code, as_json, trusted_key or ())
    if not engine.local:
        raise typer.Exit(_reproduce_on(engine, uri, locals(), quiet=quiet, as_json=as_json))
    raise typer.Exit(_reproduce_here(uri, plan, locals()))


def _reproduce_here(uri: str, plan: Any, given: dict[str, Any]) -> int:
    """``reprodl reproduce`` in this process (``given``: the command's arguments); its exit code."""
    from reprodl.cli.signing import attest_report
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
        import collections

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


def _reproduce_on(engine: Any, uri: str, given: dict[str, Any], *, quiet: bool, as_json: bool) -> int:
    """``reprodl reproduce --executor slurm|ray``: the re-run on the engine (``given``: the command's
    arguments); its verdict and allocation."""
    from reprodl.reproduction.executors import reproduce_on

    if given["attest"] is not None:
        raise typer.BadParameter("signs a re-run made here: leave out --executor to attest", param_hint="--attest")
    names = ("output", "tolerance", "seed", "trust_code", "stop_at_divergence", "world_size")
    options = {name: given[name] for name in names}
    options.update(allow=given["allow"] or [], trusted_keys=given["trusted_key"] or [])
    options["data"] = _roles_to_uris(given["data"] or [])

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
    import sys

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
    out.print(
        f"time: re-training {t.get('training_s', 0):.2f}s (original {t.get('original_training_s', 0):.2f}s), "
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
            out.print(f"  {r['metric']} (epoch {last}): {r['original']:.6g} -> {r['reproduction']:.6g}", markup=False)
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
    if div.loss is not None:
        out.print(f"  loss at that step: {div.loss['recorded']!r} -> {div.loss['reproduced']!r}", markup=False)
    said = {True: "differed", False: "were the same", None: "not traced"}
    out.print(
        f"  batch sample indices {said[div.indices_differ]}; batch contents {said[div.contents_differ]}",
        markup=False,
    )
    if len(div.growth) > 1:
        out.print("  gap after: " + ", ".join(_gap(g) for g in div.growth), markup=False)
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


@app.command("diff")
@handle_errors
def diff_cmd(
    a: str = typer.Argument(..., help="First model dataset URI."),
    b: str = typer.Argument(..., help="Second model dataset URI."),
    all_: bool = typer.Option(False, "--all", help="Include timings and timestamps."),
    as_json: bool = JSON_OPT,
) -> None:
    """Side-by-side provenance diff of two models: data, code, environment, seeds, hyperparameters, results."""
    from reprodl.modeldataset.read import load_record
    from reprodl.provenance import diff_records

    diff = diff_records(load_record(a), load_record(b), include_volatile=all_)
    if as_json:
        print_json(diff)
        return
    if not diff:
        out.print("The two records do not differ (beyond timings).")
        return
    from rich.table import Table

    for section, rows in diff.items():
        table = Table(title=section, show_lines=False, expand=False)
        table.add_column("key")
        table.add_column("A", overflow="fold")
        table.add_column("B", overflow="fold")
        for row in rows[:60]:
            table.add_row(row["key"], _short(row["a"]), _short(row["b"]))
        if len(rows) > 60:
            table.add_row(f"... {len(rows) - 60} more", "", "")
        out.print(table)


def _short(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= 80 else text[:77] + "..."


@app.command("verify")
@handle_errors
def verify_cmd(
    uri: str = typer.Argument(..., help="Model dataset URI (or a claim dataset from reprodl compare)."),
    data: bool = typer.Option(False, "--data", help="Also check every training dataset is reachable and unchanged."),
    allow: Optional[list[str]] = _ALLOW,
    trusted_key: Optional[list[str]] = _TRUSTED_KEY,
    attestation: Optional[Path] = typer.Option(
        None, "--attestation", help="Also check this attestation of a reproduction (reprodl reproduce --attest)."
    ),
    attestation_key: Optional[Path] = typer.Option(
        None, "--attestation-key", help="The attester's public key (KEY.pub of `reprodl keygen --ecdsa`)."
    ),
    as_json: bool = JSON_OPT,
) -> None:
    """Check a model: item hashes, record digest, weights, trust policy (and data, signature).

    Every class the record names must pass the trust policy (--allow adds modules); --data
    re-checks the training data; --trusted-key requires a signature by that key.
    """
    from rich.markup import escape

    from reprodl.modeldataset.verify import ModelVerification, verify_model
    from reprodl.reproduction.claims import is_claim, verify_claim

    result: ModelVerification
    if is_claim(uri):
        if data or trusted_key:
            raise typer.BadParameter(
                f"{uri} is a claim: verify checks each member model; verify a member for --data or --trusted-key"
            )
        result = verify_claim(uri, allow=allow or ())
    else:
        result = verify_model(uri, data=data, allow=allow or (), trusted_keys=trusted_key or ())
    if attestation is not None:
        from reprodl.cli.signing import attestation_check

        check = attestation_check(uri, attestation, attestation_key)
        result.add("reproduction attested", check.ok, check.detail)
        if check.ok:
            result.notes.append(check.detail)
    if as_json:
        print_json(result.to_dict())
    else:
        for c in result.checks:
            mark = "[green]ok[/]" if c.ok else "[red]FAILED[/]"
            out.print(f"{mark}  {escape(c.name)}" + (f": {escape(c.detail)}" if c.detail and not c.ok else ""))
        for note in result.notes:
            out.print(f"note  {note}", markup=False)
        out.print("All checks passed." if result.ok else "Verification FAILED.")
    if not result.ok:
        raise typer.Exit(int(ExitCode.FAILED))


@app.command("lineage")
@handle_errors
def lineage_cmd(uri: str = typer.Argument(..., help="Model dataset URI."), as_json: bool = JSON_OPT) -> None:
    """Print the chain of models this one was fine-tuned from, checking each link's digest offline."""
    from reprodl.modeldataset.verify import lineage

    chain = lineage(uri)
    if as_json:
        print_json(chain)
    else:
        for depth, entry in enumerate(chain):
            pad = "  " * depth + ("└─ " if depth else "")
            if "error" in entry:
                out.print(f"{pad}{entry['uri']}: ERROR {entry['error']}", markup=False)
                continue
            link = (
                ""
                if "link_ok" not in entry
                else (" [link ok]" if entry["link_ok"] else " [LINK BROKEN: digest differs]")
            )
            out.print(
                f"{pad}{entry['name']} {entry['uri']} ({entry['architecture']}; {', '.join(entry['data'])})"
                + (f" frozen: {', '.join(entry['frozen'])}" if entry["frozen"] else "")
                + link,
                markup=False,
            )
    if any(e.get("link_ok") is False or e.get("digest_ok") is False or "error" in e for e in chain):
        raise typer.Exit(int(ExitCode.FAILED))


@app.command("demo")
@handle_errors
def demo_cmd(
    workdir: Path = typer.Option(
        Path("demo-output"), "--workdir", help="Where the demo writes its datasets and models."
    ),
    epochs: int = typer.Option(10, "--epochs", help="Training epochs."),
    quiet: bool = QUIET_OPT,  # accepted as by every command; the demo shows no progress bars
) -> None:
    """The main job on real digits: dataset, split, train, provenance, predict, reproduce."""
    from reprodl.cli.demo import run_demo

    ok = run_demo(workdir, epochs=epochs, say=lambda s: out.print(s, markup=False), show_report=print_report)
    raise typer.Exit(0 if ok else int(ExitCode.FAILED))


def register(root: typer.Typer) -> None:
    """Add this module's commands to ``root``, the ``reprodl`` app (:func:`reprodl.cli.build`)."""
    root.registered_commands.extend(app.registered_commands)
