"""``reprodl reproduce`` of a start_run model imports no torch in its own process (issue 18).

The recorded script is re-executed in a child process, which imports torch as the training did; the
parent only compares records, step traces and weights (read with ``safetensors.numpy``), so the import
of torch (about a second) is not paid twice. The real CLI runs as a process under ``-X importtime``,
whose lines name every module the parent imported (the child is not started with the flag).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from test_reproduce_pipeline import SCRIPT
from user_scripts import child_env, run_script, user_repo

# The same script with a learning rate no two runs share: its re-run differs from the first step.
DIFFERING = SCRIPT.replace("import torch\n", "import uuid\n\nimport torch\n", 1).replace(
    "lr=0.1", "lr=0.1 + uuid.uuid4().int % 10**6 * 1e-9"
)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """models/tiny (trained by SCRIPT) and models/moving (by DIFFERING), in a user's git repository."""
    differing = DIFFERING.replace('"tiny"', '"moving"')
    repo = user_repo(
        tmp_path_factory.mktemp("user"), {"train.py": SCRIPT, "moving.py": differing}, commit_message="scripts"
    )
    (repo / "models").mkdir()
    for script in ("train.py", "moving.py"):
        res = run_script(repo, script)
        assert res.returncode == 0, res.stderr
    return repo / "models"


def _reproduce(uri: Path) -> tuple[dict[str, Any], set[str], int]:
    """``reprodl reproduce URI --trust-code --json`` as a process: its report, the modules it imported, its exit."""
    command = [sys.executable, "-X", "importtime", "-m", "reprodl.cli", "reproduce", str(uri), "--trust-code", "--json"]
    proc = subprocess.run(command, env=child_env(), capture_output=True, text=True, timeout=600)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("import time:")]
    imported = {line.rsplit("|", 1)[-1].strip() for line in lines}
    assert "reprodl.reproduction.pipeline" in imported, proc.stderr[-2000:]  # -X importtime reported
    assert proc.stdout.strip(), proc.stderr[-2000:]
    return json.loads(proc.stdout), imported, proc.returncode


def _torch_modules(imported: set[str]) -> list[str]:
    return sorted(m for m in imported if m == "torch" or m.startswith("torch."))


def test_an_identical_re_execution_imports_no_torch_in_the_parent(models: Path):
    report, imported, code = _reproduce(models / "tiny")
    assert report["verdict"] == "identical", report["reasons"]
    assert code == 0 and report["code"]["status"] == "re-executed"
    assert report["weights"]["identical"] is True and report["weights"]["n_tensors"] == 2
    assert _torch_modules(imported) == []
    assert "safetensors.numpy" in imported  # the weights were read as arrays


def test_a_differing_re_execution_is_judged_and_explained_without_torch(models: Path):
    report, imported, code = _reproduce(models / "moving")
    assert report["verdict"] == "differs", report["reasons"]
    assert code != 0
    tensors = {t["name"]: t for t in report["weights"]["tensors"]}
    assert tensors["weight"]["identical"] is False and tensors["weight"]["max_abs_diff"] > 0
    assert report["divergence"]["step"] == 1
    assert _torch_modules(imported) == []
