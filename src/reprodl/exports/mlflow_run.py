"""A model's record logged to MLflow as one finished run, where MLflow users already look.

Parameters, metrics per epoch (``step`` = epoch), the datasets as run inputs (name, URI, UUID
and reprodl's manifest digest) and the model dataset's URI, UUID and digests as tags. MLflow is
imported only here, and only through a client bound to the tracking URI given: no global
MLflow state is changed. A directory becomes MLflow's file store (``file:``), which MLflow 3
keeps in maintenance mode: reading it back needs ``MLFLOW_ALLOW_FILE_STORE=true``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import posixpath
import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from reprodl.exports.source import ExportError, Source, model_identity, require
from reprodl.provenance import ProvenanceRecord

_ALLOW_FILE_STORE = "MLFLOW_ALLOW_FILE_STORE"
_MLFLOW_NAME = re.compile(r"[/\w.\- :]+")  # what MLflow accepts as a parameter or metric name
_MLFLOW_MAX_NAME = 250
_HISTORY_METRICS = ("train_loss", "valid_loss", "valid_accuracy", "learning_rate", "wall_time_s")


def tracking_uri_of(target: str | os.PathLike[str]) -> str:
    """An MLflow tracking URI: a URI with a scheme as given, a directory as a ``file:`` store."""
    text = str(target)
    if "://" in text or text.startswith(("file:", "sqlite:", "databricks")):
        return text
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise ExportError(f"{path} is a file, not a directory: give a directory (or a URI) as the tracking URI")
    return path.resolve().as_uri()


@contextlib.contextmanager
def _file_store_allowed() -> Iterator[None]:
    """MLflow 3 refuses its file store unless MLFLOW_ALLOW_FILE_STORE is set: set it for this block only."""
    before = os.environ.get(_ALLOW_FILE_STORE)
    os.environ[_ALLOW_FILE_STORE] = "true"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(_ALLOW_FILE_STORE, None)
        else:
            os.environ[_ALLOW_FILE_STORE] = before


def log_to_mlflow(source: Source, tracking_uri: str, *, experiment: str = "reprodl") -> dict[str, Any]:
    """Log the record as a finished run of ``experiment``; returns the run's id and what was logged."""
    require("mlflow", extra="mlflow", feature="the MLflow export")
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    record = source.model_record("mlflow")
    start = _ms(record.results.started_at or record.created_at)
    params = [Param(k, v) for k, v in _params(record).items()]
    metrics = [Metric(k, v, ts, step) for k, v, ts, step in _metrics(record, start)]
    for name, what in [(p.key, "parameter") for p in params] + [(m.key, "metric") for m in metrics]:
        _check_name(name, what, source.uri)
    with _file_store_allowed():
        client = MlflowClient(tracking_uri=tracking_uri)
        found = client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found is not None else client.create_experiment(experiment)
        run = client.create_run(experiment_id, start_time=start, run_name=record.model_name, tags=_tags(source, record))
        run_id = run.info.run_id
        with _run_removed_on_failure(client, run_id, source.uri):
            for i in range(0, max(len(params), len(metrics)), 100):  # MLflow takes 100 params per batch
                client.log_batch(run_id, metrics=metrics[i : i + 100], params=params[i : i + 100], tags=[])
            client.log_inputs(run_id, datasets=_inputs(record))
            end = record.results.finished_at
            client.set_terminated(run_id, "FINISHED", end_time=_ms(end) if end else None)
    return {
        "run_id": run_id,
        "experiment_id": experiment_id,
        "tracking_uri": tracking_uri,
        "params": len(params),
        "metrics": len(metrics),
        "inputs": len({r.uuid for r in record.data}),
    }


