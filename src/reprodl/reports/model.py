"""The report of a model dataset: summary, curves, evaluation, envelope, lineage, trace, environment."""

from __future__ import annotations

import json
from typing import Any

from reprodl import keys
from reprodl.errors import ReprodlError
from reprodl.modeldataset.read import load_trace, read_record
from reprodl.provenance import DataRef, ProvenanceRecord
from reprodl.provenance.summary import dirty_state
from reprodl.reports import plots
from reprodl.reports.context import Context, mapping
from reprodl.reports.html import Raw, details, esc, kv_table, note, pre, section, table
from reprodl.reports.lineage import divergence_section, divergences, first_divergent_step, lineage_section, neighbours
from reprodl.store import StoredDataSet


def model_page(ds: StoredDataSet, ctx: Context) -> tuple[str, str, list[str], str | None]:
    """(title, subtitle, sections, warning banner) of the model dataset ``ds``."""
    ctx.say("reading the provenance record")
    record = read_record(ds, check=False)
    banner = None
    try:
        record.check_digest()
    except ReprodlError as exc:
        banner = f"The provenance record does not check out: {exc}"
        ctx.notes.append(banner)
    evaluation, source = evaluate(ds, record, ctx)
    near = neighbours(ds)
    found = divergences(ds, record, near, ctx)
    sections = [
        summary_section(ds, record, evaluation, digest_ok=banner is None),
        curves_section(record, ctx),
        evaluation_section(evaluation, source),
        envelope_section(ds, record, ctx),
        lineage_section(ds, record, near, ctx),
        trace_section(ds, record, ctx, mark=first_divergent_step(found)),
        divergence_section(found, ctx),
        environment_section(record),
        details_section(record),
    ]
    subtitle = f"{ds.uri} · UUID {ds.uuid} · trained {record.created_at}"
    return f"Model report: {record.model_name}", subtitle, [s for s in sections if s], banner


# --- evaluation -------------------------------------------------------------------------
def held_out(record: ProvenanceRecord) -> DataRef | None:
    """The data the model was validated on (else tested on), if any."""
    refs = record.data_by_role("valid") or record.data_by_role("test")
    return refs[0] if refs else None


def evaluate(ds: StoredDataSet, record: ProvenanceRecord, ctx: Context) -> tuple[dict[str, Any] | None, str]:
    """The model's evaluation on its recorded held-out data (computed now), and where it came from."""
    stored = record.results.final.get("confusion_matrix")
    ref = held_out(record)
    if ctx.evaluate and ref is not None:
        ctx.say(f"evaluating the model on {ref.name} ({ref.usetype or 'all'})")
        try:
            from reprodl.model import TrainedTorchModel
            from reprodl.reproduction.rebuild import open_recorded

            result = TrainedTorchModel(ds.uri, allow=ctx.allow).evaluate(open_recorded(ref))
            return result, (
                f"computed now, by evaluating the model on its recorded {ref.role} data {ref.name} "
                f"({ref.uri}, usetype {ref.usetype or 'all'}, {result['n_samples']} samples)"
            )
        except (ReprodlError, RuntimeError, ValueError) as exc:  # a forward pass that fails is reported too
            why = f"the model could not be evaluated on its {ref.role} data ({exc})"
    else:
        why = "evaluation turned off" if not ctx.evaluate else "the record names no validation or test data"
    if isinstance(stored, list) and isinstance(record.results.final.get("categories"), list):
        import numpy as np

        from reprodl.model import evaluation_report

        result = evaluation_report(np.asarray(stored, dtype=np.int64), list(record.results.final["categories"]))
        return result, f"as stored in the record ({why})"
    ctx.notes.append(f"confusion matrix: {why}")
    return None, why


def class_counts(evaluation: dict[str, Any] | None) -> dict[str, int]:
    if evaluation is None:
        return {}
    return {name: int(c["support"]) for name, c in evaluation["per_class"].items()}


# --- sections ---------------------------------------------------------------------------
def _hyperparameters(record: ProvenanceRecord) -> list[tuple[str, Any]]:
    t = record.training
    group = {k: v for k, v in (t.optimizer.param_groups[0] if t.optimizer.param_groups else {}).items()}
    group.pop("param_names", None)
    group.pop("params", None)
    keep = ("lr", "momentum", "weight_decay", "betas", "eps", "nesterov")
    return [
        ("optimiser", f"{t.optimizer.class_name} " + json.dumps({k: group[k] for k in keep if k in group})),
        ("loss", f"{t.loss.class_name} {json.dumps(t.loss.args, default=str)}" if t.loss.args else t.loss.class_name),
        ("scheduler", t.scheduler.class_name if t.scheduler else None),
        ("epochs × batch size", f"{t.epochs} × {t.batch_size}"),
        ("seed", t.seeds.seed),
        ("determinism", t.determinism.mode),
        ("device", f"{t.device} (world size {t.world_size})"),
    ]


