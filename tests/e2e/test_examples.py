"""Every file in examples/ runs, as its own header says, from the root of a clone.

Each example is run in a fresh directory laid out as its instructions assume: ``examples/``
copied there, ``data/digits`` (the digits, split 80/20) and an empty ``models/``. A file added
to examples/ without a way to run it here fails ``test_every_example_has_a_run``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from train_fixtures import digits_split_master, digits_split_uri  # noqa: F401 - fixtures

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"

CLI = "from reprodl.cli import main; main()"  # the `reprodl` command, as this interpreter runs it

# How each example is run (argv after the interpreter), and what its output must show.
RUNS: dict[str, tuple[list[str], str]] = {
    # the header: python examples/train_paper_workflow.py data/digits models
    "train_paper_workflow.py": (["examples/train_paper_workflow.py", "data/digits", "models"], "Classified image as"),
    # the README's tour: reprodl train examples/digits.yaml --set epochs=5 (one epoch here)
    "digits.yaml": (["-c", CLI, "train", "examples/digits.yaml", "--set", "epochs=1"], "digits-cnn"),
}


def example_files() -> list[str]:
    return sorted(p.name for p in EXAMPLES.iterdir() if p.is_file() and not p.name.startswith("."))


def test_every_example_has_a_run():
    assert example_files() == sorted(RUNS), "give each file in examples/ its run in RUNS"


@pytest.mark.parametrize("name", sorted(RUNS))
def test_example_runs(name: str, digits_split_uri: str, tmp_path: Path):  # noqa: F811 - the fixture
    root = Path(digits_split_uri).parents[1]  # tmp_path: data/digits is where the examples look
    assert root == tmp_path
    shutil.copytree(EXAMPLES, root / "examples")
    (root / "models").mkdir()
    argv, expected = RUNS[name]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "src"), env.get("PYTHONPATH")) if p)
    env["DTOOL_CACHE_DIRECTORY"] = str(root / ".dtool-cache")
    proc = subprocess.run(
        [sys.executable, *argv],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout}\n{proc.stderr}"
    assert expected in proc.stdout + proc.stderr
    models = [p for p in (root / "models").iterdir() if (p / ".dtool").is_dir()]
    assert len(models) == 1, f"{name} wrote no model dataset under models/: {list((root / 'models').iterdir())}"
