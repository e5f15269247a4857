"""The verdict rules (docs/formats.md, "The verdict"), for the built-in trainer and for a start_run script.

Each case changes the re-run through a hook the record cannot see (a monkeypatch in process,
an environment variable read by the script itself) and checks the verdict, its exit code, the
first divergent step and the cause line:

* a clean re-run is ``identical``;
* a 1e-6 nudge to one weight element after step K (after the trace row of step K was taken) is
  ``differs`` at step K+1: "no recorded input changed: the computation differed";
* one changed training item is ``differs`` at the first step whose batch holds it, cause data;
* an interrupted original re-run to the end is ``differs``, naming the step counts;
* a divergence after the saved weights were taken is still ``differs``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
from user_scripts import run_script, user_repo

import reprodl.training.trace as trace_module
from reprodl import reproduce
from reprodl.data.datasets import TensorDataSet
from reprodl.errors import ReproductionError
from reprodl.reproduction import divergence
from reprodl.reproduction.divergence import COMPUTATION_DIFFERED

pytest_plugins = ["train_fixtures"]

NUDGE_AFTER = 7


def _kinds(report: Any) -> set[str]:
    return {r.kind for r in report.why}


def _nudge_after_row(monkeypatch: pytest.MonkeyPatch, k: int) -> None:
    """Add 1e-6 to one element of the first parameter right after the trace row of step ``k`` is taken."""
    step = trace_module.StepTracer.step

    def nudged(self: Any, **kw: Any) -> None:
        step(self, **kw)
        if self.n_steps == k:
            with torch.no_grad():
                self._params[0].view(-1)[0] += 1e-6

    monkeypatch.setattr(trace_module.StepTracer, "step", nudged)


# --- the built-in trainer (reproduced in process) -----------------------------------------------
def test_builtin_clean_rerun_is_identical_and_exits_0(cli, trained_model):
    result = cli("reproduce", trained_model.uri, "-q")
    assert result.exit_code == 0, result.output
    assert "Verdict: identical" in result.output


def test_builtin_nudge_after_step_k_differs_at_k_plus_1_as_the_computation(cli, trained_model, monkeypatch):
    _nudge_after_row(monkeypatch, NUDGE_AFTER)
    report = reproduce(trained_model.uri)
    assert report.verdict == "differs" and report.exit_code == 1
    div = report.divergence
    assert div is not None and div.step == NUDGE_AFTER + 1
    assert "conv1.weight" in [t["name"] for t in div.tensors]  # and every tensor the next step moved
    assert len(div.causes) == 1 and div.causes[0].startswith(f"{COMPUTATION_DIFFERED} at step {NUDGE_AFTER + 1}")
    assert {"trace", "weights", "bitwise expected"} <= _kinds(report)
    assert div.tensors_differ == len(div.tensors) >= 3
    monkeypatch.setattr(divergence, "MAX_TENSORS_SHOWN", 2)  # fewer shown than moved: the rest are counted
    result = cli("reproduce", trained_model.uri)
    assert result.exit_code == 1 and "Verdict: differs" in result.output
    assert f"(+{div.tensors_differ - 2} more of the {div.tensors_differ} that moved)" in result.output


def test_builtin_nudge_with_a_tolerance_given_is_within_tolerance(trained_model, monkeypatch):
    _nudge_after_row(monkeypatch, NUDGE_AFTER)
    report = reproduce(trained_model.uri, tolerance="atol=1e-3")
    assert report.verdict == "within tolerance"
    assert report.divergence is not None and report.divergence.step == NUDGE_AFTER + 1


def test_builtin_one_changed_item_differs_at_the_first_batch_that_holds_it(trained_model, monkeypatch):
    getitems = TensorDataSet.__getitems__
    train_batches: list[list[int]] = []

    def changed(self: TensorDataSet, indices: Any) -> Any:
        batch = getitems(self, indices)
        if self.usetype == "train":
            train_batches.append(list(indices))
            if 0 in train_batches[-1]:
                batch.inputs[train_batches[-1].index(0)].view(-1)[0] += 1.0
        return batch

    monkeypatch.setattr(TensorDataSet, "__getitems__", changed)
    report = reproduce(trained_model.uri)
    first = next(i for i, b in enumerate(train_batches) if 0 in b) + 1
    div = report.divergence
    assert report.verdict == "differs"
    assert div is not None and div.step == first and div.contents_differ is True and div.indices_differ is False
    assert div.causes[0].startswith("data: the batch at step")
    train = next(r.name for r in trained_model.record.data if r.role == "train")
    assert f"the train dataset ({train}) matches its manifest" in div.causes[0]


def test_builtin_interrupted_original_rerun_to_the_end_differs(digits_split_master, tmp_path, monkeypatch):
    from train_fixtures import train_digits

    step = trace_module.StepTracer.step

    def interrupted(self: Any, **kw: Any) -> None:
        step(self, **kw)
        self.stop_requested = self.stop_requested or self.n_steps == 5

    with monkeypatch.context() as m:
        m.setattr(trace_module.StepTracer, "step", interrupted)
        uri, record = train_digits(tmp_path, "interrupted", digits_split_master, n_epochs=2)
    assert record.training.optimizer_steps == 5
    report = reproduce(uri)
    assert report.verdict == "differs" and "steps" in _kinds(report)
    assert any(r.startswith("optimiser steps differ: 5 recorded,") for r in report.reasons)


# --- the verdict function itself ----------------------------------------------------------------
def test_a_divergence_is_not_hidden_by_saved_weights_from_before_it(trained_model):
    from reprodl.reproduction.compare import Tolerance
    from reprodl.reproduction.divergence import Divergence
    from reprodl.reproduction.environment import Expectation
    from reprodl.reproduction.verdict import Comparison, judge

    record = trained_model.record.model_copy(deep=True)
    record.results.saved_at_step = 12
    weights = {"identical": True, "within_tolerance": True, "n_tensors": 6, "n_identical": 6, "max_abs_diff": 0.0}
    divergence = Divergence(compared_steps=20, matched_to_end=False, step=13, epoch=1, batch=13)
    comparison = Comparison(weights, [], {}, True, divergence)
    args: dict[str, Any] = dict(code=None, environment=[], tol=Tolerance())
    judged = judge(record, record, comparison, expectation=Expectation("bitwise", []), **args)
    assert judged.verdict == "differs"
    assert (
        "the step trace differs from step 13 (epoch 1, batch 13), although the saved weights (taken at step 12)"
        in (judged.reasons[0])
    )
    statistical = judge(record, record, comparison, expectation=Expectation("not_guaranteed", []), **args)
    assert statistical.verdict == "within tolerance"  # a statistical expectation: judged on the weights and metrics
    clean = judge(record, record, Comparison(weights, [], {}, True, None), expectation=None, **args)
    assert clean.verdict == "identical"


def test_a_not_guaranteed_expectation_is_held_by_an_identical_result():
    from reprodl.reproduction.environment import Expectation

    assert Expectation("not_guaranteed", []).settle("identical").held is True
    assert Expectation("not_guaranteed", []).settle("differs").held is False
    assert Expectation("bitwise", []).settle("within tolerance").held is False


# --- a start_run script (reproduced by re-executing it) -----------------------------------------
SCRIPT = """\
import argparse
import os

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