def _result_rows(record: ProvenanceRecord, evaluation: dict[str, Any] | None) -> list[tuple[str, Any]]:
    from reprodl.reproduction.claims import baseline_accuracies

    rows: list[tuple[str, Any]] = [
        (k, v) for k, v in record.results.final.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    ]
    if evaluation is not None:
        rows.append(("accuracy evaluated now", evaluation["accuracy"]))
    for name, value in baseline_accuracies(class_counts(evaluation)).items():
        rows.append((f"baseline: {name.replace('_', ' ')}", value))
    return rows


def summary_section(
    ds: StoredDataSet, record: ProvenanceRecord, evaluation: dict[str, Any] | None, *, digest_ok: bool
) -> str:
    arch = record.architecture
    arch_rows = [
        ("class", arch.import_path),
        ("init params", arch.init_params),
        ("parameters", f"{arch.n_parameters:,} ({arch.n_trainable:,} trainable)"),
        ("initialisation", arch.initialisation),
        (
            "record digest",
            Raw(
                f'{esc(record.digest)} <span class="{"ok" if digest_ok else "bad"}">'
                f"{'checks out' if digest_ok else 'DOES NOT CHECK OUT'}</span>"
            ),
        ),
    ]
    data_rows = [(d.role, d.name, d.uuid, d.usetype or "all", d.n_items, d.uri) for d in record.data]
    results = _result_rows(record, evaluation)
    body = (
        '<div class="grid">'
        f'<div class="card"><h3>Architecture</h3>{kv_table(arch_rows)}</div>'
        f'<div class="card"><h3>Key hyperparameters</h3>{kv_table(_hyperparameters(record))}</div>'
        f'<div class="card"><h3>Result beside its baselines</h3>{kv_table(results)}'
        + ("" if len(results) > len(record.results.final) else note("baselines need the held-out data's classes"))
        + "</div></div><h3>Data</h3>"
        + table(["role", "name", "UUID", "usetype", "samples", "URI"], data_rows, numeric=[4])
    )
    return section("summary", "Summary", body)


def curves_section(record: ProvenanceRecord, ctx: Context) -> str:
    """The per-epoch curves (and a table of them), and what a run logged with run.log, plotted."""
    history, logged = record.results.history, record.results.logged
    body = ""
    if history:
        rows = [
            (m.epoch, m.train_loss, m.valid_loss, m.valid_accuracy, m.learning_rate, m.wall_time_s) for m in history
        ]
        header = ["epoch", "train loss", "valid loss", "valid accuracy", "learning rate", "seconds"]
        body += ctx.plot("training and validation curves", lambda: plots.curves_png(history))
        body += details("per-epoch numbers", table(header, rows, numeric=range(6)))
    series = plots.logged_series(logged)
    if any(name not in plots.CURVES for _, name in series):
        body += "<h3>Metrics logged with run.log</h3>" + ctx.plot("logged metrics", lambda: plots.logged_png(series))
    if logged:
        body += details(f"{len(logged)} entries logged with run.log", pre(json.dumps(logged[:500], indent=1)))
    if not body:
        body = ctx.missing("curves", "the record has no epochs and no logged metrics")
    return section("curves", "Training and validation curves", body)


def confusion_table(evaluation: dict[str, Any]) -> str:
    """The confusion matrix as a table, each cell shaded by its share of its row."""
    cats = [str(c) for c in evaluation["categories"]]
    head = "<tr><th>true \\ predicted</th>" + "".join(f"<th>{esc(c)}</th>" for c in cats) + "</tr>"
    body = ""
    for name, row in zip(cats, evaluation["confusion_matrix"]):
        total = max(1, sum(row))
        cells = "".join(
            f'<td class="cm" style="background:rgba(31,58,95,{0.85 * v / total:.2f});'
            f'color:{"#fff" if v / total > 0.5 else "#1d2330"}">{int(v)}</td>'
            for v in row
        )
        body += f"<tr><th>{esc(name)}</th>{cells}</tr>"
    return f"<table>{head}{body}</table>"


def evaluation_section(evaluation: dict[str, Any] | None, source: str) -> str:
    title = "Confusion matrix and per-class metrics"
    if evaluation is None:
        return section("evaluation", title, note(f"Not shown: {source}."))
    per_class = [(name, c["precision"], c["recall"], c["support"]) for name, c in evaluation["per_class"].items()]
    body = (
        note(f"Source: {source}.")
        + f'<p>accuracy <span class="big">{evaluation["accuracy"]:.2%}</span> on {evaluation["n_samples"]} samples; '
        f"majority class {esc(evaluation['majority_class'])} would score "
        f"{evaluation['majority_baseline_accuracy']:.2%}</p>"
        + '<div class="grid"><div>'
        + confusion_table(evaluation)
        + "</div><div>"
        + table(["class", "precision", "recall", "support"], per_class, numeric=[1, 2, 3])
        + "</div></div>"
    )
    return section("evaluation", title, body)


