"""A provenance record as lines for people (what ``dtoolai-provenance`` printed, and more).

The familiar lines first (model, optimiser, data, code, environment, epochs, lineage), then
every other field of the record, walked from its JSON Schema (:mod:`reprodl.provenance.fields`)
and grouped by the object holding it: a field added to the record is printed at once. Long
values are given by their size and digest, and the lines are bounded (datasets, epochs and
fields outside the schema past a limit are counted).
"""

from __future__ import annotations

import json
from typing import Any

from reprodl import keys
from reprodl.provenance.code_env import RUN_OUTPUT, GitInfo
from reprodl.provenance.fields import field_values, schema_path, summarised
from reprodl.provenance.record import EpochMetrics, ProvenanceRecord

MAX_DATASETS = 20  # datasets printed one by one; the rest are counted
MAX_EPOCHS = 200  # epochs printed one by one; the rest are counted
MAX_LIST_ITEMS = 4  # a list of at most this many objects is printed item by item
MAX_VALUE_CHARS = 80  # a longer value is printed by its size and digest
# The fields the familiar lines print (paths as the schema names them); every other is under "More fields".
SHOWN = (
    "model_name",
    "architecture.import_path",
    "architecture.init_params",
    "architecture.n_parameters",
    "architecture.n_trainable",
    "architecture.frozen_parameters",
    "training.params",
    "training.optimizer.class_name",
    "training.optimizer.param_groups",
    "training.loss.class_name",
    "training.loss.args",
    "training.epochs",
    "training.batch_size",
    "training.device",
    "training.determinism.mode",
    "training.seeds.seed",
    "training.data_order_not_recorded",
    "training.scheduler.class_name",
    "training.scheduler.args",
    *(f"data[].{name}" for name in ("role", "uri", "name", "uuid", "n_items", "usetype", "manifest_digest", "readme")),
    "data[].readme_of",
    "code.git.commit",
    "code.git.branch",
    "code.git.dirty",
    "code.config_file",
    "code.entry_script",
    *(f"code.run.{name}" for name in ("module", "entry_script", "argv", "working_directory", "seed")),
    "environment.python",
    "environment.torch",
    "environment.platform",
    "environment.gpus",
    "results.history",
    "results.wall_time_s",
    *(f"lineage.{link}.{name}" for link in ("parent", "reproduces", "replicates") for name in ("uri", "uuid")),
    "digest",
)


def _optimiser_line(t: Any) -> str:
    """The headline optimiser: the first's class and first parameter group; the others are counted."""
    line = f"Optimiser: {t.optimizer.class_name} " + json.dumps(
        t.optimizer.param_groups[0] if t.optimizer.param_groups else {}, sort_keys=True, default=str
    )
    groups = len(t.optimizer.param_groups)
    more = [f"parameter group 1 of {groups} (all in the record)"] if groups > 1 else []
    more += [f"{len(t.optimizers) - 1} more optimiser(s) below"] if len(t.optimizers) > 1 else []
    return line + (f" ({'; '.join(more)})" if more else "")


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
    for d in record.data[:MAX_DATASETS]:
        lines += [
            f"Source dataset ({d.role}) URI: {d.uri}",
            f"Source dataset ({d.role}) name: {d.name}",
            f"Source dataset ({d.role}) UUID: {d.uuid}",
            f"Source dataset ({d.role}) items: {d.n_items}" + (f" (usetype {d.usetype})" if d.usetype else ""),
            f"Source dataset ({d.role}) manifest digest: {d.manifest_digest}",
            f"Source dataset ({d.role}) readme:",
            *("    " + line for line in record.readme_for(d).rstrip().splitlines()),
        ]
    if len(record.data) > MAX_DATASETS:
        lines.append(f"... and {len(record.data) - MAX_DATASETS:,} more datasets (--json prints them)")
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
        _optimiser_line(t),
        f"Loss function: {t.loss.class_name} {json.dumps(t.loss.args, sort_keys=True, default=str)}",
        f"Epochs: {t.epochs or 'not counted (no epoch logged)'}, optimiser steps: {t.optimizer_steps}, "
        f"batch size: {t.batch_size}, device: {t.device}, mode: {t.determinism.mode}, seed: {t.seeds.seed}",
        *_component_lines(record),
    ]
    if t.data_order_not_recorded:
        lines.append(f"Warning: data order not recorded per epoch: {t.data_order_not_recorded}")
    if t.scheduler:
        lines.append(f"Scheduler: {t.scheduler.class_name} {json.dumps(t.scheduler.args, sort_keys=True, default=str)}")
    lines += _data_lines(record)
    lines += _code_lines(record)
    env = record.environment
    lines.append(
        f"Environment: Python {env.python}, torch {env.torch}, {env.platform}"
        + (f", GPU {', '.join(env.gpus)}" if env.gpus else "")
    )
    history = record.results.history
    lines += [_epoch_line(m) for m in history[:MAX_EPOCHS]]
    if len(history) > MAX_EPOCHS:
        lines.append(f"... and {len(history) - MAX_EPOCHS:,} more epochs (--json prints them)")
    lines.append(f"Wall time: {record.results.wall_time_s:.1f}s")
    lines += _lineage_lines(record)
    lines.append(f"Record digest: {record.digest}")
    return lines + more_lines(record)


