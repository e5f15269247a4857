"""The train command: a config file trained by the built-in trainer (one run, or many by seeds and splits)."""

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

if TYPE_CHECKING:
    from reprodl.reproduction.executors import Executor
    from reprodl.training.config import TrainConfig

EXECUTOR: Any = None  # replaced by the --executor options (cli.common.executor_options)


app = typer.Typer()  # this module's top-level commands: register() adds them to the reprodl app


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
        err.print(line + (f" ({m.wall_time_s:.1f}s)" if m.wall_time_s is not None else ""), markup=False)

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


def register(root: typer.Typer) -> None:
    """Add this module's commands to ``root``, the ``reprodl`` app (:func:`reprodl.cli.build`)."""
    root.registered_commands.extend(app.registered_commands)
