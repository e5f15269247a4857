"""Claim commands: compare two recipes over paired seeds (P(A>B), its interval, a verdict); ablate; replicate."""

from __future__ import annotations

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
    from reprodl.reproduction.claims import Comparison, RunValue
    from reprodl.reproduction.executors import Executor

EXECUTOR: Any = None  # replaced by the --executor options (cli.common.executor_options)


VARY_OPT = typer.Option(
    None,
    "--vary",
    help="Sources of variation randomised (default all): init,order (through the seed), split (resplit "
    "80/20 per seed), bootstrap (resample the training data per seed), augment (random transforms).",
)
METRIC_OPT = typer.Option("valid_accuracy", "--metric", help="Final metric compared (higher is better).")
JOBS_OPT = typer.Option(
    None, "--jobs", help="Processes training at once, each with one thread (default: the CPU count)."
)


app = typer.Typer()  # this module's top-level commands: register() adds them to the reprodl app


@app.command("compare")
@handle_errors
@executor_options
def compare_cmd(
    a: Path = typer.Argument(..., help="Recipe A: a training config (YAML)."),
    b: Optional[Path] = typer.Argument(None, help="Recipe B (default: A again, made a variant with --set-b)."),
    seeds: int = typer.Option(..., "--seeds", help="Runs per recipe (>= 2); run i of A and B share a seed."),
    vary: Optional[str] = VARY_OPT,
    metric: str = METRIC_OPT,
    jobs: Optional[int] = JOBS_OPT,
    set_a: Optional[list[str]] = typer.Option(None, "--set-a", help="Override a value of A: lr=0.05; repeatable."),
    set_b: Optional[list[str]] = typer.Option(None, "--set-b", help="Override a value of B: lr=0.0005; repeatable."),
    output: Optional[str] = typer.Option(None, "--output", help="Base URI of the runs and the claim (default: A's)."),
    write_configs: Optional[Path] = typer.Option(
        None,
        "--write-configs",
        help="Train nothing: write each run's `reprodl train` config to this directory (one cluster task each).",
    ),
    engine: Executor = EXECUTOR,
    as_json: bool = JSON_OPT,
) -> None:
    """Is A really better than B? Train N paired runs of each; P(A>B), its 95% interval and a verdict.

    The verdict is 'A better' when the interval's low end is above 0.5 and P(A>B) >= 0.75,
    'B better' symmetrically, else 'no detectable difference'. The comparison is written as a
    claim dataset that `reprodl verify` checks member by member.
    """
    from reprodl.reproduction.claims import compare, write_member_configs

    if write_configs is not None:
        paths = write_member_configs(
            a, b, seeds=seeds, directory=write_configs, vary=vary, set_a=set_a or (), set_b=set_b or (), output=output
        )
        if as_json:
            print_json([str(p) for p in paths])
        for path in [] if as_json else paths:
            out.print(str(path), markup=False)
        return

    def on_run(side: str, run: RunValue) -> None:
        if not as_json:
            out.print(f"{side.upper()} seed {run.seed}: {metric} {run.value:.4f}  {run.uri}", markup=False)

    result = compare(
        a,
        b,
        seeds=seeds,
        vary=vary,
        metric=metric,
        jobs=jobs,
        set_a=set_a or (),
        set_b=set_b or (),
        output=output,
        on_run=on_run,
        executor=engine,
    )
    if as_json:
        print_json(result.to_dict())
    else:
        _print(result)


@app.command("collect")
@handle_errors
def collect_cmd(
    directory: Path = typer.Argument(..., help="The directory `reprodl compare --write-configs` wrote."),
    metric: str = typer.Option("valid_accuracy", "--metric", help="Final metric compared (higher is better)."),
    as_json: bool = JSON_OPT,
) -> None:
    """Judge a comparison whose runs were trained elsewhere (one cluster task per member config).

    Reads the plan beside the member configs, each member's record from the planned output,
    and writes the claim dataset that `reprodl compare` would have written.
    """
    from reprodl.reproduction.claims import collect

    result = collect(directory, metric=metric)
    if as_json:
        print_json(result.to_dict())
    else:
        _print(result)


def _print(result: Comparison) -> None:
    out.print(
        f"P(A>B) on {result.metric} over {result.n} paired runs: {result.probability_a_better:.3f} "
        f"(95% CI [{result.ci_low:.3f}, {result.ci_high:.3f}])",
        markup=False,
    )
    out.print(f"Verdict: {result.verdict}", markup=False)
    for name, row in (result.baselines or {}).items():
        out.print(
            f"Baseline {name.replace('_', '-')}: accuracy {row['accuracy']:.3f}; "
            f"P(A > it) {row['probability_a_better']:.2f}, P(B > it) {row['probability_b_better']:.2f}",
            markup=False,
        )
    if result.evaluation_band is not None:
        band = result.evaluation_band
        out.print(
            f"Evaluation band: {result.metric} moves by up to {band['band']:.4f} with the evaluation batch size "
            f"({', '.join(map(str, band['batch_sizes']))}); pairs closer than that count as ties",
            markup=False,
        )
    out.print(f"Varied: {','.join(result.vary)}", markup=False)
    for note in result.notes:
        out.print(f"Note: {note}", markup=False)
    out.print(f"Rule: {result.rule}", markup=False)
    out.print(f"Claim dataset: {result.claim_uri}", markup=False)