def _code_lines(record: ProvenanceRecord) -> list[str]:
    """Where the code came from and how to run it again."""
    lines: list[str] = []
    git = record.code.git
    if git and git.commit:
        state = dirty_state(git)
        lines.append(f"Code: git {git.commit[:12]} on {git.branch}" + (f" ({state})" if state else ""))
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
    return lines


def dirty_state(git: GitInfo) -> str | None:
    """What a dirty tree left with the model, exactly: the patch of tracked changes and the untracked files
    stored (naming their items), and what was not stored; None for a clean tree.

    Example: ``dirty; stored: patch code.patch of tracked changes, 2 untracked files in code/untracked/``.
    """
    if not git.dirty:
        return None
    stored: list[str] = []
    if git.patch_item:
        stored.append(f"patch {git.patch_item} of tracked changes")
    n = len(git.untracked_items)
    if n:
        folder = f"{keys.CODE_DIR}untracked/"
        stored.append(f"{n} untracked file{'' if n == 1 else 's'} in {folder}")
    not_stored: list[str] = []
    if git.patch_sha256 and not git.patch_item:
        not_stored.append("the patch of tracked changes")
    if git.patch_skipped:
        not_stored.append(f"changes to {len(git.patch_skipped)} secret-named tracked file(s)")
    why = git.untracked_skipped_reasons
    skipped = [rel for rel in git.untracked_skipped if why.get(rel) != RUN_OUTPUT]
    if skipped:
        not_stored.append(f"{len(skipped)} untracked file(s), see code.git.untracked_skipped_reasons")
    parts = ["dirty"]
    parts.append("stored: " + ", ".join(stored) if stored else "nothing stored")
    if not_stored:
        parts.append("not stored: " + ", ".join(not_stored))
    return "; ".join(parts)


def _lineage_lines(record: ProvenanceRecord) -> list[str]:
    """The models this one was fine-tuned from, reproduces or replicates."""
    lines: list[str] = []
    if record.lineage.parent:
        lines.append(f"Fine-tuned from: {record.lineage.parent.uri} ({record.lineage.parent.uuid})")
    if record.lineage.reproduces:
        lines.append(f"Reproduces: {record.lineage.reproduces.uri} ({record.lineage.reproduces.uuid})")
    if record.lineage.replicates:
        lines.append(f"Replicates: {record.lineage.replicates.uri} ({record.lineage.replicates.uuid})")
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


def _shown_value(value: Any) -> str:
    """A value in one short piece: JSON, or its size and digest when long."""
    short = summarised(value, MAX_VALUE_CHARS)
    return short if short is not value and isinstance(short, str) else json.dumps(value, default=str)


def more_lines(record: ProvenanceRecord) -> list[str]:
    """Every field of the record the familiar lines do not print (or print only when set), walked
    from the schema: a line per object (``training: world_size=1, ...``), lists of a few objects
    item by item."""
    shown = set(SHOWN) | ({"models", "training.optimizers"} if _component_lines(record) else set())
    groups: dict[str, list[str]] = {}
    for path, value in field_values(record.model_dump(mode="json"), max_items=MAX_LIST_ITEMS):
        named = schema_path(path)
        if value is not None and any(named[:i] in shown for i, c in enumerate(named + ".") if c in ".["):
            continue
        parent, _, name = path.rpartition(".")
        groups.setdefault(parent or "record", []).append(f"{name}={_shown_value(value)}")
    if not groups:
        return []
    return ["More fields (reprodl provenance --json prints each whole):"] + [
        f"  {parent}: {', '.join(fields)}" for parent, fields in groups.items()
    ]
