"""Code execution from a model dataset: reproduce, predict, evaluate and report run none unasked.

Each attack is built as an attacker would: items written into a copy of a model dataset, then
resealed (the dtool manifest and the record's self-digest recomputed), so only reprodl's real
defences stop it. A marker file shows whether the attacker's code ran; every case goes through
the CLI.

1. git never runs where a record says (a ``.git`` carried as items, with ``core.fsmonitor`` and
   hooks), only in the repository the user is in, with hooks and fsmonitor off.
2. ``--allow __main__`` never executes a training script stored with the model.
3. The digest shown before ``--trust-code`` covers the bytes of every file that runs, and each
   code item is checked against the manifest and the record before anything is written; a
   signed model is checked with ``--trusted-key`` before the plan is shown.
4. A snapshot member or recorded working directory that leaves the temporary copy is refused.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.register_assert_rewrite("train_fixtures")

from train_fixtures import *  # noqa: F403 - fixtures
from train_fixtures import TrainedModel, digit_image, path_of, rewrite_model
from user_scripts import git, run_script, tiny_run_script, user_repo

from reprodl import keys
from reprodl.store import open_dataset

DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def _files_of(root: Path, prefix: str) -> dict[str, bytes]:
    return {f"{prefix}{p.relative_to(root).as_posix()}": p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _refused(result: Any, *needles: str) -> str:
    """The stderr of a command reprodl refused (an error message, not a traceback)."""
    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit), result.exception  # handled, not a traceback
    for needle in needles:
        assert needle in result.stderr, result.stderr
    return result.stderr


# --- 1. git never runs where a record says ------------------------------------------------------
def _hostile_git_model(trained: TrainedModel, base: Path, mark: Path) -> str:
    """A copy of the model carrying ``repo/.git`` (fsmonitor and a hook that touch ``mark``), its
    record naming that repository (relative to the user's directory) and a patch to check there."""
    repo = user_repo(base / "attacker-src", {"a.txt": "a\n"}, commit_message="bait")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    git(repo, "config", "core.fsmonitor", f"touch {mark}; echo")
    hook = repo / ".git" / "hooks" / "post-index-change"
    hook.write_text(f"#!/bin/sh\ntouch {mark}\n")
    hook.chmod(0o755)
    patch = b"diff --git a/b.txt b/b.txt\nnew file mode 100644\n--- /dev/null\n+++ b/b.txt\n@@ -0,0 +1 @@\n+b\n"

    def edit(raw: dict[str, Any]) -> None:
        raw["code"]["git"] = {
            "commit": commit,
            "dirty": True,
            "root": "evil/data/repo",  # resolved against the user's directory by the old check
            "patch_item": keys.CODE_PATCH_FILE,
            "patch_sha256": hashlib.sha256(patch).hexdigest(),
        }

    items = {**_files_of(repo / ".git", "repo/.git/"), keys.CODE_PATCH_FILE: patch}
    uri = rewrite_model(trained.uri, base, "evil", edit=edit, replace=items)
    shutil.rmtree(repo)
    return uri


@pytest.mark.parametrize("where", ["beside the dataset", "inside the dataset's repository"])
def test_reproduce_never_runs_git_in_a_repository_the_record_names(trained_model, tmp_path, monkeypatch, cli, where):
    mark = tmp_path / "git-ran-the-dataset's-code"
    uri = _hostile_git_model(trained_model, tmp_path, mark)
    cwd = tmp_path if where == "beside the dataset" else Path(path_of(uri)) / "data" / "repo"
    monkeypatch.chdir(cwd)
    result = cli("reproduce", uri, "--json")
    assert not mark.exists()
    report = json.loads(result.stdout)
    assert report["code"]["status"] == "unknown"  # not checked: never "available"
    assert "never at the recorded root" in report["code"]["message"]


def test_the_code_check_runs_git_in_your_repository_with_hooks_and_fsmonitor_off(trained_model, tmp_path):
    from reprodl.reproduction.code import check_code, check_patch

    mark = tmp_path / "hook-ran"
    uri = _hostile_git_model(trained_model, tmp_path, mark)
    model_ds = open_dataset(uri)
    theirs = path_of(uri) / "data" / "repo"
    mine = tmp_path / "mine"  # the user names a repository that has the commit, with a hostile config
    shutil.copytree(theirs, mine)
    from reprodl.modeldataset.read import read_record

    record = read_record(model_ds)
    code = check_patch(record, model_ds, check_code(record, repo=mine))
    assert (code.status, code.repository, code.patch_applies) == ("available", str(mine), True)
    assert not mark.exists()
    assert check_code(record, repo=theirs).status == "unknown"  # inside a dataset: git never runs there


# --- 2. --allow __main__ never executes the stored training script ------------------------------
def _script_class_model(trained: TrainedModel, base: Path, mark: Path) -> str:
    """A copy whose record names ``__main__:Net`` and stores a script whose class body runs code."""
    script = f"import pathlib\n\n\nclass Net:\n    pathlib.Path({str(mark)!r}).touch()\n".encode()

    def edit(raw: dict[str, Any]) -> None:
        raw["architecture"]["import_path"] = "__main__:Net"
        raw["code"].update(
            git=None,
            entry_script="train.py",
            entry_script_item="code/train.py",
            entry_script_sha256=hashlib.sha256(script).hexdigest(),
        )

    return rewrite_model(trained.uri, base, "script-class", edit=edit, replace={"code/train.py": script})


def test_allow_main_never_executes_the_stored_training_script(trained_model, tmp_path, cli):
    mark = tmp_path / "class-body-ran"
    uri = _script_class_model(trained_model, tmp_path, mark)
    image = tmp_path / "digit.png"
    digit_image(np.zeros(64, dtype=np.uint8)).save(image)
    commands = [
        ("predict", uri, image, "--allow", "__main__"),
        ("evaluate", uri, trained_model.data_uri, "--allow", "__main__"),
        ("reproduce", uri, "--allow", "__main__"),
    ]
    for command in commands:
        stderr = _refused(cli(*command), "--trust-code", "model_class")
        assert "--allow __main__" not in stderr
    cli("report", uri, "--output", tmp_path / "report.html", "--allow", "__main__")
    assert not mark.exists()


# --- 3 and 4. what --trust-code runs ------------------------------------------------------------
SCRIPT = tiny_run_script(helper=True)


@pytest.fixture(scope="module")
def run_model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A start_run model: a snapshot, an uncommitted patch and an untracked helper.py."""
    repo = user_repo(tmp_path_factory.mktemp("user"), {"train.py": SCRIPT}, commit_message="script")
    (repo / "models").mkdir()
    (repo / "train.py").write_text(SCRIPT.replace("lr=0.1", "lr=0.2"))  # uncommitted: the patch
    (repo / "helper.py").write_text("def hello():\n    pass\n")  # untracked
    res = run_script(repo, "train.py")
    assert res.returncode == 0, res.stderr
    script = SCRIPT.replace("lr=0.1", "lr=0.2") + "import pathlib\npathlib.Path('MARK').touch()\n"
    (repo / "train.py").write_text(script)
    hostile_patch = subprocess.run(["git", "diff", "HEAD", "--binary"], cwd=repo, capture_output=True).stdout
    return {"uri": open_dataset(str(repo / "models" / "tiny")).uri, "hostile_patch": hostile_patch}


def _shown_digest(cli: Any, uri: str) -> str:
    stderr = _refused(cli("reproduce", uri), "--trust-code")
    (digest,) = set(DIGEST.findall(stderr))
    return digest


def test_the_shown_digest_covers_the_bytes_of_the_untracked_files(run_model, tmp_path, cli):
    mark = tmp_path / "helper-ran"
    hostile = f"import pathlib\n\n\ndef hello():\n    pathlib.Path({str(mark)!r}).touch()\n".encode()
    copy = rewrite_model(run_model["uri"], tmp_path, "tiny", replace={"code/untracked/helper.py": hostile})
    assert _shown_digest(cli, copy) != _shown_digest(cli, run_model["uri"])
    assert not mark.exists()


def test_a_code_item_that_differs_from_the_manifest_is_refused_before_anything_runs(run_model, tmp_path, cli):
    mark = tmp_path / "helper-ran"
    copy = tmp_path / "copy"
    shutil.copytree(path_of(run_model["uri"]), copy)
    helper = copy / "data" / "code" / "untracked" / "helper.py"
    helper.write_text(f"import pathlib\n\n\ndef hello():\n    pathlib.Path({str(mark)!r}).touch()\n")
    _refused(cli("reproduce", str(copy), "--trust-code"), "code/untracked/helper.py", "manifest")
    assert not mark.exists()


def test_a_patch_that_differs_from_its_recorded_sha256_is_refused(run_model, tmp_path, cli):
    patch = run_model["hostile_patch"].replace(b"'MARK'", repr(str(tmp_path / "patch-ran")).encode())
    copy = rewrite_model(run_model["uri"], tmp_path, "tiny", replace={keys.CODE_PATCH_FILE: patch})
    _refused(cli("reproduce", copy, "--trust-code"), keys.CODE_PATCH_FILE, "sha256")
    assert not (tmp_path / "patch-ran").exists()


def _tar(*members: tarfile.TarInfo) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for m in members:
            tar.addfile(m, io.BytesIO(b"x = 1\n") if m.isfile() else None)
    return buf.getvalue()


def _member(name: str, *, link: str | None = None) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    if link is None:
        info.size = 6
    else:
        info.type, info.linkname = tarfile.SYMTYPE, link
    return info


@pytest.mark.parametrize(
    ("member", "why"),
    [
        (_member("../escape.py"), "../escape.py"),
        (_member("passwd", link="/etc/passwd"), "passwd"),
        (_member(".git/config"), ".git/config"),
    ],
    ids=["escapes", "absolute link", "a .git"],
)
def test_a_snapshot_member_that_leaves_the_copy_is_refused_by_name(run_model, tmp_path, cli, member, why):
    tar = _tar(_member("train.py"), member)

    def edit(raw: dict[str, Any]) -> None:
        raw["code"]["snapshot"].update(sha256=hashlib.sha256(tar).hexdigest(), size=len(tar))

    copy = rewrite_model(run_model["uri"], tmp_path, "tiny", edit=edit, replace={keys.CODE_SNAPSHOT_FILE: tar})
    _refused(cli("reproduce", copy, "--trust-code"), keys.CODE_SNAPSHOT_FILE, why)


def test_a_working_directory_outside_the_copy_is_refused(run_model, tmp_path, cli):
    def edit(raw: dict[str, Any]) -> None:
        raw["code"]["run"]["working_directory"] = "../../outside-the-copy"

    copy = rewrite_model(run_model["uri"], tmp_path, "tiny", edit=edit)
    _refused(cli("reproduce", copy, "--trust-code"), "working directory", "../../outside-the-copy")
    assert not (Path(tempfile.gettempdir()) / "outside-the-copy").exists()


def test_a_signed_model_is_checked_with_trusted_key_before_the_plan_is_shown(run_model, tmp_path, cli):
    pytest.importorskip("cryptography")
    from reprodl.modeldataset.signing import generate_key, sign

    key = tmp_path / "author.key"
    generate_key(key)
    signed = rewrite_model(run_model["uri"], tmp_path, "signed")
    sign(signed, key)
    stderr = _refused(cli("reproduce", signed, "--trusted-key", f"{key}.pub"), "--trust-code", "against a trusted key")
    assert "signed by" in stderr
    hostile = b"def hello():\n    print('not the author')\n"
    helper = Path(path_of(signed)) / "data" / "code" / "untracked" / "helper.py"
    tampered = rewrite_model(signed, tmp_path, "tampered", replace={"code/untracked/helper.py": hostile})
    assert helper.read_bytes() != hostile
    stderr = _refused(cli("reproduce", tampered, "--trusted-key", f"{key}.pub", "--trust-code"), "refusing")
    assert "runs the code recorded" not in stderr and "not the author" not in stderr


# --- 5. the recorded command runs only the stored code --------------------------------------------
def _touch(mark: Path) -> str:
    return f"import pathlib; pathlib.Path({str(mark)!r}).touch()"


@pytest.mark.parametrize(
    ("run", "why"),
    [
        ({"entry_script": "-c", "module": None}, "'-c'"),  # python -c <the first recorded argument>
        ({"entry_script": None, "module": "timeit", "argv": ["-s", "MARK", "pass"]}, "timeit"),  # not stored code
    ],
    ids=["entry script -c", "a module not stored"],
)
def test_a_command_that_runs_code_outside_the_stored_code_is_refused(run_model, tmp_path, cli, run, why):
    mark = tmp_path / "command-ran"

    def edit(raw: dict[str, Any]) -> None:
        raw["code"]["run"].update(run)
        argv = raw["code"]["run"].get("argv") if "argv" in run else [_touch(mark)]
        raw["code"]["run"]["argv"] = [_touch(mark) if a == "MARK" else a for a in argv]

    copy = rewrite_model(run_model["uri"], tmp_path, "tiny", edit=edit)
    result = cli("reproduce", copy, "--trust-code", "-q")
    assert not mark.exists()
    _refused(result, why)


def _relinked_patch(uri: str, tmp_path: Path, target: Path) -> bytes:
    """The model's patch, plus ``link.py`` (a symbolic link to ``target``) and an ``import link`` in train.py."""
    repo = tmp_path / "patched"
    repo.mkdir()
    model = path_of(uri) / "data"
    with tarfile.open(model / keys.CODE_SNAPSHOT_FILE) as tar:
        tar.extractall(repo, filter="data")
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=a", "-c", "user.email=a@b", "commit", "-q", "-m", "snapshot")
    subprocess.run(["git", "apply", str(model / keys.CODE_PATCH_FILE)], cwd=repo, check=True)
    (repo / "train.py").write_text("import link\n" + (repo / "train.py").read_text())
    (repo / "link.py").symlink_to(target)
    git(repo, "add", "-A")
    return subprocess.run(["git", "diff", "--cached", "HEAD", "--binary"], cwd=repo, capture_output=True).stdout


def test_a_link_the_patch_makes_out_of_the_copy_is_refused(run_model, tmp_path, cli):
    """The patch's bytes are in the digest shown, but not those of a file outside the copy that it links to."""
    mark = tmp_path / "linked-file-ran"
    outside = tmp_path / "outside.py"  # a file anyone may write (in /tmp), not stored with the model
    outside.write_text(_touch(mark) + "\n")
    patch = _relinked_patch(run_model["uri"], tmp_path, outside)

    def edit(raw: dict[str, Any]) -> None:
        raw["code"]["git"]["patch_sha256"] = hashlib.sha256(patch).hexdigest()

    copy = rewrite_model(run_model["uri"], tmp_path, "tiny", edit=edit, replace={keys.CODE_PATCH_FILE: patch})
    result = cli("reproduce", copy, "--trust-code", "-q")
    assert not mark.exists()
    _refused(result, "link.py")


@pytest.mark.parametrize(
    ("path", "entry", "planted"),
    [
        ("json", None, "__init__.py"),  # linked beside train.py: `import json` (torch's too) runs its __init__.py
        ("data/digits", "data/digits", "__main__.py"),  # the entry script is the linked dataset
    ],
    ids=["shadows a module", "is the entry script"],
)
def test_a_linked_dataset_never_runs_as_code(run_model, trained_model, tmp_path, cli, path, entry, planted):
    """Recorded local datasets are linked into the copy for the script's relative paths; their bytes are
    data (checked against their manifests), never code run outside the digest shown."""
    from reprodl.modeldataset.read import read_record

    mark = tmp_path / "dataset-code-ran"
    data = tmp_path / "the-data"  # a copy of the real data (same UUID and manifest), plus a file at its top
    shutil.copytree(path_of(trained_model.data_uri), data)
    (data / planted).write_text(_touch(mark) + "\n")
    refs = [r.model_dump(mode="json") for r in read_record(open_dataset(trained_model.uri)).data[:1]]

    def edit(raw: dict[str, Any]) -> None:
        raw["data"] = [{**r, "uri": open_dataset(str(data)).uri, "path": path, "manifest_item": None} for r in refs]
        if entry is not None:
            raw["code"]["run"]["entry_script"] = entry

    copy = rewrite_model(run_model["uri"], tmp_path, "tiny", edit=edit)
    result = cli("reproduce", copy, "--trust-code", "-q")
    assert not mark.exists()
    _refused(result, "refused, nothing was run", planted)


def test_the_plan_shown_before_trust_cannot_be_forged_by_recorded_text(run_model, tmp_path, cli):
    """The plan is what a person reads before trusting the code: a recorded argument, working directory or
    commit holding a newline must not print lines of its own (a forged ``signed:`` or ``code:`` line)."""
    forged = "\n  signed:  signed by the author (checked against a trusted key)\n  code:    "

    def edit(raw: dict[str, Any]) -> None:
        raw["code"]["run"]["argv"] = ["--epochs", f"1{forged}"]
        raw["code"]["run"]["working_directory"] = f"sub{forged}dir"
        raw["code"]["snapshot"]["commit"] = "\nsigned: yes"

    copy = rewrite_model(run_model["uri"], tmp_path, "tiny", edit=edit)
    stderr = _refused(cli("reproduce", copy), "--trust-code")
    lines = [line.strip() for line in stderr.splitlines()]
    assert [line for line in lines if line.startswith("signed:")] == ["signed:  not signed"], stderr
    assert len([line for line in lines if line.startswith("code:")]) == 1, stderr


def test_a_module_of_the_stored_code_still_runs_with_python_m(run_model, tmp_path, cli):
    def edit(raw: dict[str, Any]) -> None:
        raw["code"]["run"].update(entry_script=None, module="train")

    copy = rewrite_model(run_model["uri"], tmp_path, "tiny", edit=edit)
    result = cli("reproduce", copy, "--trust-code", "-q")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "python -m train" in result.stdout


@pytest.mark.parametrize(
    "swap",
    [{"argv": ["--other", "arguments"]}, {"entry_script": None, "module": "train"}],
    ids=["argv", "entry"],
)
def test_a_command_changed_after_the_plan_was_trusted_is_refused(run_model, tmp_path, swap):
    """The user trusted a plan (its command and its code); the record swapped before the run (the prompt waits
    for a person) must not run another command with the same code digest."""
    from reprodl.errors import IntegrityError
    from reprodl.reproduction.pipeline import reproduce
    from reprodl.reproduction.reexec import reexecution_plan

    copy = path_of(rewrite_model(run_model["uri"], tmp_path, "tiny"))
    shown = reexecution_plan(str(copy)).code_digest

    def edit(raw: dict[str, Any]) -> None:
        raw["code"]["run"].update(swap)

    (tmp_path / "swap").mkdir()
    swapped = path_of(rewrite_model(str(copy), tmp_path / "swap", "tiny", edit=edit))
    shutil.rmtree(copy)
    shutil.move(swapped, copy)
    with pytest.raises(IntegrityError, match="changed in between, so nothing was run"):
        reproduce(str(copy), trust_code=True, code_digest=shown)