@contextlib.contextmanager
def _run_removed_on_failure(client: Any, run_id: str, uri: str) -> Iterator[None]:
    """Delete the half-logged run when MLflow refuses part of it, and say what it refused."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        with contextlib.suppress(Exception):
            client.delete_run(run_id)
        raise ExportError(
            f"MLflow refused the record of {uri} ({exc.message}); the half-logged run {run_id} was deleted. "
            "Export the record in another format (--format ro-crate or prov), which keeps every value"
        ) from None


def _check_name(name: str, what: str, uri: str) -> None:
    """Refuse, before anything is logged, a name MLflow would refuse or store as a path elsewhere."""
    norm = posixpath.normpath(name) if name else ""
    if (
        not _MLFLOW_NAME.fullmatch(name)
        or len(name) > _MLFLOW_MAX_NAME
        or norm != name
        or norm == "."
        or norm.startswith(("..", "/"))
    ):
        raise ExportError(
            f"the record of {uri} has a {what} named {name!r}, which MLflow cannot store: a name is at most "
            f"{_MLFLOW_MAX_NAME} letters, digits, spaces and _ - . / :, and no '.' or '..' part. "
            "Export the record in another format (--format ro-crate or prov), which keeps every name"
        )


def _ms(iso: str) -> int:
    """Milliseconds since the epoch of an ISO 8601 time."""
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


def _tags(source: Source, record: ProvenanceRecord) -> dict[str, str]:
    """The model's identity and digests, and the code's commit."""
    tags = {
        **model_identity(source, record),
        "mlflow.note.content": f"Exported by reprodl from {source.uri}; `reprodl provenance {source.uri}` shows all.",
    }
    git = record.code.git
    if git is not None and git.commit:
        tags["mlflow.source.git.commit"] = git.commit
    if record.lineage.parent is not None:
        tags["reprodl.parent_uri"] = record.lineage.parent.uri
    return tags


def _params(record: ProvenanceRecord) -> dict[str, str]:
    """Hyperparameters, flat: the training params, the optimiser's first group, the model's init params."""
    t = record.training
    flat: dict[str, Any] = {k: v for k, v in t.params.items() if k not in ("init_params", "user")}
    flat.update({f"user.{k}": v for k, v in (t.params.get("user") or {}).items()})
    flat.update({f"init.{k}": v for k, v in record.architecture.init_params.items()})
    if t.optimizer.param_groups:
        flat.update({f"optimizer.{k}": v for k, v in t.optimizer.param_groups[0].items() if k != "param_names"})
    flat.update(
        {
            "optimizer": t.optimizer.class_name,
            "loss": t.loss.class_name,
            "architecture": record.architecture.import_path,
            "epochs": t.epochs,
            "batch_size": t.batch_size,
        }
    )
    if t.scheduler is not None:
        flat["scheduler"] = t.scheduler.class_name
    return {k: v if isinstance(v, str) else json.dumps(v, default=str) for k, v in flat.items()}


def _metrics(record: ProvenanceRecord, start: int) -> list[tuple[str, float, int, int]]:
    """(name, value, timestamp ms, step) for each epoch's metrics, step = epoch; for a run of the run
    API, each number ``run.log`` recorded, step = its epoch or step."""
    if record.results.logged:
        return _logged_metrics(record.results.logged, start)
    rows: list[tuple[str, float, int, int]] = []
    elapsed = 0.0
    for m in record.results.history:
        elapsed += m.wall_time_s
        stamp = start + int(elapsed * 1000)
        for name in _HISTORY_METRICS:
            value = getattr(m, name)
            if value is not None:
                rows.append((name, float(value), stamp, m.epoch))
    return rows


def _logged_metrics(logged: list[dict[str, Any]], start: int) -> list[tuple[str, float, int, int]]:
    """What ``run.log`` recorded: each finite number, at its step (or epoch)."""
    rows = []
    for i, entry in enumerate(logged):
        axis = "step" if "step" in entry else "epoch"
        step = entry.get(axis, 0)
        whole = isinstance(step, int) or (isinstance(step, float) and math.isfinite(step) and step.is_integer())
        if isinstance(step, bool) or not whole or abs(step) >= 2**63:
            raise ExportError(
                f"results.logged[{i}] of the record has {axis} {step!r}, not a whole number: MLflow needs an integer "
                "step. The record was edited or damaged; export it in another format (--format ro-crate or prov)"
            )
        step = int(step)
        for name, value in entry.items():
            if name in ("epoch", "step") or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if math.isfinite(value):
                rows.append((name, float(value), start, step))
    return rows


def _inputs(record: ProvenanceRecord) -> list[Any]:
    """The datasets as MLflow run inputs: URI as source, reprodl's digests kept whole in the profile and tags."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    inputs = []
    for ref in record.data:
        source = json.dumps({"uri": ref.uri, "uuid": ref.uuid})
        profile = json.dumps(
            {
                "manifest_digest": ref.manifest_digest,
                "selection_digest": ref.selection_digest,
                "labels_digest": ref.labels_digest,
                "n_items": ref.n_items,
                "usetype": ref.usetype,
            }
        )
        digest = ref.manifest_digest.split(":", 1)[-1][:36]  # MLflow keeps at most 36 characters
        dataset = Dataset(name=ref.name, digest=digest, source_type="dtool", source=source, profile=profile)
        tags = [
            InputTag("mlflow.data.context", ref.role),
            InputTag("reprodl.manifest_digest", ref.manifest_digest),
            InputTag("reprodl.uuid", ref.uuid),
        ]
        inputs.append(DatasetInput(dataset=dataset, tags=tags))
    return inputs