@app.command("ablate")
@handle_errors
@executor_options
def ablate_cmd(
    config: Path = typer.Argument(..., help="The base recipe: a training config (YAML)."),
    variant: list[str] = typer.Option(
        ...,
        "--variant",
        help="'NAME: key=value [key=value ...]', e.g. 'no-momentum: optimizer.momentum=0'; repeatable.",
    ),
    seeds: int = typer.Option(..., "--seeds", help="Runs per recipe (>= 2); run i of each shares a seed."),
    vary: Optional[str] = VARY_OPT,
    metric: str = METRIC_OPT,
    jobs: Optional[int] = JOBS_OPT,
    set_: Optional[list[str]] = typer.Option(
        None, "--set", help="Override a value of the base and every variant: epochs=3; repeatable."
    ),
    output: Optional[str] = typer.Option(
        None, "--output", help="Base URI of the runs and the claims (default: the config's)."
    ),
    engine: Executor = EXECUTOR,
    as_json: bool = JSON_OPT,
) -> None:
    """The base recipe against each variant: one line per variant with P(base > variant), its 95% interval and verdict.

    'A better' means the base beats the variant (what the variant removes or changes helps).
    Each line is written as a claim dataset that `reprodl verify` checks.
    """
    from reprodl.reproduction.claims import RULE, ablate

    def on_run(side: str, run: RunValue) -> None:
        if not as_json:
            out.print(f"{side} seed {run.seed}: {metric} {run.value:.4f}  {run.uri}", markup=False)

    result = ablate(
        config,
        variant,
        seeds=seeds,
        vary=vary,
        metric=metric,
        jobs=jobs,
        set_=set_ or (),
        output=output,
        on_run=on_run,
        executor=engine,
    )
    if as_json:
        print_json(result.to_dict())
        return
    out.print(f"P(base > variant) on {metric} over {seeds} paired runs (A = base, B = variant):", markup=False)
    for name, c in result.variants.items():
        out.print(
            f"  {name}: {c.probability_a_better:.3f} [{c.ci_low:.3f}, {c.ci_high:.3f}]  {c.verdict}  {c.claim_uri}",
            markup=False,
        )
    first = next(iter(result.variants.values()))
    out.print(f"Varied: {','.join(first.vary)}", markup=False)
    for note in first.notes:
        out.print(f"Note: {note}", markup=False)
    out.print(f"Rule: {RULE}", markup=False)


@app.command("replicate")
@handle_errors
def replicate_cmd(
    uri: str = typer.Argument(..., help="The original model dataset URI."),
    data: str = typer.Option(..., "--data", help="The new dataset: same input shape and label set as the original's."),
    output: Optional[str] = typer.Option(
        None, "--output", help="Base URI of the replication (default: the original's base, when local)."
    ),
    name: Optional[str] = typer.Option(
        None, "--name", help="The replication's name (default <model>.replication-<data name>)."
    ),
    allow: Optional[list[str]] = typer.Option(
        None, "--allow", help="Module (or module:Class) trusted to be imported for the architecture; repeatable."
    ),
    quiet: bool = QUIET_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Train a model's recorded recipe on other data; both models' metrics side by side.

    The architecture, initialisation, optimiser, loss, scheduler, parameters, seed and transforms
    come from the record; the new data must have the same input type, sample shape and label
    set (otherwise refused before training). The new record names the original in
    lineage.replicates; with a multi-run envelope, the replication is placed in it.
    """
    from reprodl.reproduction.replicate import replicate

    def on_start() -> None:
        if not (quiet or as_json):
            err.print(f"Replicating {uri} on {data}: the data fit its recipe; training...", markup=False)

    result = replicate(
        uri,
        data=data,
        output=output,
        name=name,
        allow=allow or (),
        progress=not (quiet or as_json),
        on_start=on_start,
    )
    if as_json:
        print_json(result.to_dict())
        return
    out.print(f"Replication: {result.replication_uri}", markup=False)
    out.print(f"{'metric':<16} {'original':>10} {'replication':>12} {'difference':>11}", markup=False)
    for row in result.metrics:
        out.print(
            f"{row['metric']:<16} {_num(row['original']):>10} {_num(row['replication']):>12} "
            f"{_num(row['difference'], sign=True):>11}",
            markup=False,
        )
    for row in result.metrics:
        env = row.get("envelope")
        if env:
            where = "within" if env["within"] else "OUTSIDE"
            out.print(
                f"{row['metric']}: {where} the original's envelope of {env['n']} runs "
                f"(mean {env['mean']:.4f}, std {env['std']:.4f}, range [{env['min']:.4f}, {env['max']:.4f}])",
                markup=False,
            )


def _num(value: float | None, *, sign: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.4f}" if sign else f"{value:.4f}"


def register(root: typer.Typer) -> None:
    """Add this module's commands to ``root``, the ``reprodl`` app (:func:`reprodl.cli.build`)."""
    root.registered_commands.extend(app.registered_commands)