def envelope_section(ds: StoredDataSet, record: ProvenanceRecord, ctx: Context) -> str:
    uri = ds.get_annotation(keys.SUMMARY_URI) if keys.SUMMARY_URI in ds.annotation_names() else None
    if not uri:
        return ""
    from reprodl.training.multirun import load_summary

    ctx.say(f"reading the seed envelope {uri}")
    try:
        summary = load_summary(str(uri))
    except ReprodlError as exc:
        return section("envelope", "Seed envelope", ctx.missing("seed envelope", f"{uri} unreadable ({exc})"))
    if not isinstance(summary, dict):
        return section("envelope", "Seed envelope", ctx.missing("seed envelope", f"{uri} holds no summary object"))
    rows = []
    for metric, s in ((m, mapping(s)) for m, s in mapping(summary.get("final")).items()):
        mine = record.results.final.get(metric)
        rows.append((metric, mine, s.get("mean"), s.get("std"), s.get("min"), s.get("max"), s.get("n")))
    body = (
        note(
            f"This model is one of {summary.get('n_runs')} runs varying the {summary.get('varied')} "
            f"(summary dataset {uri})."
        )
        + ctx.plot("seed envelope", lambda: plots.envelope_png(summary, record.results.history))
        + table(["final metric", "this model", "mean", "std", "min", "max", "runs"], rows, numeric=range(1, 7))
    )
    return section("envelope", "Seed envelope", body)


def trace_section(ds: StoredDataSet, record: ProvenanceRecord, ctx: Context, *, mark: int | None = None) -> str:
    """The trace's loss and digests per step (``mark``: a divergent step, drawn as a line)."""
    info = record.results.trace
    if info is None:
        return section("trace", "Step trace", note("The record has no step trace."))
    try:
        rows = load_trace(ds, record)
    except ReprodlError as exc:
        return section("trace", "Step trace", ctx.missing("step trace", str(exc)))
    assert rows is not None
    facts = [
        ("optimiser steps traced", info.n_steps),
        ("rows kept", f"{info.n_rows} (every step up to {info.every_step_up_to}, then every {info.stride})"),
        _digested(info),
        ("item", f"{info.item} ({info.sha256})"),
    ]
    if mark is not None:
        facts.append(("first divergent step", Raw(f'<span class="bad">{mark}</span> (the dashed red line)')))
    body = ctx.plot("step trace", lambda: plots.trace_png(rows, info.tensors, mark_step=mark)) + kv_table(facts)
    return section("trace", "Step trace", body)


def _digested(info: Any) -> tuple[str, str]:
    """What the trace digests: every element (exact) or a sample of each tensor (older records)."""
    if info.kind == "sampled":
        return ("tensors fingerprinted", f"{len(info.tensors)} ({info.sample} sampled elements each)")
    optimisers = ", ".join(info.optimizers) or "none"
    return ("tensors digested", f"{len(info.tensors)} (every element, exact), and the optimiser state: {optimisers}")


def environment_section(record: ProvenanceRecord) -> str:
    env, code, det = record.environment, record.code, record.training.determinism
    git = code.git
    compute = env.compute
    env_rows = [
        ("Python", f"{env.python} ({env.implementation})"),
        ("platform", f"{env.platform} ({env.machine}, {env.cpu_count} CPUs)"),
        ("torch / CUDA / cuDNN", f"{env.torch} / {env.cuda} / {env.cudnn}"),
        ("GPUs", ", ".join(env.gpus) or "none"),
        ("NumPy / reprodl", f"{env.numpy} / {env.reprodl}"),
        ("CPU", f"{compute.cpu_model} ({compute.cpu_capability}, BLAS {compute.blas})" if compute else None),
        (
            "determinism",
            f"{det.mode}; deterministic algorithms {det.use_deterministic_algorithms}; threads {det.num_threads}",
        ),
    ]
    code_rows = [
        (
            "git commit",
            f"{git.commit} on {git.branch}" + (f" ({dirty_state(git)})" if git.dirty else "")
            if git and git.commit
            else None,
        ),
        ("remote", git.remote if git else None),
        ("entry script", code.entry_script),
        ("command line", " ".join(code.argv) if code.argv else None),
        ("config file", code.config_file),
        ("source snapshot", f"{code.snapshot.item} ({code.snapshot.n_files} files)" if code.snapshot else None),
    ]
    packages = table(["package", "version"], sorted(env.packages.items()))
    body = (
        f'<div class="grid"><div class="card"><h3>Environment</h3>{kv_table(env_rows)}</div>'
        f'<div class="card"><h3>Code version</h3>{kv_table(code_rows)}</div></div>'
        + details(f"{len(env.packages)} installed packages", packages)
    )
    return section("environment", "Environment and code version", body)


def details_section(record: ProvenanceRecord) -> str:
    dumped = record.model_dump(mode="json")
    dumped["environment"]["packages"] = f"({len(record.environment.packages)} packages: see above)"
    for d in dumped["data"]:
        if d.get("readme") and len(d["readme"]) > 200:
            d["readme"] = d["readme"][:200] + "… (in full above)"
    readmes = "".join(
        f"<h3>{esc(d.role)}: {esc(d.name)}</h3>{pre(record.readme_for(d))}" for d in record.data if record.readme_for(d)
    )
    body = details("data READMEs", readmes or note("none")) + details(
        "the full provenance record (JSON)", pre(json.dumps(dumped, indent=2, default=str))
    )
    return section("record", "Record", body)
