"""Data loss (issue 17, items 9 and 10, and 15's disk-full cases): nothing that fails loses work.

* A resume whose newest checkpoint is unusable (a truncated ``state.pt``, one that is not
  ``weights_only``-loadable, a bad ``meta.json``) names it and resumes from the previous one;
  a checkpoint write that fails (a full disk, a file too large) names the path and keeps the
  previous checkpoint, which ``--resume`` then continues from. Nothing deletes the checkpoints.
* A split interrupted by a full disk completes when run again.
* Every annotation or README reprodl writes into an existing dataset follows the umask.

The failures are built for real: damaged files on disk, ``RLIMIT_FSIZE`` in a child process
(a real ``EFBIG``), a write that raises ``ENOSPC``.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from reprodl import keys
from reprodl.errors import ResumeError, StorageError
from reprodl.store import clean_staging, find_staging

pytest_plugins = ["train_fixtures"]

SRC = str(Path(__file__).resolve().parents[2] / "src")
STEPS_PER_EPOCH = 45  # 1,438 training digits in batches of 32


def config(data_uri: str, output: Path) -> dict[str, Any]:
    from train_fixtures import digits_config

    output.mkdir(parents=True, exist_ok=True)
    return {**digits_config(data_uri, output, n_epochs=3), "checkpoint_every": 1}


def interrupted_in_epoch_3(cfg: dict[str, Any]) -> list[Path]:
    """Train ``cfg``, interrupted (Ctrl-C) in its third epoch; the checkpoints left, oldest first."""
    from reprodl.training.config import build_and_train, load_config

    def stop(metrics: Any) -> None:
        if metrics.epoch == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_and_train(load_config(cfg), progress=False, on_epoch=stop)
    return checkpoints(Path(cfg["output"]))


def checkpoints(base: Path) -> list[Path]:
    [staging] = find_staging(base)
    return sorted((Path(staging.path) / keys.CHECKPOINT_DIR).glob("ckpt-*"))


def train_cli(cli: Any, cfg: dict[str, Any], tmp_path: Path, *extra: str) -> Any:
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return cli("train", path, "--json", *extra)


def resumed_epoch(result: Any) -> int:
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    [epoch] = out["resumed"]["from_epoch"]
    return int(epoch)


# --- item 9: a failed resume keeps the checkpoints and resumes from the last good one ---------------
def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def not_weights_only(path: Path) -> None:
    """A pickle ``torch.load(weights_only=True)`` refuses (an argparse.Namespace in it)."""
    import argparse

    import torch

    torch.save({"model": argparse.Namespace(x=1)}, path)


def tensors_only(path: Path) -> None:
    """Weights-only loadable, but not a checkpoint's state."""
    import torch

    torch.save({"weights": torch.zeros(3)}, path)


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        pytest.param(lambda ck: truncate(ck / "state.pt"), "state.pt cannot be read", id="truncated-state"),
        pytest.param(lambda ck: not_weights_only(ck / "state.pt"), "state.pt holds more than tensors", id="pickled"),
        pytest.param(lambda ck: tensors_only(ck / "state.pt"), "state.pt lacks model, optimizer, rng", id="not-ours"),
        pytest.param(lambda ck: (ck / keys.CHECKPOINT_META).write_text("{not"), "meta.json is missing", id="bad-meta"),
        pytest.param(lambda ck: (ck / keys.CHECKPOINT_META).write_text('{"format": 99}'), "meta.json", id="format"),
    ],
)
def test_an_unusable_newest_checkpoint_is_named_and_the_previous_one_resumed(
    digits_split_master: str, tmp_path: Path, cli: Any, damage: Any, why: str
) -> None:
    cfg = config(digits_split_master, tmp_path / "models")
    first, newest = interrupted_in_epoch_3(cfg)  # the checkpoints of epochs 1 and 2 are both kept
    damage(newest)
    [left] = find_staging(tmp_path / "models")
    assert left.state == "resumable"  # kept by `reprodl dataset clean`, whatever the damage
    result = train_cli(cli, cfg, tmp_path, "--resume")
    assert resumed_epoch(result) == 1  # from the previous checkpoint, not epoch 1 afresh
    # the staging directory is claimed (renamed) by the resume: the message names it where it is
    warning = " ".join(result.stderr.split())
    assert re.search(rf"the checkpoint \S+/checkpoint/{newest.name} is unusable \(its {why}", warning), warning
    assert re.search(rf"resumed from \S+/checkpoint/{first.name} \(epoch 1, step 45\)", warning), warning
    assert find_staging(tmp_path / "models") == []


