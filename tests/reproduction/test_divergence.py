"""Where and why a reproduction differs: the step trace and the first divergent step.

The "must hold" cases: a perturbation injected after optimiser step K (invisible to the
record) is reported as diverging first at step K, cause "no recorded input changed: the
computation differed"; a data order changed from epoch 2 on is reported at the first step of
epoch 2, cause data order; a clean CPU reproduction is `identical` and matched to the end.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from reprodl import keys
from reprodl.modeldataset.read import load_trace, read_record
from reprodl.reproduction.divergence import COMPUTATION_DIFFERED
from reprodl.reproduction.rerun import reproduce
from reprodl.store import open_dataset
from reprodl.training import _epochs as loop_module
from reprodl.training.seeding import SeedPlan

pytest.register_assert_rewrite("train_fixtures")

pytest_plugins = ["train_fixtures"]


def _steps_per_epoch(record) -> int:
    return record.training.optimizer_steps // record.training.epochs


def test_record_covers_a_step_trace_of_every_optimiser_step(trained_model):
    record = trained_model.record
    info = record.results.trace
    assert info is not None and info.item == keys.TRACE_FILE and info.sha256.startswith("sha256:")
    assert info.n_steps == info.n_rows == record.training.optimizer_steps
    assert info.tensors == [n for n, _ in _gennet().named_parameters()]
    assert info.kind == "words" and info.optimizers == ["SGD"]
    assert info.bytes_per_step == 56 + 8 * len(info.tensors)
    ds = open_dataset(trained_model.uri)
    rows = load_trace(ds, read_record(ds))
    assert rows is not None and rows.dtype.hasobject is False
    assert list(rows["step"]) == list(range(1, info.n_steps + 1))
    per_epoch = _steps_per_epoch(record)
    assert list(rows["epoch"][per_epoch - 1 : per_epoch + 1]) == [1, 2]
    assert rows["batch"][per_epoch] == 1
    assert np.isfinite(rows["loss"]).all() and (rows["indices"] != 0).all()


def _nudge_after(monkeypatch: pytest.MonkeyPatch, k: int) -> None:
    """The re-run's built-in trainer adds 1e-6 to the first parameter after its optimiser step ``k``."""
    update = loop_module.Loop._update

    def perturbed(self):
        update(self)
        if self.optimizer_steps == k:
            with torch.no_grad():
                next(self.model.parameters()).add_(1e-6)

    monkeypatch.setattr(loop_module.Loop, "_update", perturbed)


def _gennet() -> torch.nn.Module:
    from train_fixtures import small_params

    from reprodl import GenNet

    return GenNet(**small_params().init_params)


def test_clean_reproduction_is_identical_and_matched_to_the_end(trained_model, tmp_path):
    report = reproduce(trained_model.uri)
    assert report.verdict == "identical"
    div = report.divergence
    assert div is not None and div.matched_to_end and div.step is None
    assert div.compared_steps == trained_model.record.training.optimizer_steps
    assert "matched the recorded step trace to the end" in div.summary()
    assert json.loads(report.to_json())["divergence"]["matched_to_end"] is True


def test_perturbation_after_step_k_is_reported_at_step_k_as_the_computation(trained_model, monkeypatch):
    k = _steps_per_epoch(trained_model.record) + 5
    _nudge_after(monkeypatch, k)
    report = reproduce(trained_model.uri)
    div = report.divergence
    assert report.verdict != "identical"
    assert div.step == k and div.epoch == 2 and div.batch == 5
    assert [t["name"] for t in div.tensors] == ["conv1.weight"]  # exact digests: only the nudged tensor
    assert div.tensors[0]["recorded"] != div.tensors[0]["reproduced"] and div.tensors[0]["abs_diff"] is None
    assert div.indices_differ is False and div.contents_differ is False
    assert div.causes == [
        f"{COMPUTATION_DIFFERED} at step {k} (epoch 2, batch 5) (same sample indices, same batch contents, "
        "same data, seeds, random draws, initial weights, code and environment)"
    ]
    assert div.growth[0]["step"] == k and div.growth[-1]["step"] == trained_model.record.training.optimizer_steps


