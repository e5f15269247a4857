"""TensorBoard logging while training: scalars per epoch, read back with TensorBoard's own reader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn
from torch.nn import functional as F
from train_fixtures import digits_config

pytest_plugins = ["train_fixtures"]


def _scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_reprodl_train_tensorboard_writes_each_epochs_metrics(cli, digits_split_master: str, tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(digits_config(digits_split_master, "models", n_epochs=2)))
    result = cli("train", config, "--tensorboard", tmp_path / "runs", "--json")
    assert result.exit_code == 0, result.output
    history = json.loads(result.stdout)
    scalars = _scalars(tmp_path / "runs" / "digits-cnn")
    assert {"train_loss", "valid_loss", "valid_accuracy", "learning_rate"} <= set(scalars)
    assert [step for step, _ in scalars["valid_accuracy"]] == [1, 2]
    assert scalars["valid_accuracy"][-1][1] == pytest.approx(history["final"]["valid_accuracy"])
    refused = cli("train", config, "--tensorboard", tmp_path / "runs", "--seeds", "2")
    assert refused.exit_code == 2 and "--tensorboard" in refused.stderr


def test_start_run_tensorboard_writes_what_run_log_records(tmp_path: Path) -> None:
    import reprodl

    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(32, 8, generator=g), torch.randint(0, 2, (32,), generator=g))
    with reprodl.start_run(str(tmp_path), "tiny", tensorboard=tmp_path / "runs") as run:
        model = nn.Linear(8, 2)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        run.watch(model, optimizer)
        for epoch in (1, 2, 3):
            for x, y in run.loader(data, batch_size=8, shuffle=True):
                optimizer.zero_grad()
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                optimizer.step()
            run.log(epoch=epoch, train_loss=loss.item(), note="not a number")
        run.save(model)
    assert run.record is not None
    logged = [(e["epoch"], e["train_loss"]) for e in run.record.results.logged]
    scalars = _scalars(tmp_path / "runs")
    assert set(scalars) == {"train_loss"}
    assert [(s, round(v, 5)) for s, v in scalars["train_loss"]] == [(s, round(v, 5)) for s, v in logged]