import reprodl

parser = argparse.ArgumentParser()
parser.add_argument("--name", default="tiny")
parser.add_argument("--save-at", type=int, default=0)
args = parser.parse_args()

torch.manual_seed(0)
x = torch.randn(96, 8)
y = (x.sum(1) > 0).long()
changed = int(os.environ.get("TEST_CHANGE_ITEM", "-1"))  # test hooks the record cannot see
nudge = int(os.environ.get("TEST_NUDGE_AFTER", "0"))
stop = int(os.environ.get("TEST_STOP_AFTER", "0"))
if changed >= 0:
    x[changed, 0] += 1.0
model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
held_out = torch.zeros(4, 8)
if os.environ.get("TEST_CHANGE_HELD_OUT"):
    held_out[0, 0] = 1.0  # data the record names that no step reads
with reprodl.start_run("models", args.name, seed=0) as run:
    data = run.use(TensorDataset(x, y, torch.arange(96)))
    run.use(held_out, role="test")
    run.watch(model, optimizer, loss=F.cross_entropy)
    loader = run.loader(data, batch_size=16, shuffle=True)
    step = 0
    for epoch in run.epochs(3):
        for xb, yb, ib in loader:
            optimizer.zero_grad()
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            optimizer.step()
            step += 1
            if changed in ib.tolist():
                print(f"item {changed} at step {step}", flush=True)
            if step == nudge:
                with torch.no_grad():
                    model[0].weight[0, 0] += 1e-6
            if step == args.save_at:
                run.save(model)
            if step == stop:
                break
        run.log(epoch=epoch, train_loss=float(loss) + float(os.environ.get("TEST_SHIFT_METRIC", "0")))
        if step == stop:
            break
    if not args.save_at:
        run.save(model)
