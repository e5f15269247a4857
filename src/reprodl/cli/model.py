"""Model commands: provenance, convert, schema, predict, evaluate, diff, verify, lineage, demo (train and
reproduce have their own modules, cli/train.py and cli/reproduce.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer

from reprodl import keys
from reprodl.cli.common import (
    ALLOW_OPT,
    JSON_OPT,
    QUIET_OPT,
    TRUSTED_KEY_OPT,
    handle_errors,
    out,
    print_json,
)
from reprodl.errors import ExitCode, ModelLoadError

if TYPE_CHECKING:
    pass

app = typer.Typer()  # this module's top-level commands: register() adds them to the reprodl app


@app.command("provenance")
@handle_errors
def provenance_cmd(uri: str = typer.Argument(..., help="Model dataset URI."), as_json: bool = JSON_OPT) -> None:
    """Print how a model was made: architecture, parameters, data (URI, name, README) and more."""
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


@app.command("predict")
@handle_errors
def predict_cmd(
    uri: str = typer.Argument(..., help="Model dataset URI."),
    images: list[Path] = typer.Argument(..., help="Image files (any mode and size)."),
    allow: Optional[list[str]] = ALLOW_OPT,
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
    allow: Optional[list[str]] = ALLOW_OPT,
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
    allow: Optional[list[str]] = ALLOW_OPT,
    trusted_key: Optional[list[str]] = TRUSTED_KEY_OPT,
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
    from reprodl.cli.reproduce import print_report

    ok = run_demo(workdir, epochs=epochs, say=lambda s: out.print(s, markup=False), show_report=print_report)
    raise typer.Exit(0 if ok else int(ExitCode.FAILED))


def register(root: typer.Typer) -> None:
    """Add this module's commands to ``root``, the ``reprodl`` app (:func:`reprodl.cli.build`)."""
    root.registered_commands.extend(app.registered_commands)
