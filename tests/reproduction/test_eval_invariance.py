"""Evaluation invariance: `evaluate` reports how the metric moves with the evaluation batch size,
and `compare` does not call a difference within that band (issue 21, item 7)."""

from __future__ import annotations

import json

import pytest
import torch

pytest.register_assert_rewrite("train_fixtures")

from reprodl.reproduction import claims

pytest_plugins = ["train_fixtures"]


class _BatchDependent(torch.nn.Module):
    """A model whose outputs depend on the batch they come in: alone, every sample says class 0."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        if x.shape[0] == 1:
            out = out.clone()
            out[:, 0] += 1e6
        return out


def test_evaluate_reports_the_band_of_the_accuracy_over_batch_sizes(trained_model, cli):
    from reprodl import TensorDataSet, TrainedTorchModel

    model = TrainedTorchModel(trained_model.uri)
    data = TensorDataSet(trained_model.data_uri, usetype="test")
    steady = model.evaluate(data)["batch_size_invariance"]
    assert steady["batch_sizes"] == [256, 7, 1]
    assert set(steady["accuracy"]) == {"256", "7", "1"}
    # The CNN on CPU gives the same predictions at every batch size here: band 0, said so.
    assert steady["band"] == pytest.approx(max(steady["accuracy"].values()) - min(steady["accuracy"].values()))
    assert steady["invariant"] is (steady["band"] == 0.0)
    model.model = _BatchDependent(model.model)
    moved = model.evaluate(data)["batch_size_invariance"]
    assert moved["invariant"] is False and moved["predictions_changed"] > 0
    assert moved["accuracy"]["1"] == pytest.approx(36 / 359, abs=0.01)  # all class 0: about one in ten right
    assert moved["band"] == pytest.approx(moved["accuracy"]["256"] - moved["accuracy"]["1"])
    # Through the CLI: the JSON carries it, the text states it.
    result = cli("evaluate", trained_model.uri, trained_model.data_uri, "--usetype", "test", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["batch_size_invariance"]["batch_sizes"] == [256, 7, 1]
    text = cli("evaluate", trained_model.uri, trained_model.data_uri, "--usetype", "test")
    assert "batch size: accuracy 256: " in text.stdout and "band " in text.stdout


def test_a_difference_within_the_band_is_a_tie():
    a, b = [0.91, 0.92, 0.90, 0.93], [0.90, 0.91, 0.89, 0.92]  # A ahead by 0.01 in every pair
    assert claims.probability_a_better(a, b) == 1.0
    assert claims.probability_a_better(a, b, band=0.02) == 0.5
    assert claims.probability_a_better(a, b, band=0.005) == 1.0
    runs = {
        side: [claims.RunValue(seed=i, value=v, uri=f"file:///{side}{i}", record_digest="") for i, v in enumerate(vals)]
        for side, vals in (("a", a), ("b", b))
    }
    assert claims.judge(runs, metric="valid_accuracy", vary=[], recipes={}).verdict == claims.A_BETTER
    within = claims.judge(runs, metric="valid_accuracy", vary=[], recipes={}, evaluation_band={"band": 0.02})
    assert within.verdict == claims.NO_DIFFERENCE
    assert within.to_dict()["evaluation_band"] == {"band": 0.02}
