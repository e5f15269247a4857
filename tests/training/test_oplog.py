"""The operation inside the step: the first step's operation log, and the first differing operation.

Every training logs the operations of its first optimiser step (name, module, forward/backward,
an exact digest of each output) as ``oplog/step-1.jsonl``; a reproduction logs the same step and,
when the step trace diverges there, names the first operation whose output differs. The CPU case:
a model trained under ``ATEN_CPU_CAPABILITY=avx2`` on a machine whose kernels are AVX-512, re-run
without it, parts at the first step in a vectorised kernel.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from reprodl.modeldataset.read import read_record
from reprodl.reproduction.divergence import load_oplogs
from reprodl.reproduction.rerun import reproduce
from reprodl.store import open_dataset
from reprodl.training.tracefiles import from_jsonl

pytest.register_assert_rewrite("train_fixtures")

from train_fixtures import digits_config, item_file, train_digits

pytest_plugins = ["train_fixtures"]

AVX512 = torch.backends.cpu.get_cpu_capability() == "AVX512"


def _train_subprocess(tmp: Path, data_uri: str, name: str, env: dict[str, str]) -> str:
    """``python -m reprodl.cli train`` of the digits CNN (1 epoch of 3 steps) with ``env`` set; its URI."""
    (tmp / "models").mkdir(exist_ok=True)
    config = digits_config(data_uri, tmp / "models", name=name, batch_size=400, n_epochs=1)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    full = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **env}
    proc = subprocess.run(
        [sys.executable, "-m", "reprodl.cli", "train", str(path), "--quiet"], env=full, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return str(tmp / "models" / name)


@pytest.fixture(scope="module")
def avx2_model(digits_split_master, tmp_path_factory) -> str:
    """The digits CNN trained under ATEN_CPU_CAPABILITY=avx2 (on an AVX-512 machine)."""
    if not AVX512:
        pytest.skip(f"needs a CPU whose ATen kernels are AVX-512 (this one: {torch.backends.cpu.get_cpu_capability()})")
    return _train_subprocess(
        tmp_path_factory.mktemp("avx2"), digits_split_master, "avx2", {"ATEN_CPU_CAPABILITY": "avx2"}
    )


def test_first_step_operation_log_is_recorded(digits_split_master, tmp_path):
    uri, record = train_digits(tmp_path, "logged", digits_split_master, n_epochs=1, batch_size=400, valid=False)
    (log,) = record.results.trace.oplog
    assert (log.step, log.item) == (1, "oplog/step-1.jsonl") and log.n_ops > 20
    entries = from_jsonl(item_file(uri, log.item).read_bytes())
    assert len(entries) == log.n_ops and log.bytes == item_file(uri, log.item).stat().st_size
    first = entries[0]
    assert (first["op"], first["module"], first["phase"]) == ("aten.convolution.default", "GenNet.conv1", "forward")
    assert first["where"].startswith("reprodl/zoo.py:") and len(first["out"][0]) == 16
    phases = [e["phase"] for e in entries]
    assert phases.index("forward") < phases.index("backward") and phases[-1] == "other"  # the optimiser's step last
    assert any(e["op"] == "aten.add_.Tensor" and e["phase"] == "other" for e in entries)  # SGD's update
    conv_back = [e for e in entries if e["op"] == "aten.convolution_backward.default"]
    assert [e["module"] for e in conv_back] == ["GenNet.conv2", "GenNet.conv1"]
    assert {e["where"] for e in conv_back} == {"ConvolutionBackward0"}
    assert load_oplogs(open_dataset(uri), read_record(open_dataset(uri)))[1] == entries


def test_operation_log_is_covered_by_the_record(digits_split_master, tmp_path):
    uri, _ = train_digits(tmp_path, "covered", digits_split_master, n_epochs=1, batch_size=400, valid=False)
    path = item_file(uri, "oplog/step-1.jsonl")
    path.write_bytes(path.read_bytes().replace(b'"forward"', b'"backward"', 1))
    with pytest.raises(Exception, match="operation log oplog/step-1.jsonl does not match the provenance record"):
        reproduce(uri, progress=False)


def test_clean_rerun_has_no_differing_operation(digits_split_master, tmp_path):
    uri, _ = train_digits(tmp_path, "clean", digits_split_master, n_epochs=1, batch_size=400, valid=False)
    report = reproduce(uri, progress=False)
    assert report.verdict == "identical", report.reasons
    div = report.divergence
    assert div.matched_to_end and div.first_differing_operation is None
    assert div.operation_note == "every logged operation gave the recorded output (steps 1)"


def test_avx2_trained_model_reproduced_without_it_names_the_first_differing_operation(avx2_model):
    report = reproduce(avx2_model, progress=False)
    div = report.divergence
    assert report.verdict != "identical" and div.step == 1
    op = div.first_differing_operation
    assert op is not None and op["step"] == 1 and op["kind"] == "output"
    assert op["op"].startswith("aten.") and op["module"].startswith("GenNet") and op["phase"] in ("forward", "backward")
    assert op["recorded"] != op["reproduced"]
    line = f"first differing operation: {op['op']} in {op['module']}, {op['phase']}"
    assert any(c.startswith(line) for c in div.causes), div.causes


def test_avx2_trained_model_reproduced_with_it_is_identical(avx2_model, tmp_path, monkeypatch):
    """The same model re-run under the same capability (in a subprocess: ATen reads it at start)."""
    code = (
        "import json, sys; from reprodl.reproduction.rerun import reproduce; "
        "r = reproduce(sys.argv[1], progress=False); "
        "print(json.dumps([r.verdict, r.divergence.first_differing_operation]))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "ATEN_CPU_CAPABILITY": "avx2"}
    proc = subprocess.run([sys.executable, "-c", code, avx2_model], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == ["identical", None]


def test_reproduce_json_carries_the_first_differing_operation(cli, avx2_model):
    result = cli("reproduce", avx2_model, "--stop-at-divergence", "--json")
    div = json.loads(result.stdout)["divergence"]
    assert div["step"] == 1 and div["stopped"]
    op = div["first_differing_operation"]
    assert set(op) >= {"step", "index", "op", "module", "phase", "where", "recorded", "reproduced", "kind"}
    text = cli("reproduce", avx2_model, "--stop-at-divergence", "-q").output
    assert f"first differing operation: {op['op']} in {op['module']}" in text


# --- which steps are logged, and the bounds on what is written and read ------------------------
def _train_checkpointed(base: Path, name: str, data_uri: str, *, n_epochs: int, every: int | None) -> Any:
    """The digits CNN, 4 steps an epoch (batch 400), a checkpoint every ``every`` epochs; its record."""
    from torch import nn
    from train_fixtures import small_params

    from reprodl import DerivedDataSet, GenNet, TensorDataSet, train_model_with_metadata_capture

    params = small_params(batch_size=400, n_epochs=n_epochs)
    train_ds = TensorDataSet(data_uri, usetype="train")
    torch.manual_seed(params.seed)
    net = GenNet(**params.init_params)
    opt = torch.optim.SGD(net.parameters(), lr=params.learning_rate, momentum=0.9)
    with DerivedDataSet(str(base), name, train_ds) as out:
        record = train_model_with_metadata_capture(
            net, train_ds, opt, nn.NLLLoss(), params, out, progress=False, checkpoint_every=every
        )
    return record


def test_the_step_before_each_checkpoint_is_logged_and_no_other(digits_split_master, tmp_path):
    record = _train_checkpointed(tmp_path, "ck", digits_split_master, n_epochs=3, every=1)
    assert record.training.optimizer_steps == 12
    # checkpoints after epochs 1 and 2 (steps 4 and 8; none after the last epoch), and the first step
    assert [log.step for log in record.results.trace.oplog] == [1, 4, 8]
    plain = _train_checkpointed(tmp_path, "plain", digits_split_master, n_epochs=3, every=None)
    assert [log.step for log in plain.results.trace.oplog] == [1]


def test_the_operation_logs_a_run_keeps_are_bounded(digits_split_master, tmp_path, monkeypatch):
    from reprodl import keys

    monkeypatch.setenv(keys.OPLOG_STEPS_ENV, "1,2,3,4,5,6")
    monkeypatch.setattr(keys, "MAX_OPLOG_STEPS", 3)
    monkeypatch.setattr(keys, "MAX_OPLOG_OPS", 10)
    record = _train_checkpointed(tmp_path, "bounded", digits_split_master, n_epochs=2, every=None)
    logs = record.results.trace.oplog
    assert [log.step for log in logs] == [1, 5, 6]  # the first step's and the latest
    assert {log.n_ops for log in logs} == {10}  # each step's first operations


def test_reproduce_reads_no_more_operation_log_than_reprodl_writes(digits_split_master, tmp_path, monkeypatch):
    """A record naming a log larger than the bound (here: the bound made smaller than a true log) is
    refused before the log is read whole; one naming more logs than the bound too."""
    from reprodl import keys
    from reprodl.errors import IntegrityError

    uri, record = train_digits(tmp_path, "big", digits_split_master, n_epochs=1, batch_size=400, valid=False)
    (log,) = record.results.trace.oplog
    monkeypatch.setattr(keys, "MAX_OPLOG_BYTES", log.bytes - 1)
    reads: list[int] = []
    real_open = open

    def counting_open(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        if str(path).endswith(".jsonl") or "step-1" in str(path):
            real_read = f.read
            f.read = lambda n=-1: reads.append(n) or real_read(n)
        return f

    monkeypatch.setattr("builtins.open", counting_open)
    with pytest.raises(IntegrityError, match=r"operation logs \(oplog/step-1.jsonl and those before it\) are larger"):
        reproduce(uri, progress=False)
    assert reads and all(0 <= n <= log.bytes for n in reads)  # never a read of the whole file
    monkeypatch.setattr("builtins.open", real_open)
    monkeypatch.setattr(keys, "MAX_OPLOG_BYTES", 8 * 1024 * 1024)
    monkeypatch.setattr(keys, "MAX_OPLOG_STEPS", 0)
    with pytest.raises(IntegrityError, match="names 1 operation logs, more than the 0 reprodl writes"):
        reproduce(uri, progress=False)


def test_a_hostile_operation_log_line_is_skipped():
    deep = b"[" * 100_000 + b"]" * 100_000
    assert from_jsonl(deep + b'\n{"op": "aten.add.Tensor"}\nnot json\n') == [{"op": "aten.add.Tensor"}]


def test_a_checkpoint_whose_operation_logs_are_damaged_is_not_used():
    from reprodl.training.checkpoint import meta_problem

    meta = {"epoch": 1, "step": 4, "trace": {"n_steps": 4, "oplogs": {"1": ['{"i":0}\n', 1, 0.01]}}}
    assert meta_problem(meta) is None
    meta["trace"]["oplogs"]["4"] = ["x", "many", 0.0]
    assert meta_problem(meta) == "trace.oplogs['4'] is not [operation log, operations, seconds]"
    meta["trace"]["oplogs"] = {str(s): ["", 0, 0.0] for s in range(1, 100)}
    assert meta_problem(meta).startswith("trace.oplogs is not a mapping of at most")
