"""A provenance record as lines for people (what ``dtoolai-provenance`` printed, and more)."""

from __future__ import annotations

import json

from reprodl.provenance.record import EpochMetrics, ProvenanceRecord


def _component_lines(record: ProvenanceRecord) -> list[str]:
    """A line per model and per optimiser, when the record has several (or a model updated by hand)."""
    models, optimizers = record.models, record.training.optimizers
    if len(models) <= 1 and len(optimizers) == 1:
        return []
    lines = [
        f"Model {m.name}: {m.architecture.import_path}, "
        + (f"weights {m.weights_file}" if m.weights_file else "weights not saved")
        + (f", optimisers {', '.join(m.optimizers)}" if m.optimizers else f", updated by hand ({m.steps} steps)")
        for m in models
    ]
    return lines + [
        f"Optimiser {o.name} (of {o.model}): {o.class_name}, {o.steps} steps" + (" (closure)" if o.closure else "")
        for o in optimizers
    ]


def _data_lines(record: ProvenanceRecord) -> list[str]:
    """Each dataset's URI, name, UUID, items, manifest digest and README."""
    lines: list[str] = []
    for d in record.data:
        lines += [
            f"Source dataset ({d.role}) URI: {d.uri}",
            f"Source dataset ({d.role}) name: {d.name}",
            f"Source dataset ({d.role}) UUID: {d.uuid}",
            f"Source dataset ({d.role}) items: {d.n_items}" + (f" (usetype {d.usetype})" if d.usetype else ""),
            f"Source dataset ({d.role}) manifest digest: {d.manifest_digest}",
            f"Source dataset ({d.role}) readme:",
            *("    " + line for line in record.readme_for(d).rstrip().splitlines()),
        ]
    return lines


def summary_lines(record: ProvenanceRecord) -> list[str]:
    """What the paper's ``dtoolai-provenance`` prints, and more, as lines for people."""
    arch = record.architecture
    t = record.training
    lines = [
        f"Model name: {record.model_name}",
        f"Network architecture name: {arch.import_path}",
        f"Architecture init params: {json.dumps(arch.init_params, sort_keys=True)}",
        f"Parameters: {arch.n_parameters:,} ({arch.n_trainable:,} trainable)"
        + (f"; frozen: {', '.join(arch.frozen_parameters)}" if arch.frozen_parameters else ""),
        f"Model training parameters: {json.dumps(t.params, sort_keys=True)}",
        f"Optimiser: {t.optimizer.class_name} "
        + json.dumps(t.optimizer.param_groups[0] if t.optimizer.param_groups else {}, sort_keys=True, default=str),
        f"Loss function: {t.loss.class_name} {json.dumps(t.loss.args, sort_keys=True, default=str)}",
        f"Epochs: {t.epochs}, batch size: {t.batch_size}, device: {t.device}, "
        f"mode: {t.determinism.mode}, seed: {t.seeds.seed}",
        *_component_lines(record),
    ]
    if t.data_order_not_recorded:
        lines.append(f"Warning: data order not recorded per epoch: {t.data_order_not_recorded}")
    if t.scheduler:
        lines.append(f"Scheduler: {t.scheduler.class_name} {json.dumps(t.scheduler.args, sort_keys=True, default=str)}")
    lines += _data_lines(record)
    git = record.code.git
    if git and git.commit:
        lines.append(f"Code: git {git.commit[:12]} on {git.branch}" + (" (dirty; patch stored)" if git.dirty else ""))
    if record.code.config_file:
        lines.append(f"Training config: {record.code.config_file}")
    elif record.code.entry_script:
        lines.append(f"Entry script: {record.code.entry_script}")
    run = record.code.run
    if run is not None:
        what = f"-m {run.module}" if run.module else (run.entry_script or "(interactive)")
        lines.append(
            f"Run again by: python {' '.join([what, *run.argv])} (in {run.working_directory}, seed {run.seed}); "
            "reprodl reproduce re-executes it with --trust-code"
        )
    env = record.environment
    lines.append(
        f"Environment: Python {env.python}, torch {env.torch}, {env.platform}"
        + (f", GPU {', '.join(env.gpus)}" if env.gpus else "")
    )
    lines += [_epoch_line(m) for m in record.results.history]
    lines.append(f"Wall time: {record.results.wall_time_s:.1f}s")
    if record.lineage.parent:
        lines.append(f"Fine-tuned from: {record.lineage.parent.uri} ({record.lineage.parent.uuid})")
    if record.lineage.reproduces:
        lines.append(f"Reproduces: {record.lineage.reproduces.uri} ({record.lineage.reproduces.uuid})")
    if record.lineage.replicates:
        lines.append(f"Replicates: {record.lineage.replicates.uri} ({record.lineage.replicates.uuid})")
    lines.append(f"Record digest: {record.digest}")
    return lines


def _epoch_line(m: EpochMetrics) -> str:
    """One epoch's metrics; those a run did not log (a run-API loop logs what it chooses) left out."""
    parts = [f"train loss {m.train_loss:.4f}"]
    if m.valid_loss is not None:
        parts.append(f"valid loss {m.valid_loss:.4f}")
    if m.valid_accuracy is not None:
        parts.append(f"valid accuracy {m.valid_accuracy:.2%}")
    timing = f" ({m.wall_time_s:.1f}s)" if m.wall_time_s else ""
    return f"Epoch {m.epoch}: {', '.join(parts)}{timing}"