"""


@pytest.fixture(scope="module")
def script_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The script trained three ways: plainly, saving its weights at step 3, and interrupted after step 5."""
    repo = user_repo(tmp_path_factory.mktemp("verdict-repo"), {"train.py": SCRIPT}, commit_message="tiny")
    (repo / "models").mkdir()
    uris = {}
    for name, args, env in (
        ("plain", [], {}),
        ("saved-early", ["--save-at", "3"], {}),
        ("interrupted", [], {"TEST_STOP_AFTER": "5"}),
    ):
        os.environ.update(env)
        try:
            res = run_script(repo, "train.py", "--name", name, *args)
        finally:
            for key in env:
                os.environ.pop(key)
        assert res.returncode == 0, res.stderr
        uris[name] = str(repo / "models" / name)
    return uris


def _reproduce(uri: str) -> tuple[Any, list[str]]:
    lines: list[str] = []
    return reproduce(uri, trust_code=True, on_output=lines.append), lines


def test_script_clean_rerun_is_identical(script_runs):
    report, _ = _reproduce(script_runs["plain"])
    assert report.verdict == "identical", report.reasons
    t = report.timings  # like for like: each record's training time; the re-run's whole process apart
    assert t["training_s"] < t["process_s"] and t["original_training_s"] is not None
    assert report.divergence is not None and report.divergence.matched_to_end


def test_script_nudge_after_step_k_differs_at_k_plus_1_as_the_computation(script_runs, monkeypatch, cli):
    monkeypatch.setenv("TEST_NUDGE_AFTER", str(NUDGE_AFTER))
    report, _ = _reproduce(script_runs["plain"])
    assert report.verdict == "differs", report.reasons
    div = report.divergence
    assert div is not None and div.step == NUDGE_AFTER + 1
    assert "0.weight" in [t["name"] for t in div.tensors]
    assert len(div.causes) == 1 and div.causes[0].startswith(f"{COMPUTATION_DIFFERED} at step {NUDGE_AFTER + 1}")
    result = cli("reproduce", script_runs["plain"], "--trust-code", "-q")
    assert result.exit_code == 1 and "Verdict: differs" in result.output


def test_script_one_changed_in_memory_item_differs_at_its_first_batch_with_the_data_cause(script_runs, monkeypatch):
    monkeypatch.setenv("TEST_CHANGE_ITEM", "5")
    report, lines = _reproduce(script_runs["plain"])
    first = int(next(line for line in lines if line.startswith("item 5 at step")).split()[-1])
    div = report.divergence
    assert report.verdict == "differs"
    assert div is not None and div.step == first and div.contents_differ is True
    assert div.causes[0].startswith("data: the in-memory train TensorDataset's digest changed (")
    assert f"the batch at step {first}" in div.causes[0]
    # the reasons agree with the cause: the data changed, so "the computation differed" is not among them
    assert "nondeterminism" not in _kinds(report), report.reasons
    assert any(r.startswith("data: the in-memory train TensorDataset's digest changed (") for r in report.reasons)


def test_script_changed_data_that_no_step_read_is_named_beside_an_identical_verdict(script_runs, monkeypatch):
    """The model came back bit for bit, but from data whose digest differs: the verdict stays what the
    weights and trace say, and a reason names the change with its evidence."""
    monkeypatch.setenv("TEST_CHANGE_HELD_OUT", "1")
    report, _ = _reproduce(script_runs["plain"])
    assert report.verdict == "identical", report.reasons
    changed = [r for r in report.reasons if r.startswith("data: the in-memory test tensor's digest changed (")]
    assert changed and "came back bit for bit" in changed[0], report.reasons


def test_script_logged_metric_that_did_not_come_back_differs_though_the_weights_did(script_runs, monkeypatch, cli):
    """The weights and every traced step came back bit for bit, but a logged metric did not: what the record
    claims did not come back, so the verdict is not ``identical``."""
    monkeypatch.setenv("TEST_SHIFT_METRIC", "0.5")
    report, _ = _reproduce(script_runs["plain"])
    assert report.weights["identical"] is True
    assert report.verdict == "differs", report.reasons
    (metrics,) = [r for r in report.why if r.kind == "metrics"]
    assert "came back bit for bit" in metrics.text and "train_loss at epoch 1" in metrics.text
    assert report.expectation is not None and report.expectation.held is True  # the bits the record expected came
    result = cli("reproduce", script_runs["plain"], "--trust-code", "-q")
    assert result.exit_code == 1 and "Verdict: differs" in result.output
    # with a tolerance given, the metrics are judged within it: 0.5 is within 1.0, not within 0.1
    within = reproduce(script_runs["plain"], trust_code=True, tolerance="metric=1.0")
    assert within.verdict == "within tolerance", within.reasons
    assert reproduce(script_runs["plain"], trust_code=True, tolerance="metric=0.1").verdict == "differs"


