"""Secrets are not shipped with a model (issue 7, point 10).

Training keeps the repository's untracked files beside the model (DeepDIVA's backup of
uncommitted code), and a model is made to be shared: git-ignored files and files named like
secrets (``.env``, ``id_rsa``, ``*.pem``...) are never stored, the record names what was skipped
and why (never the content), ``reprodl train`` prints it, and storing can be turned off.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from reprodl import keys
from reprodl.modeldataset.read import load_record
from reprodl.store import open_dataset
from reprodl.training.capture import SECRET_FILE_PATTERNS, capture_code, secret_pattern

pytest.register_assert_rewrite("train_fixtures")

from train_fixtures import digits_config, path_of, small_params

pytest_plugins = ["train_fixtures"]

SECRET = "AWS_SECRET_ACCESS_KEY=hunter2-do-not-ship"
PREFIX = keys.CODE_DIR + "untracked/"


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=T", "-c", "user.email=t@example.org", *args],
        cwd=repo,
        check=True,
        capture_output=True,
        text=True,
    ).stdout


@pytest.fixture
def repo(tmp_path: Path, digits_split_master: str) -> Path:
    """A git repository: a committed config and .gitignore; untracked .env, id_rsa, an ignored
    file and a normal helper.py."""
    root = tmp_path / "project"
    root.mkdir()
    _git(root, "init", "-q", "-b", "main")
    (tmp_path / "models").mkdir()
    (root / "train.yaml").write_text(yaml.safe_dump(digits_config(digits_split_master, tmp_path / "models")))
    (root / ".gitignore").write_text("*.log\n")
    _git(root, "add", "train.yaml", ".gitignore")
    _git(root, "commit", "-q", "-m", "start")
    (root / ".env").write_text(SECRET + "\n")
    (root / "id_rsa").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n" + SECRET + "\n")
    (root / "run.log").write_text(SECRET + "\n")  # git-ignored
    (root / "helper.py").write_text("SCALE = 2\n")
    return root


def _item_names(uri: str) -> list[str]:
    ds = open_dataset(uri)
    return sorted(ds.relpath(i) for i in ds.identifiers)


def _no_secret_anywhere(uri: str) -> None:
    for path in path_of(uri).rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_cli_train_stores_only_the_normal_untracked_file_and_says_so(repo, cli):
    result = cli("train", repo / "train.yaml", "--quiet")
    assert result.exit_code == 0, result.output
    assert "stored 1 untracked file: helper.py (skipped: .env [secret], id_rsa [secret])" in result.stdout
    uri = result.stdout.strip().splitlines()[-1].removeprefix("Model dataset: ")
    assert [n for n in _item_names(uri) if n.startswith(keys.CODE_DIR)] == [PREFIX + "helper.py"]
    git = load_record(uri).code.git
    assert git.untracked_items == [PREFIX + "helper.py"]
    assert git.untracked_skipped == [".env", "id_rsa"]
    assert git.untracked_skipped_reasons == {".env": "secret", "id_rsa": "secret"}
    assert git.store_untracked is True
    assert "run.log" not in git.untracked  # git-ignored: not even named
    _no_secret_anywhere(uri)


def test_no_untracked_stores_none_and_the_record_says_why(repo, cli):
    result = cli("train", repo / "train.yaml", "--quiet", "--no-untracked")
    assert result.exit_code == 0, result.output
    assert (
        "stored 0 untracked files (store_untracked=False; skipped: .env [secret], helper.py [opted out], "
        "id_rsa [secret])"
    ) in result.stdout
    uri = result.stdout.strip().splitlines()[-1].removeprefix("Model dataset: ")
    assert not [n for n in _item_names(uri) if n.startswith(keys.CODE_DIR)]
    git = load_record(uri).code.git
    assert git.store_untracked is False and git.untracked_items == []
    assert git.dirty is True  # the code is still known to differ from the commit


def test_json_output_lists_stored_and_skipped(repo, cli):
    import json

    result = cli("train", repo / "train.yaml", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["untracked_stored"] == [PREFIX + "helper.py"]
    assert out["untracked_skipped"] == {".env": "secret", "id_rsa": "secret"}


def test_config_key_and_python_argument_turn_storing_off(repo, digits_split_master, tmp_path):
    import torch

    from reprodl import DerivedDataSet, GenNet, TensorDataSet, train_model_with_metadata_capture
    from reprodl.training.config import build_and_train, load_config

    _, record = build_and_train(
        load_config(repo / "train.yaml", ["name=nostore", "store_untracked=false"]), progress=False
    )
    assert record.code.git.untracked_items == [] and record.code.git.store_untracked is False

    params = small_params()
    train = TensorDataSet(digits_split_master, usetype="train")
    torch.manual_seed(0)
    net = GenNet(**params.init_params)
    with DerivedDataSet(str(tmp_path / "models"), "api-off", train) as out:
        record = train_model_with_metadata_capture(
            net,
            train,
            torch.optim.SGD(net.parameters(), lr=0.05),
            torch.nn.NLLLoss(),
            params,
            out,
            progress=False,
            code_root=repo,
            store_untracked=False,
        )
    assert record.code.git.untracked_items == [] and record.code.git.untracked_skipped == [
        ".env",
        "helper.py",
        "id_rsa",
    ]
    assert not [n for n in _item_names(out.uri) if n.startswith(keys.CODE_DIR)]


@pytest.mark.parametrize(
    "name",
    [
        ".env",
        ".env.local",
        "config/.env.production",
        ".ENV",
        "id_rsa",
        "id_rsa.pub",
        "keys/id_ed25519",
        "id_ecdsa",
        "server.pem",
        "tls.key",
        "cert.p12",
        "cert.pfx",
        "vault.kdbx",
        "credentials",
        "credentials.json",
        "deploy/credentials.json",
        ".netrc",
        ".pypirc",
        ".git-credentials",
        "home/.aws/credentials",
        ".ssh/config",
    ],
)
def test_secret_names_are_on_the_deny_list(name):
    assert secret_pattern(name) is not None


@pytest.mark.parametrize(
    "name",
    [
        "env.py",
        "environment.yaml",
        "keyboard.py",
        "monkey.py",
        "pem.py",
        "credentials_test.py",
        "aws/credentials_loader.py",
        "train.yaml",
        "README.md",
        "src/keys.py",
    ],
)
def test_ordinary_names_are_not_taken_for_secrets(name):
    assert secret_pattern(name) is None


def test_the_deny_list_is_one_tuple_covering_the_issue():
    for pattern in (
        ".env",
        ".env.*",
        "id_rsa*",
        "id_ed25519*",
        "*.pem",
        "*.key",
        "*.p12",
        "*.pfx",
        "credentials",
        "credentials.json",
        ".netrc",
        ".pypirc",
        ".aws/credentials",
        "*.kdbx",
        ".git-credentials",
    ):
        assert pattern in SECRET_FILE_PATTERNS


def test_secrets_in_subdirectories_symlinks_and_excluded_files_are_not_stored(repo, tmp_path):
    outside = tmp_path / "elsewhere.txt"
    outside.write_text(SECRET + "\n")
    (repo / "notes.txt").symlink_to(outside)  # an innocent name for a file outside the repository
    (repo / "deploy").mkdir()
    (repo / "deploy" / "prod.env").write_text("ok: not a secret name\n")
    (repo / "deploy" / ".env.production").write_text(SECRET + "\n")
    (repo / "deploy" / "server.key").write_text(SECRET + "\n")
    (repo / ".git" / "info" / "exclude").write_text("private/\n")
    (repo / "private").mkdir()
    (repo / "private" / "token.txt").write_text(SECRET + "\n")
    info, _, files = capture_code(repo)
    assert sorted(files) == [PREFIX + "deploy/prod.env", PREFIX + "helper.py"]
    assert info.git.untracked_skipped_reasons == {
        ".env": "secret",
        "deploy/.env.production": "secret",
        "deploy/server.key": "secret",
        "id_rsa": "secret",
        "notes.txt": "symbolic link",
    }
    assert not any("private" in name or "run.log" in name for name in info.git.untracked)


def test_a_committed_secret_file_edited_since_stays_out_of_the_patch(repo):
    (repo / "config").mkdir()
    (repo / "config" / ".env").write_text("PLACEHOLDER=1\n")
    (repo / "model.py").write_text("WIDTH = 1\n")
    _git(repo, "add", "config/.env", "model.py")
    _git(repo, "commit", "-q", "-m", "tracked env")
    (repo / "config" / ".env").write_text(SECRET + "\n")
    (repo / "model.py").write_text("WIDTH = 2\n")
    info, patch, _ = capture_code(repo)
    assert patch is not None and "+WIDTH = 2" in patch
    assert SECRET not in patch and ".env" not in patch
    assert info.git.patch_skipped == ["config/.env"] and info.git.dirty
    # What is left applies to the recorded commit, so the code can still be rebuilt.
    applied = subprocess.run(
        ["git", "apply", "--check", "-R", "-"], cwd=repo, input=patch, text=True, check=False, capture_output=True
    )
    assert applied.returncode == 0, applied.stderr


def test_only_a_committed_secret_changed_still_marks_the_code_dirty(repo):
    (repo / ".env").unlink()
    (repo / ".env").write_text("PLACEHOLDER=1\n")
    _git(repo, "add", ".env")
    _git(repo, "commit", "-q", "-m", "tracked env")
    (repo / ".env").write_text(SECRET + "\n")
    info, patch, _ = capture_code(repo)
    assert patch is None and info.git.patch_skipped == [".env"] and info.git.dirty


def test_the_compiled_secret_patterns_decide_as_fnmatch_per_component_does() -> None:
    """secret_pattern compiles the deny-list once; it must decide exactly as matching each component does."""
    import fnmatch
    import itertools

    from reprodl.training.source import SECRET_FILE_PATTERNS, secret_pattern

    def by_fnmatch(relpath: str) -> str | None:
        parts = [p.lower() for p in Path(relpath).parts]
        for pattern in SECRET_FILE_PATTERNS:
            tail = pattern.lower().split("/")
            if len(parts) >= len(tail) and all(
                fnmatch.fnmatchcase(p, t) for p, t in zip(parts[-len(tail) :], tail, strict=True)
            ):
                return pattern
        return None

    names = [
        *(p.replace("*", "x").replace("[!p]", "t") for p in SECRET_FILE_PATTERNS),
        *(p.upper().replace("*", "Y") for p in SECRET_FILE_PATTERNS),
        "tokenizer.py",
        "token.py",
        "tokens.txt",
        "token_utils.py",
        "api_token.txt",
        "hf_token",
        "x.token",
        "train.py",
        "README.md",
        ".envrc",
        "env",
        "key.pem.bak",
        "a.KEY",
        "credentials.yaml",
        "id_rsa.pub",
        "secrets.yaml",
        "secret",
        "config.json",
        ".ssh",
        "known_hosts",
        "my_token.py",
        "my_token.txt",
    ]
    dirs = ["", "src/", ".aws/", ".ssh/", ".docker/", "deep/.ssh/", "a/b/"]
    decided = {d + n: secret_pattern(d + n) for d, n in itertools.product(dirs, names)}
    assert decided == {path: by_fnmatch(path) for path in decided}
    assert decided["src/train.py"] is None and decided[".ssh/known_hosts"] == ".ssh/*"
