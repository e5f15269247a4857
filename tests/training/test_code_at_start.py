"""The code a record names is the code at ``start_run``: what the script writes into its repository once
training has begun (an untracked helper, an edit to a tracked file) is neither stored as code nor counted
in the patch, and ``require_clean_code=True`` refuses before the first training line runs (issue 18:
moving the git queries off the start of a run must keep both)."""

from __future__ import annotations

from pathlib import Path

from user_scripts import run_script, user_repo

from reprodl.modeldataset.read import load_record
from reprodl.provenance import ProvenanceRecord, summary_lines

SCRIPT = """\
import sys
from pathlib import Path

import torch

import reprodl

run = reprodl.start_run(sys.argv[1], "late", seed=0, require_clean_code=len(sys.argv) > 2)
Path("TRAINING_STARTED").write_text("")
Path("late_helper.py").write_text("X = 1\\n")  # untracked, written right after start_run
Path("tracked.py").write_text("Y = 2\\n")  # a tracked file edited right after start_run
model = torch.nn.Linear(2, 1)
run.watch(model, torch.optim.SGD(model.parameters(), lr=0.1))
run.use(torch.utils.data.TensorDataset(torch.randn(4, 2)), role="train")
run.save(model)
run.finish()
"""


def _repo(tmp_path: Path) -> Path:
    return user_repo(tmp_path / "repo", {"train.py": SCRIPT, "tracked.py": "Y = 1\n"}, commit_message="user's code")


def test_files_the_script_writes_after_start_run_are_not_the_recorded_code(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    res = run_script(repo, "train.py", str(tmp_path / "models"))
    assert res.returncode == 0, res.stderr
    code = load_record(str(tmp_path / "models" / "late")).code
    assert code.git is not None
    assert code.git.untracked == [] and code.git.untracked_items == []
    assert code.git.patch_sha256 is None and not code.git.dirty


def test_require_clean_code_refuses_before_training_starts(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    (repo / "tracked.py").write_text("Y = 3\n")  # dirty before the run
    res = run_script(repo, "train.py", str(tmp_path / "models"), "--require-clean")
    assert res.returncode != 0
    assert "DirtyCodeError" in res.stderr
    assert not (repo / "TRAINING_STARTED").exists()


def _code_line(record: ProvenanceRecord) -> str:
    return next(line for line in summary_lines(record) if line.startswith("Code: git"))


def test_the_summary_says_what_was_stored_and_names_no_patch_when_there_is_none(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    (repo / "helper.py").write_text("Z = 1\n")  # untracked code: stored, no tracked change
    res = run_script(repo, "train.py", str(tmp_path / "models"))
    assert res.returncode == 0, res.stderr
    git = load_record(str(tmp_path / "models" / "late")).code.git
    assert git is not None and git.dirty and git.patch_item is None
    line = _code_line(load_record(str(tmp_path / "models" / "late")))
    assert "patch" not in line, line
    assert "1 untracked file" in line and "code/untracked/" in line, line

    for written in ("TRAINING_STARTED", "late_helper.py"):  # what the first run wrote
        (repo / written).unlink()
    (repo / "tracked.py").write_text("Y = 3\n")  # now a tracked change too
    res = run_script(repo, "train.py", str(tmp_path / "more"))
    assert res.returncode == 0, res.stderr
    record = load_record(str(tmp_path / "more" / "late"))
    assert record.code.git is not None and record.code.git.patch_item == "code.patch"
    line = _code_line(record)
    assert "patch code.patch" in line and "1 untracked file" in line, line


def test_files_in_the_runs_base_directory_are_its_outputs_not_code(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    (repo / "runs").mkdir()
    (repo / "runs" / "old-notes.txt").write_text("an earlier run's notes\n")  # not git-ignored
    res = run_script(repo, "train.py", "runs", "--require-clean")  # clean: the base directory is no code
    assert res.returncode == 0, res.stderr
    git = load_record(str(repo / "runs" / "late")).code.git
    assert git is not None and not git.dirty and git.untracked_items == []
    assert git.untracked_skipped_reasons == {"runs/old-notes.txt": "run output"}