def test_script_interrupted_original_rerun_to_the_end_differs_naming_the_step_counts(script_runs):
    report, _ = _reproduce(script_runs["interrupted"])
    assert report.verdict == "differs"
    assert "steps" in _kinds(report)
    expected = "optimiser steps differ: 5 recorded, 18 in the re-run (the re-run went further"
    assert any(r.startswith(expected) for r in report.reasons)


def test_script_divergence_after_the_saved_weights_were_taken_still_differs(script_runs, monkeypatch):
    monkeypatch.setenv("TEST_NUDGE_AFTER", str(NUDGE_AFTER))  # after step 3, where the weights were saved
    report, _ = _reproduce(script_runs["saved-early"])
    assert report.weights["identical"] is True
    assert report.verdict == "differs"
    assert any("although the saved weights (taken at step 3) are bit-equal" in r for r in report.reasons)


def test_the_trace_kind_is_recorded(script_runs):
    from reprodl.modeldataset.read import load_record

    trace = load_record(script_runs["plain"]).results.trace
    assert trace is not None and trace.kind == "words" and trace.optimizers == ["SGD"]
    assert trace.tensors == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert Path(script_runs["plain"]).is_dir()


# --- a loop with no loader that stops at a loss threshold (pytorch/examples' regression shape) ---------
LOOP_UNTIL = """\
import os
from itertools import count

import torch
import torch.nn.functional as F

import reprodl

run = reprodl.start_run("models", "until", seed=1)
target = torch.randn(4, 1) * 2
run.use(target)
fc = torch.nn.Linear(4, 1)
run.watch(fc, batch_size=16)
for step in count(1):
    x = torch.randn(16, 4)  # drawn in the loop: no loader, the batch contents are not traced
    if os.environ.get("TEST_CHANGE_BATCH") == str(step):
        x[0, 0] += 1.0
    fc.zero_grad()
    loss = F.mse_loss(fc(x), x @ target)
    loss.backward()
    for p in fc.parameters():
        p.data.add_(-0.05 * p.grad)
    if loss.item() < 1e-2 or step == 400:
        break
run.save(fc)
run.finish()
"""


def test_a_loop_without_a_loader_finds_its_changed_batch_and_says_why_the_step_counts_differ(tmp_path, monkeypatch):
    """The batches drawn in the loop are traced from the model's forward pass: a changed one is the cause, at
    its step; "was the original interrupted?" is not claimed (the re-run ran longer because it diverged)."""
    repo = user_repo(tmp_path / "until", {"train.py": LOOP_UNTIL}, commit_message="until")
    (repo / "models").mkdir()
    res = run_script(repo, "train.py")
    assert res.returncode == 0, res.stderr
    monkeypatch.setenv("TEST_CHANGE_BATCH", "5")
    report, _ = _reproduce(str(repo / "models" / "until"))
    assert report.verdict == "differs", report.reasons
    div = report.divergence
    assert div is not None and div.step == 5 and div.contents_differ is True
    assert div.causes[0].startswith("data: the batch at step 5 holds a changed item (sample indices not traced,")
    assert COMPUTATION_DIFFERED not in " ".join(div.causes), div.causes
    steps = [r.text for r in report.why if r.kind == "steps"]
    if steps:  # the threshold was crossed at another step
        assert "after the step trace diverged at step 5" in steps[0] and "interrupted" not in steps[0], steps


def test_a_run_name_the_rerun_did_not_write_names_what_it_wrote(tmp_path):
    """A name taken from an environment variable is not recorded: the re-run writes another, and the error
    says which, and why."""
    script = LOOP_UNTIL.replace('"until", seed=1', 'os.environ.get("RUN_NAME", "until"), seed=1')
    repo = user_repo(tmp_path / "named", {"train.py": script}, commit_message="named")
    (repo / "models").mkdir()
    os.environ["RUN_NAME"] = "from-env"
    try:
        res = run_script(repo, "train.py")
    finally:
        os.environ.pop("RUN_NAME")
    assert res.returncode == 0, res.stderr
    with pytest.raises(ReproductionError, match="wrote no run named 'from-env' \\(it wrote: 'until'\\)"):
        _reproduce(str(repo / "models" / "from-env"))
