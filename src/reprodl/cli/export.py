"""reprodl export URI --format F -o OUT: the record in an open standard's format."""

from __future__ import annotations

from typing import Optional

import typer

from reprodl.cli.common import JSON_OPT, QUIET_OPT, err, handle_errors, out, print_json
from reprodl.exports import export
from reprodl.exports.formats import FORMATS


def _listed() -> str:
    """The formats of the table (:mod:`reprodl.exports.formats`), as help and errors name them."""
    names = [f"{f.name} (a dataset)" if f.needs == "dataset" else f.name for f in FORMATS.values()]
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else "".join(names)


app = typer.Typer()  # this module's top-level commands: register() adds them to the reprodl app


@app.command("export")
@handle_errors
def export_cmd(
    uri: str = typer.Argument(..., help="Model dataset URI (a dataset URI for croissant)."),
    format: str = typer.Option(..., "--format", "-f", help=f"What to write: {_listed()}."),
    output: Optional[str] = typer.Option(
        None, "--output", "-o", help="File to write (ro-crate: a directory). Not for mlflow: use --tracking-uri."
    ),
    tracking_uri: Optional[str] = typer.Option(
        None, "--tracking-uri", help="mlflow: the tracking URI, or a directory for MLflow's file store."
    ),
    experiment: str = typer.Option("reprodl", "--experiment", help="mlflow: the experiment's name."),
    allow: Optional[list[str]] = typer.Option(
        None,
        "--allow",
        help="onnx, mlflow: module (or module:Class) trusted to be imported for the architecture; repeatable.",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output."),
    as_json: bool = JSON_OPT,
    quiet: bool = QUIET_OPT,
) -> None:
    """Export a model's record (or a dataset) to RO-Crate, PROV, Croissant, a model card, ONNX or MLflow."""

    if format not in FORMATS:
        raise typer.BadParameter(f"unknown format {format!r}: use {_listed()}", param_hint="--format")
    located = FORMATS[format].output == "location"
    target = tracking_uri if located else output
    if target is None:
        need = "--tracking-uri DIR" if located else "-o OUT"
        raise typer.BadParameter(f"--format {format} needs {need}", param_hint=need.split()[0])
    if not quiet and not as_json:
        err.print(f"Exporting {uri} as {format}...")
    result = export(uri, format, target, overwrite=overwrite, allow=allow or (), experiment=experiment)
    if as_json:
        print_json(result.to_dict())
        return
    out.print(
        f"Wrote {result.format} of {result.uri} to {result.output} ({result.bytes:,} bytes, {result.seconds:.2f}s)",
        markup=False,
    )
    if "max_abs_diff" in result.details:
        out.print(
            f"onnxruntime vs torch on sample inputs: max abs difference {result.details['max_abs_diff']:.3g}",
            markup=False,
        )
    if "run_id" in result.details:
        out.print(f"MLflow run {result.details['run_id']} in experiment {experiment!r}", markup=False)
        flavour = result.details.get("pytorch_flavour") or f"none ({result.details.get('why_not')})"
        out.print(f"Logged model {result.details['model_uri']} (pytorch flavour: {flavour})", markup=False)


def register(root: typer.Typer) -> None:
    """Add this module's commands to ``root``, the ``reprodl`` app (:func:`reprodl.cli.build`)."""
    root.registered_commands.extend(app.registered_commands)