def test_a_resume_with_every_checkpoint_unusable_is_refused_naming_each_and_keeps_them(
    digits_split_master: str, tmp_path: Path, cli: Any
) -> None:
    from reprodl.training.config import build_and_train, load_config

    cfg = config(digits_split_master, tmp_path / "models")
    first, newest = interrupted_in_epoch_3(cfg)
    truncate(newest / "state.pt")
    not_weights_only(first / "state.pt")
    result = train_cli(cli, cfg, tmp_path, "--resume")
    assert result.exit_code != 0
    message = " ".join(result.stderr.split())
    assert "no usable checkpoint" in message and "They are kept" in message
    assert re.search(rf"the checkpoint \S+/checkpoint/{newest.name} is unusable \(its state.pt cannot be read", message)
    assert re.search(rf"the checkpoint \S+/checkpoint/{first.name} is unusable \(its state.pt holds more", message)
    names = [first.name, newest.name]
    assert [p.name for p in checkpoints(tmp_path / "models")] == names  # kept, to look at or remove on purpose
    with pytest.raises(ResumeError, match="no usable checkpoint"):
        build_and_train(load_config(cfg), progress=False, resume=True)
    assert [p.name for p in checkpoints(tmp_path / "models")] == names
    [removed] = clean_staging(tmp_path / "models", checkpoints=True)
    assert removed.removed


def test_a_checkpoint_whose_states_do_not_fit_is_refused_and_kept(
    digits_split_master: str, tmp_path: Path, cli: Any
) -> None:
    import torch

    cfg = config(digits_split_master, tmp_path / "models")
    _, newest = interrupted_in_epoch_3(cfg)
    state = torch.load(newest / "state.pt", weights_only=True)
    torch.save({**state, "model": {"fc.weight": torch.zeros(2)}}, newest / "state.pt")
    result = train_cli(cli, cfg, tmp_path, "--resume")
    message = " ".join(result.stderr.split())
    assert result.exit_code != 0
    assert re.search(rf"the checkpoint \S+/checkpoint/{newest.name} cannot be restored \(.*\)\. It is kept", message)
    assert [s.state for s in find_staging(tmp_path / "models")] == ["resumable"]
    [removed] = clean_staging(tmp_path / "models", checkpoints=True)
    assert removed.removed


