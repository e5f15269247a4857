"""An item that is not a regular file: a model dataset handed over as a directory may hold, in place
of an item, a link to ``/dev/zero`` (read for ever) or a named pipe (whose opening waits for a writer
for ever). The readers refuse them by name, quickly, without reading them; a regular file larger than
its reader's bound is refused before it is read.

Each command runs in a child process with its address space and time bounded, so a reader that
regresses fails the test instead of exhausting the machine.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from user_scripts import child_env

from reprodl import keys

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "digits-golden"
LIMIT_S = 60


def _bounded() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))


def _reprodl(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-c", "from reprodl.cli import main; main()", *map(str, args)]
    return subprocess.run(
        argv, cwd=cwd, env=child_env(), capture_output=True, text=True, timeout=LIMIT_S, preexec_fn=_bounded
    )


def _special(path: Path, what: str) -> None:
    path.unlink()
    if what == "a link to /dev/zero":
        path.symlink_to("/dev/zero")
    elif what == "a named pipe":
        os.mkfifo(path)
    else:  # a sparse regular file over the reader's bound
        with open(path, "wb") as fh:
            fh.truncate(keys.MAX_RECORD_BYTES + 1)


@pytest.mark.parametrize("what", ["a link to /dev/zero", "a named pipe", "a file over the bound"])
def test_a_record_item_that_is_not_a_regular_file_is_refused_by_name(tmp_path: Path, what: str) -> None:
    model = tmp_path / "model"
    shutil.copytree(GOLDEN, model)
    _special(model / "data" / keys.PROVENANCE_FILE, what)
    done = _reprodl("provenance", model, cwd=tmp_path)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert keys.PROVENANCE_FILE in done.stderr, done.stderr


@pytest.fixture(scope="module")
def run_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A start_run model (its code stored: snapshot and an untracked helper.py)."""
    from user_scripts import run_script, tiny_run_script, user_repo

    repo = user_repo(tmp_path_factory.mktemp("user"), {"train.py": tiny_run_script(helper=True)}, commit_message="s")
    (repo / "models").mkdir()
    (repo / "helper.py").write_text("def hello():\n    pass\n")
    done = run_script(repo, "train.py")
    assert done.returncode == 0, done.stderr
    return repo / "models" / "tiny"


@pytest.mark.parametrize("what", ["a link to /dev/zero", "a named pipe"])
@pytest.mark.parametrize("item", ["code/untracked/helper.py", keys.CODE_SNAPSHOT_FILE, keys.TRACE_FILE])
def test_a_code_or_trace_item_that_is_not_a_regular_file_is_refused_by_reproduce(
    run_model: Path, tmp_path: Path, what: str, item: str
) -> None:
    model = tmp_path / "model"
    shutil.copytree(run_model, model)
    _special(model / "data" / item, what)
    done = _reprodl("reproduce", model, "--trust-code", "-q", cwd=tmp_path)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert item in done.stderr and "not a regular file" in done.stderr, done.stderr


@pytest.mark.parametrize("what", ["a link to /dev/zero", "a named pipe"])
@pytest.mark.parametrize(
    "name", [".dtool/manifest.json", "README.yml", ".dtool/annotations/model_name.json", ".dtool/dtool"]
)
def test_dtool_metadata_that_is_not_a_regular_file_is_refused_when_the_dataset_is_opened(
    tmp_path: Path, what: str, name: str
) -> None:
    model = tmp_path / "model"
    shutil.copytree(GOLDEN, model)
    _special(model / name, what)
    for command in (("provenance", model), ("dataset", "info", model)):
        done = _reprodl(*command, cwd=tmp_path)
        assert done.returncode != 0, done.stdout
        assert "Traceback" not in done.stderr, done.stderr[-2000:]
        assert name.split("/")[-1] in done.stderr and "regular file" in done.stderr, done.stderr


@pytest.mark.parametrize("what", ["a link to /dev/zero", "a named pipe"])
def test_verify_reports_an_item_that_is_not_a_regular_file_without_reading_it(tmp_path: Path, what: str) -> None:
    model = tmp_path / "model"
    shutil.copytree(GOLDEN, model)
    _special(model / "data" / "model.safetensors", what)
    done = _reprodl("verify", model, cwd=tmp_path)
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "model.safetensors" in done.stdout + done.stderr, done.stdout


@pytest.mark.parametrize("what", ["a link to /dev/zero", "a named pipe"])
def test_an_export_of_a_stored_script_that_is_not_a_regular_file_is_refused(tmp_path: Path, what: str) -> None:
    pytest.importorskip("rocrate")
    from train_fixtures import rewrite_model

    def edit(raw: dict) -> None:
        raw["code"].update(git=None, entry_script="train.py", entry_script_item="code/train.py")

    (tmp_path / "models").mkdir()
    uri = rewrite_model(str(GOLDEN), tmp_path / "models", "m", edit=edit, replace={"code/train.py": b"x = 1\n"})
    model = tmp_path / "models" / "m"
    _special(model / "data" / "code" / "train.py", what)
    done = _reprodl("export", uri, "-f", "ro-crate", "-o", tmp_path / "crate", "-q", cwd=tmp_path)
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "train.py" in done.stderr and "regular file" in done.stderr, done.stderr
