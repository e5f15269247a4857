"""``reprodl report URI -o report.html``: one self-contained HTML page about a dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from reprodl.cli.common import JSON_OPT, QUIET_OPT, err, handle_errors, out, print_json

app = typer.Typer()  # this module's top-level commands: register() adds them to the reprodl app


@app.command("report")
@handle_errors
def report_cmd(
    uri: str = typer.Argument(..., help="A model, dataset, claim or multi-run summary URI."),
    output: Path = typer.Option(..., "--output", "-o", help="The HTML file to write (its directory must exist)."),
    allow: Optional[list[str]] = typer.Option(
        None, "--allow", help="Module (or module:Class) trusted to be imported to evaluate the model; repeatable."
    ),
    no_evaluate: bool = typer.Option(
        False, "--no-evaluate", help="Do not evaluate a model on its held-out data (no confusion matrix)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the output file if it exists."),
    quiet: bool = QUIET_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Write a one-page HTML report: summary, curves, confusion matrix, envelope, lineage, trace, environment.

    The page is self-contained (plots embedded, nothing loaded at view time). For a dataset it
    shows the README, samples per class and sample images; for a claim, its verdict and runs.
    """
    from reprodl.reports import report

    def say(line: str) -> None:
        if not (quiet or as_json):
            err.print(f"{line}...", markup=False, highlight=False)

    result = report(uri, output, allow=allow or (), evaluate=not no_evaluate, overwrite=overwrite, on_progress=say)
    if as_json:
        print_json(result.to_dict())
        return
    for line in result.notes:
        err.print(f"not shown: {line}", markup=False, highlight=False)
    out.print(
        f"Report ({result.kind}, {result.bytes / 1024:.0f} KB, {result.seconds:.2f}s): {result.output}", markup=False
    )


def register(root: typer.Typer) -> None:
    """Add this module's commands to ``root``, the ``reprodl`` app (:func:`reprodl.cli.build`)."""
    root.registered_commands.extend(app.registered_commands)
