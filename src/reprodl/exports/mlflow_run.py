"""A model's record logged to MLflow as one finished run, where MLflow users already look.

Parameters, metrics per epoch (``step`` = epoch), the datasets as run inputs (name, URI, UUID
and reprodl's manifest digest; one input per role, so a validation split of the training
dataset shows beside it), the model dataset's URI, UUID and digests as tags, who ran it and
which code (MLflow's User and Source), and the model itself as the run's logged model: an
MLflow model directory holding the model dataset (``reprodl-model/``, which
``reprodl.TrainedTorchModel`` loads) and, where torch can export the architecture, MLflow's
``pytorch`` flavour in its ``pt2`` format (a traced graph: ``mlflow.pytorch.load_model`` loads
it without unpickling code). MLflow is imported only here, and only through a client bound to
the tracking URI given: no global MLflow state is changed. A directory becomes MLflow's file
store (``file:``), which MLflow 3 keeps in maintenance mode: reading it back needs
``MLFLOW_ALLOW_FILE_STORE=true``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import posixpath
import re
import tempfile
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from reprodl import keys
from reprodl.errors import ReprodlError
from reprodl.exports.formats import ExportOptions
from reprodl.exports.source import ExportError, Source, code_name, model_identity, require
from reprodl.provenance import ProvenanceRecord
from reprodl.provenance.fields import field_values, summarised, under
from reprodl.store import copy_dataset, local_path

_ALLOW_FILE_STORE = "MLFLOW_ALLOW_FILE_STORE"
_MLFLOW_NAME = re.compile(r"[/\w.\- :]+")  # what MLflow accepts as a parameter or metric name
_MLFLOW_MAX_NAME = 250
_HISTORY_METRICS = ("train_loss", "valid_loss", "valid_accuracy", "learning_rate", "wall_time_s")
# Fields logged otherwise (metrics, inputs, tags) or under the short names of _params; every other
# field of the record, walked from its schema, is a parameter named by its path.
_NOT_PARAMS = (
    "results",
    "data",
    "digest",
    "training.params",
    "architecture.init_params",
    "training.optimizer.param_groups",
    "training.optimizer.class_name",
    "training.loss.class_name",
    "architecture.import_path",
    "training.batch_size",
    "training.epochs",
    "training.scheduler.class_name",
)
_MAX_PARAM_CHARS = 500  # a longer value is logged by its size and digest (MLflow keeps at most 6,000)


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


def log_to_mlflow(
    source: Source, tracking_uri: str, *, experiment: str = "reprodl", allow: Iterable[str] = ()
) -> dict[str, Any]:
    """Log the record as a finished run of ``experiment``, with the model as its logged model;
    returns the run's and the model's ids and what was logged. ``allow``: modules trusted to
    build the architecture for MLflow's ``pytorch`` flavour (reprodl's zoo always is)."""
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
        start, end = _times(record)
        run = client.create_run(experiment_id, start_time=start, run_name=record.model_name, tags=_tags(source, record))
        run_id = run.info.run_id
        with _run_removed_on_failure(client, run_id, source.uri):
            for i in range(0, max(len(params), len(metrics)), 100):  # MLflow takes 100 params per batch
                client.log_batch(run_id, metrics=metrics[i : i + 100], params=params[i : i + 100], tags=[])
            inputs = _inputs(record)
            client.log_inputs(run_id, datasets=inputs)
            model = _log_model(client, experiment_id, run_id, source, record, allow=allow)
            client.set_terminated(run_id, "FINISHED", end_time=end)
    return {
        "run_id": run_id,
        "experiment_id": experiment_id,
        "tracking_uri": tracking_uri,
        "params": len(params),
        "metrics": len(metrics),
        "inputs": len(inputs),
        **model,
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


def _times(record: ProvenanceRecord) -> tuple[int, int]:
    """Start and end in ms. The record's times are to the second, so a short training would show
    0 ms: the end is the start plus the measured wall time when that is later."""
    start = _ms(record.results.started_at or record.created_at)
    end = _ms(record.results.finished_at) if record.results.finished_at else start
    measured = record.results.wall_time_s or sum(m.wall_time_s or 0.0 for m in record.results.history)
    return start, max(end, start + max(1, round(measured * 1000)))


def _tags(source: Source, record: ProvenanceRecord) -> dict[str, str]:
    """The model's identity and digests; who ran it and which code (MLflow's User and Source)."""
    tags = {
        **model_identity(source, record),
        "mlflow.note.content": f"Exported by reprodl from {source.uri}; `reprodl provenance {source.uri}` shows all.",
        "mlflow.user": str(source.dataset.admin_metadata.get("creator_username") or "unknown"),
        "mlflow.source.name": code_name(record),
        "mlflow.source.type": "LOCAL",
    }
    git = record.code.git
    if git is not None and git.commit:
        tags["mlflow.source.git.commit"] = git.commit
    if git is not None and git.remote:
        tags["mlflow.source.git.repoURL"] = git.remote
    if record.lineage.parent is not None:
        tags["reprodl.parent_uri"] = record.lineage.parent.uri
    return tags


def _log_model(
    client: Any, experiment_id: str, run_id: str, source: Source, record: ProvenanceRecord, *, allow: Iterable[str]
) -> dict[str, Any]:
    """The model as the run's logged model (MLflow 3): an MLflow model directory with the model
    dataset and, where torch can export it, the ``pytorch`` flavour."""
    from mlflow.entities import LoggedModelOutput

    identity = {k: v for k, v in model_identity(source, record).items() if v}
    model = client.create_logged_model(experiment_id, name=_model_name(record), source_run_id=run_id, tags=identity)
    with tempfile.TemporaryDirectory(prefix="reprodl-mlflow-") as tmp:
        local = Path(tmp) / "model"
        flavour = _save_model(source, record, local, model_id=model.model_id, run_id=run_id, allow=allow)
        client.log_model_artifacts(model.model_id, str(local))
    if flavour["pytorch_flavour"] is None:
        client.set_logged_model_tags(model.model_id, {"reprodl.pytorch_flavour": flavour["why_not"]})
    client.finalize_logged_model(model.model_id, "READY")
    last_epoch = max((m.epoch for m in record.results.history), default=0)
    client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=last_epoch)])
    return {"model_id": model.model_id, "model_uri": f"models:/{model.model_id}", **flavour}


def _model_name(record: ProvenanceRecord) -> str:
    """The logged model's name: the model's, in the characters MLflow accepts in a name."""
    name = "".join(c if c.isalnum() or c in "-_." else "-" for c in record.model_name).strip("-.")
    return name[:200] or "model"


def _save_model(
    source: Source, record: ProvenanceRecord, local: Path, *, model_id: str, run_id: str, allow: Iterable[str]
) -> dict[str, Any]:
    """Write the MLflow model directory ``local``: the pytorch flavour when it can be made (else
    an MLmodel naming none), and the model dataset as ``reprodl-model/``."""
    from mlflow.models import Model

    meta = Model(run_id=run_id, model_id=model_id, model_uuid=model_id)
    why_not = None
    try:
        _save_pytorch(source, local, meta, allow=allow)
    except (ReprodlError, RuntimeError, ValueError, TypeError) as exc:  # an architecture torch.export cannot trace
        why_not = f"not made: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:500]
        local.mkdir(parents=True, exist_ok=True)
        meta.metadata = {"reprodl": {"model_dataset": keys.MLFLOW_MODEL_DATASET}}
        meta.save(str(local / "MLmodel"))
    _copy_model_dataset(source, local / keys.MLFLOW_MODEL_DATASET)
    return {"pytorch_flavour": None if why_not else "pt2", "why_not": why_not}


def _save_pytorch(source: Source, local: Path, meta: Any, *, allow: Iterable[str]) -> None:
    """mlflow.pytorch.save_model in the pt2 format (torch.export), with a seeded sample input."""
    import mlflow.pytorch
    import torch

    from reprodl.model import TrainedTorchModel

    model = TrainedTorchModel(source.uri, allow=allow)
    sample = torch.randn(2, *model.input_shape, generator=torch.Generator().manual_seed(0)).numpy()
    mlflow.pytorch.save_model(
        model.model,
        str(local),
        mlflow_model=meta,
        serialization_format="pt2",
        input_example=sample,
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
        metadata={
            "reprodl": {"model_dataset": keys.MLFLOW_MODEL_DATASET, "categories": model.categories},
        },
    )


def _copy_model_dataset(source: Source, dest: Path) -> None:
    """The model dataset, copied whole (UUID and manifest kept), to ``dest``."""

    staging = dest.parent / ".reprodl-copy"
    staging.mkdir()
    copied = copy_dataset(source.uri, str(staging))

    path = local_path(copied)
    if path is None:  # pragma: no cover - a copy into a directory is a directory
        raise ExportError(f"copying {source.uri} for MLflow gave {copied}, not a directory")
    path.rename(dest)
    staging.rmdir()


def _params(record: ProvenanceRecord) -> dict[str, str]:
    """Hyperparameters, flat: the training params, the optimiser's first group, the model's init params;
    then every other field of the record (outside results and data) by its path, from the schema."""
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
            "batch_size": t.batch_size,
        }
    )
    if flat.get("n_epochs") != t.epochs:  # the training params' n_epochs already says it (once)
        flat["epochs"] = t.epochs
    if t.scheduler is not None:
        flat["scheduler"] = t.scheduler.class_name
    for path, value in field_values(record.model_dump(mode="json")):
        if not any(under(path, other) for other in _NOT_PARAMS):
            flat.setdefault(path, summarised(value, _MAX_PARAM_CHARS))
    return {k: v if isinstance(v, str) else json.dumps(v, default=str) for k, v in flat.items()}


def _metrics(record: ProvenanceRecord, start: int) -> list[tuple[str, float, int, int]]:
    """(name, value, timestamp ms, step) for each epoch's metrics, step = epoch; for a run of the run
    API, each number ``run.log`` recorded, step = its epoch or step."""
    if record.results.logged:
        return _logged_metrics(record.results.logged, start)
    rows: list[tuple[str, float, int, int]] = []
    elapsed = 0.0
    for m in record.results.history:
        elapsed += m.wall_time_s or 0.0  # not measured (a run API epoch): its metrics at the last time known
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
    """The datasets as MLflow run inputs, one per role: URI as source, reprodl's digests kept whole
    in the profile and tags. MLflow keeps one input per (name, digest), so each role's digest is
    of what it read (dataset, selection and role): a split of the training dataset stays apart."""
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
        read = "\n".join((ref.manifest_digest, ref.selection_digest or "", ref.role))
        digest = hashlib.sha256(read.encode()).hexdigest()[:36]  # MLflow keeps at most 36 characters
        dataset = Dataset(name=ref.name, digest=digest, source_type="dtool", source=source, profile=profile)
        tags = [
            InputTag("mlflow.data.context", ref.role),
            InputTag("reprodl.manifest_digest", ref.manifest_digest),
            InputTag("reprodl.uuid", ref.uuid),
        ]
        inputs.append(DatasetInput(dataset=dataset, tags=tags))
    return inputs


def write(source: Source, tracking_uri: str, options: ExportOptions) -> dict[str, Any]:
    """The ``mlflow`` format's writer (:mod:`reprodl.exports.formats`): a finished run in ``tracking_uri``."""
    return log_to_mlflow(source, tracking_uri, experiment=options.experiment, allow=options.allow)
