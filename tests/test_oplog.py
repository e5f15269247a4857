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

import pytest
import torch
import yaml

from reprodl.modeldataset.read import read_record
from reprodl.reproduction.divergence import load_oplogs
from reprodl.reproduction.rerun import reproduce
from reprodl.store import open_dataset
from reprodl.training.oplog import from_jsonl

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