def test_data_order_changed_from_epoch_2_is_reported_at_its_first_step(trained_model, monkeypatch):
    seed = SeedPlan.epoch_order_seed
    monkeypatch.setattr(SeedPlan, "epoch_order_seed", lambda self, epoch: seed(self, epoch) + 7 * (epoch >= 1))
    report = reproduce(trained_model.uri, stop_at_divergence=True)
    div = report.divergence
    first = _steps_per_epoch(trained_model.record) + 1
    assert (div.step, div.epoch, div.batch) == (first, 2, 1)
    assert div.indices_differ is True and div.stopped and div.compared_steps == first
    assert div.causes[0].startswith(f"data order changed from step {first} (epoch 2, batch 1): the digest")
    assert report.verdict == "differs"
    assert f"the re-run was stopped at step {first}, its first divergent step" in report.reasons


def test_cli_prints_the_divergence_section(cli, trained_model, monkeypatch):
    seed = SeedPlan.epoch_order_seed
    monkeypatch.setattr(SeedPlan, "epoch_order_seed", lambda self, epoch: seed(self, epoch) + 7 * (epoch >= 2))
    result = cli("reproduce", trained_model.uri, "--stop-at-divergence", "-q")
    first = 2 * _steps_per_epoch(trained_model.record) + 1
    assert f"first divergent optimiser step: {first} (epoch 3, batch 1)" in result.output
    assert "data order changed from step" in result.output
    assert result.exit_code == 1
    as_json = cli("reproduce", trained_model.uri, "--stop-at-divergence", "--json")
    assert json.loads(as_json.stdout)["divergence"]["step"] == first


def test_a_loss_neither_run_recorded_is_not_shown_as_nan_to_nan() -> None:
    """A script whose loss reprodl cannot see (a function loss) says nothing about it, not "nan -> nan"."""
    from reprodl.reproduction.divergence import _losses

    assert _losses(float("nan"), float("nan")) is None
    assert _losses(0.5, 0.25) == {"recorded": 0.5, "reproduced": 0.25}
    assert _losses(0.5, float("nan"))["recorded"] == 0.5  # one side known: both shown


def test_a_step_whose_inputs_or_indices_one_run_did_not_trace_is_compared_by_its_state() -> None:
    """0 in ``inputs``/``indices`` says "not traced" (a record made before Lightning's batches were traced):
    a re-run that traces them matches it; traced on both sides and different, the step differs."""
    import numpy as np

    from reprodl.reproduction.divergence import TraceComparer
    from reprodl.training.trace import row_dtype

    recorded = np.zeros(3, dtype=row_dtype(1))
    recorded["step"] = [1, 2, 3]
    recorded["digest"] = [[11], [12], [13]]
    rerun = recorded.copy()
    rerun["inputs"], rerun["indices"] = [5, 6, 7], [8, 9, 10]
    comparer = TraceComparer(recorded, ["w"])
    comparer.compare_all(rerun)
    assert comparer.first is None and comparer.compared == 3
    recorded["inputs"] = [5, 6, 99]  # traced on both sides: compared
    comparer = TraceComparer(recorded, ["w"])
    comparer.compare_all(rerun)
    assert comparer.first is not None and comparer.first["step"] == 3 and comparer.first["contents_differ"] is True