# --- item 9 and 15: a checkpoint write that fails keeps the previous checkpoint ------------------
def test_a_full_disk_while_checkpointing_names_the_path_and_keeps_the_previous_checkpoint(
    digits_split_master: str, tmp_path: Path, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    real_save, saves = torch.save, [0]

    def full_disk(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        saves[0] += 1
        if saves[0] == 2:  # the checkpoint after epoch 2
            f.write(b"part of a checkpoint")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(obj, f, *args, **kwargs)

    cfg = config(digits_split_master, tmp_path / "models")
    monkeypatch.setattr(torch, "save", full_disk)
    result = train_cli(cli, cfg, tmp_path)
    monkeypatch.setattr(torch, "save", real_save)
    assert result.exit_code != 0
    [kept] = checkpoints(tmp_path / "models")
    assert "could not write the checkpoint" in result.stderr and "No space left on device" in result.stderr
    assert f"{kept.parent / 'ckpt-000000000090'}" in result.stderr  # the checkpoint it could not write
    assert f"the previous checkpoint {kept} is kept" in result.stderr and "--resume" in result.stderr
    assert resumed_epoch(train_cli(cli, cfg, tmp_path, "--resume")) == 1


EFBIG_TRAINING = """
import json, resource, signal, sys
from reprodl.training.config import build_and_train, load_config

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead

def limit(metrics):
    if metrics.epoch == 2:  # before the checkpoint of epoch 2 is written
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

build_and_train(load_config(json.loads(sys.argv[1])), progress=False, on_epoch=limit)
"""


def test_a_file_too_large_while_checkpointing_keeps_the_previous_checkpoint_to_resume(
    digits_split_master: str, tmp_path: Path, cli: Any
) -> None:
    cfg = config(digits_split_master, tmp_path / "models")
    proc = subprocess.run(
        [sys.executable, "-c", EFBIG_TRAINING, json.dumps(cfg)],
        env={**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode != 0
    assert "CheckpointWriteError" in proc.stderr and "File too large" in proc.stderr, proc.stderr[-3000:]
    [kept] = checkpoints(tmp_path / "models")
    assert f"the previous checkpoint {kept} is kept" in proc.stderr
    assert resumed_epoch(train_cli(cli, cfg, tmp_path, "--resume")) == 1


def test_a_full_disk_after_training_keeps_the_checkpoint(
    digits_split_master: str, tmp_path: Path, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write of the model dataset itself that fails (disk full) keeps the training's checkpoint."""
    from reprodl.modeldataset import write

    def full_disk(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "weights.safetensors")

    cfg = config(digits_split_master, tmp_path / "models")
    monkeypatch.setattr(write, "model_readme", full_disk)
    result = train_cli(cli, cfg, tmp_path)
    monkeypatch.undo()
    assert result.exit_code != 0 and "No space left on device" in result.stderr
    kept = checkpoints(tmp_path / "models")[-1]
    assert f"the checkpoint {kept} is kept" in result.stderr
    assert resumed_epoch(train_cli(cli, cfg, tmp_path, "--resume")) == 2  # no checkpoint after the last epoch


# --- item 15: a split interrupted by a full disk completes when run again --------------------------
@pytest.fixture
def full_disk_on(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Metadata writes of a file whose name is in the list fail as on a full disk."""
    from reprodl.store import staging

    real, failing = staging.atomic_write_text, []

    def write(path: Any, text: str, **kwargs: Any) -> None:
        if any(os.fspath(path).endswith(name) for name in failing):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(path))
        real(path, text, **kwargs)

    monkeypatch.setattr(staging, "atomic_write_text", write)
    yield failing


def test_a_split_interrupted_by_a_full_disk_completes_when_run_again(
    digits_uri: str, cli: Any, full_disk_on: list[str]
) -> None:
    full_disk_on.append(f"{keys.SPLIT_INFO}.json")  # the split's second write: its summary
    result = cli("dataset", "split", digits_uri, "--test", "0.25", "--seed", "3")
    assert result.exit_code != 0 and "No space left on device" in result.stderr
    full_disk_on.clear()
    other = cli("dataset", "split", digits_uri, "--test", "0.3", "--seed", "3")
    assert other.exit_code != 0 and "interrupted" in other.stderr
    again = cli("dataset", "split", digits_uri, "--test", "0.25", "--seed", "3", "--json")
    assert again.exit_code == 0, again.output
    info = json.loads(cli("dataset", "info", digits_uri, "--json").stdout)
    assert info["split"]["seed"] == 3 and info["split"]["test"] == 0.25
    assert json.loads(again.stdout) == info["split_counts"]
    same = cli("dataset", "split", digits_uri, "--test", "0.25", "--seed", "3")  # the same split again: a no-op
    assert same.exit_code == 0, same.output


# --- item 10: annotations and READMEs follow the umask ----------------------------------------
@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def annotation(dataset: str | Path, name: str) -> Path:
    from train_fixtures import path_of

    return path_of(str(dataset)) / ".dtool" / "annotations" / f"{name}.json"


def test_a_split_follows_the_umask(digits_uri: str, cli: Any, umask_022: None) -> None:
    assert cli("dataset", "split", digits_uri).exit_code == 0
    assert mode(annotation(digits_uri, keys.TENSOR_USETYPE)) == 0o644
    assert mode(annotation(digits_uri, keys.SPLIT_INFO)) == 0o644


def test_an_image_split_overlay_follows_the_umask(image_uri: str, cli: Any, umask_022: None) -> None:
    from train_fixtures import path_of

    assert cli("dataset", "split", image_uri, "--test", "0.5").exit_code == 0
    assert mode(path_of(image_uri) / ".dtool" / "overlays" / f"{keys.USETYPE_OVERLAY}.json") == 0o644


def test_a_signature_follows_the_umask(model_copy: Path, tmp_path: Path, cli: Any, umask_022: None) -> None:
    pytest.importorskip("cryptography")
    key = tmp_path / "author.key"
    assert cli("keygen", key).exit_code == 0
    assert mode(key) == 0o600  # the private key stays private
    result = cli("sign", model_copy, "--key", key)
    assert result.exit_code == 0, result.output
    assert mode(annotation(model_copy, keys.SIGNATURES)) == 0o644


def test_a_reproduction_verdict_follows_the_umask(
    trained_model: Any, tmp_path: Path, cli: Any, umask_022: None
) -> None:
    (tmp_path / "again").mkdir()
    result = cli("reproduce", trained_model.uri, "--output", tmp_path / "again", "--json")
    assert result.exit_code == 0, result.output
    [reproduced] = [p for p in (tmp_path / "again").iterdir() if not p.name.startswith(".")]
    assert mode(annotation(reproduced, keys.REPRODUCTION_RESULT)) == 0o644
    assert {oct(mode(p)) for p in reproduced.rglob("*") if p.is_file()} == {oct(0o644)}


def test_a_readme_written_into_a_dataset_follows_the_umask(digits_uri: str, umask_022: None) -> None:
    """reprodl writes every metadata file of an existing dataset (README, annotation) one way."""
    from train_fixtures import path_of

    from reprodl.store import open_dataset

    ds = open_dataset(digits_uri)
    ds._ds.put_readme("name: digits\ndescription: edited\n")  # the broker reprodl opened it with
    ds.put_annotation("note", "shared")
    readme = path_of(digits_uri) / "README.yml"
    assert "edited" in readme.read_text() and mode(readme) == 0o644
    [backup] = readme.parent.glob("README.yml-*")  # dtoolcore keeps the previous README
    assert mode(backup) == 0o644
    assert mode(annotation(digits_uri, "note")) == 0o644


def test_metadata_follows_a_stricter_umask_too(digits_uri: str) -> None:
    from reprodl.store import open_dataset

    old = os.umask(0o077)
    try:
        open_dataset(digits_uri).put_annotation("note", "private")
    finally:
        os.umask(old)
    assert mode(annotation(digits_uri, "note")) == 0o600


def test_the_storage_error_of_a_full_disk_names_the_file(digits_uri: str, full_disk_on: list[str]) -> None:
    from reprodl.store import open_dataset

    full_disk_on.append("note.json")
    with pytest.raises(StorageError, match=r"note.*No space left on device.*note\.json"):
        open_dataset(digits_uri).put_annotation("note", "x")
