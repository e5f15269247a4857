"""reprodl.exports.mlflow_run: a model as an MLflow run, read back with MLflow's client."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from train_fixtures import TrainedModel

from reprodl.exports import export

pytest_plugins = ["train_fixtures"]


def test_mlflow_run_reads_back_with_mlflows_client(
    trained_model: TrainedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    result = export(trained_model.uri, "mlflow", tmp_path / "mlruns")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps its file store in maintenance mode
    client = MlflowClient(tracking_uri=result.output)
    run = client.get_run(result.details["run_id"])
    record = trained_model.record
    assert run.info.status == "FINISHED"
    assert run.data.tags["reprodl.model_uri"] == trained_model.uri
    assert run.data.params["optimizer.lr"] == "0.05" and run.data.params["batch_size"] == "32"
    history = client.get_metric_history(run.info.run_id, "valid_accuracy")
    assert [(m.step, m.value) for m in history] == [(m.epoch, m.valid_accuracy) for m in record.results.history]
    contexts = {}
    for item in run.inputs.dataset_inputs:
        tags = {t.key: t.value for t in item.tags}
        contexts[tags["mlflow.data.context"]] = tags["reprodl.manifest_digest"]
        assert json.loads(item.dataset.source)["uuid"] == record.data[0].uuid
    assert set(contexts.values()) == {record.data[0].manifest_digest}


def test_mlflow_logs_what_run_log_recorded_for_a_run_api_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch
    from mlflow.tracking import MlflowClient
    from torch import nn

    import reprodl

    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(16, 4, generator=g), torch.randint(0, 2, (16,), generator=g))
    with reprodl.start_run(str(tmp_path), "own-loop") as run:
        model = nn.Linear(4, 2)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        run.watch(model, optimizer)
        for step, (x, y) in enumerate(run.loader(data, batch_size=8), start=1):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            run.log(step=step, batch_loss=loss.item())
        run.save(model)
    assert run.uri is not None
    result = export(run.uri, "mlflow", tmp_path / "mlruns")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    history = MlflowClient(result.output).get_metric_history(result.details["run_id"], "batch_loss")
    assert [m.step for m in history] == [1, 2]