def test_a_changed_batch_is_put_on_the_training_data_never_on_a_validation_set() -> None:
    """Train and valid views of one base dataset (random_split) both show its digest changed: only the train
    role is the source of a training step's batch; the valid one is named on its own line."""
    from reprodl.reproduction.causes import Evidence, explain
    from reprodl.reproduction.divergence import Divergence, InputChange

    div = Divergence(compared_steps=3, matched_to_end=False, step=2, epoch=1, batch=2, contents_differ=True)
    first = {"contents": ("aa", "bb"), "indices": (0, 0)}
    valid = InputChange("data", "data: the in-memory valid TensorDataset's digest changed (1 -> 2)", "valid")
    train = InputChange("data", "data: the in-memory train TensorDataset's digest changed (1 -> 2)", "train")
    lines = explain(div, first, Evidence(inputs=[valid, train]))
    assert lines[0].startswith("data: the in-memory train TensorDataset's digest changed (1 -> 2); the batch at")
    assert lines[1] == valid.text
    only_valid = explain(div, first, Evidence(inputs=[valid]))
    assert only_valid[0].startswith("data: the batch at step 2 (epoch 1, batch 2) holds a changed item")
    assert "no recorded training data digest changed" in only_valid[0] and only_valid[1] == valid.text


def test_a_record_of_the_exact_kind_is_re_run_in_its_kind(digits_split_master, tmp_path, monkeypatch):
    """A format 1.2 record's trace holds torch.hash_tensor digests (kind ``exact``): its re-run traces that
    kind, so a clean re-run is identical and a 1e-6 nudge after step K is found at step K."""
    from train_fixtures import train_digits

    from reprodl.training import trace as trace_module

    monkeypatch.setattr(trace_module, "KIND", "exact")
    uri, record = train_digits(tmp_path, "exact-kind", digits_split_master, n_epochs=1)
    monkeypatch.setattr(trace_module, "KIND", "words")  # today's default, which the re-run must not use
    assert record.results.trace.kind == "exact"
    assert reproduce(uri).verdict == "identical"
    k = 3
    _nudge_after(monkeypatch, k)
    div = reproduce(uri).divergence
    assert div.step == k and [t["name"] for t in div.tensors] == ["conv1.weight"]


class _DropoutNet(torch.nn.Module):
    """A small digits classifier that draws from torch's global generator every forward pass (dropout)."""

    def __init__(self, input_channels: int = 1, input_dim: int = 8) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.Dropout(0.5), torch.nn.ReLU(), torch.nn.Linear(32, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.net(x), dim=1)


@pytest.mark.parametrize("where", ["in the step", "before the step"])
def test_an_extra_random_draw_is_named_as_random_draws_at_its_step(digits_split_master, tmp_path, monkeypatch, where):
    """One extra draw from torch's global generator in the re-run: the first step whose state differs is
    the one whose dropout masks it shifted, and the cause is the random draws, with the step where the
    generator's state first differed (not "no recorded input changed")."""
    from train_fixtures import train_digits

    uri, _ = train_digits(tmp_path, "dropout", digits_split_master, n_epochs=1, model=_DropoutNet())
    assert reproduce(uri, model_class=_DropoutNet).verdict == "identical"
    k = 3
    update = loop_module.Loop._update
    due = {"draw": False}

    def drawing(self):
        update(self)
        if self.optimizer_steps == k:
            if where == "before the step":
                torch.rand(1)  # after step k's update, before its trace row: the generator differs from row k on
            else:
                due["draw"] = True  # in step k + 1, before its forward pass

    monkeypatch.setattr(loop_module.Loop, "_update", drawing)
    original_forward = _DropoutNet.forward

    def forward(self, x):
        if due["draw"]:
            due["draw"] = False
            torch.rand(1)
        return original_forward(self, x)

    monkeypatch.setattr(_DropoutNet, "forward", forward)
    report = reproduce(uri, model_class=_DropoutNet)
    div = report.divergence
    assert report.verdict == "differs" and div.step == k + 1
    assert div.rng_differ is True and div.rng_before_differ is (where == "before the step")
    prefix = "random draws differed before step" if where == "before the step" else "random draws differed at step"
    assert div.causes[0].startswith(f"{prefix} {k + 1} (epoch 1, batch {k + 1})")
    assert not any(c.startswith(COMPUTATION_DIFFERED) for c in div.causes)
