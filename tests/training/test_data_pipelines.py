"""The data pipelines users have, recorded by the run API and reproduced.

An ``IterableDataset`` (its order recorded as a digest per pass over the samples it yields), a
custom ``BatchSampler`` (tapped as it runs), ``Subset``/``ConcatDataset`` of reprodl datasets
(recorded down to the base dataset, verified there), relative data paths (checked when given,
recorded relative to the working directory), ``reprodl reproduce --data ROLE=URI`` (another copy
of the same dataset), and the friction-free forms: ``run = start_run(...)`` ... ``run.finish()``,
a missing base directory created, a unique default name.

The script below is written to a real git repository on ``tmp_path`` with a 40-sample
TensorDataSet in ``data/tiny`` (ignored by git) and trained in a child process; its ``--shape``
picks the pipeline.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from user_scripts import child_env, run_script, user_repo

pytest_plugins = ["train_fixtures"]

SCRIPT = """\
import argparse

import torch
from torch.utils.data import BatchSampler, ConcatDataset, IterableDataset, RandomSampler, Subset

import reprodl
from reprodl import TensorDataSet


class Stream(IterableDataset):
    \"\"\"The base dataset's samples in an order drawn from the dataset's own seeded generator.\"\"\"

    def __init__(self, base):
        self.base = base

    def __iter__(self):
        g = torch.Generator().manual_seed(0)
        for i in torch.randperm(len(self.base), generator=g).tolist():
            yield self.base[i]


parser = argparse.ArgumentParser()
parser.add_argument("--data", default="data/tiny")
parser.add_argument("--shape", default="subset")
args = parser.parse_args()

run = reprodl.start_run("models", "tiny", seed=1, params=vars(args))
base = TensorDataSet(args.data)
model = torch.nn.Linear(4, 2)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
run.watch(model, optimizer, loss=torch.nn.CrossEntropyLoss())
if args.shape == "subset":
    data = run.use(ConcatDataset([Subset(base, list(range(0, 40, 2))), Subset(base, [1, 3, 5, 7])]))
    loader = run.loader(data, batch_size=4, shuffle=True)
elif args.shape == "batch_sampler":
    g = torch.Generator().manual_seed(5)
    loader = run.loader(base, batch_sampler=BatchSampler(RandomSampler(base, generator=g), 6, drop_last=False))
else:
    run.use(base)  # the stream reads this reprodl dataset: recorded, checked, and found again by reproduce
    loader = run.loader(Stream(base), batch_size=5)
for epoch in range(1, 3):
    for x, y in loader:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x.flatten(1).float()), y)
        loss.backward()
        optimizer.step()
    run.log(epoch=epoch, train_loss=loss)
run.save(model)
run.finish()
print("model written to", run.uri)
"""


def _tiny(base: Path, name: str = "tiny", seed: int = 0) -> str:
    """A 40-sample TensorDataSet of 4 float features and 2 classes at ``base/name``."""
    from reprodl.data.creators import create_from_arrays

    base.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    return create_from_arrays(rng.normal(size=(40, 4)).astype(np.float32), np.arange(40) % 2, str(base), name)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A git repository with the script committed and ``data/tiny`` beside it (not in git)."""
    repo = user_repo(tmp_path / "proj", {"train.py": SCRIPT}, commit_message="train", gitignore="data/\nmodels/\n")
    _tiny(repo / "data")
    return repo


def _train(repo: Path, *args: str) -> dict[str, Any]:
    result = run_script(repo, "train.py", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((repo / "models" / "tiny" / "data" / "provenance.json").read_text())


def _reproduce(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "reprodl.cli", "reproduce", "models/tiny", "--trust-code", *args]
    return subprocess.run(command, cwd=cwd, env=child_env(), capture_output=True, text=True, timeout=600)


def _identical(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Verdict: identical" in result.stdout


# --- in the training process ---------------------------------------------------------------
def _train_here(run: Any, data: Any, **loader_kw: Any) -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    run.watch(model, optimizer, loss=torch.nn.CrossEntropyLoss())
    for x, y in run.loader(data, batch_size=4, **loader_kw):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x.flatten(1).float()), y).backward()
        optimizer.step()
    run.log(epoch=1, train_loss=0.5)
    run.save(model)
    return model


def test_subset_and_concat_are_recorded_and_verified_down_to_the_base_dataset(tmp_path: Path, cli: Any) -> None:
    from train_fixtures import flip_byte, item_file

    import reprodl
    from reprodl import TensorDataSet
    from reprodl.training.order import order_digest

    uri = _tiny(tmp_path / "data")
    base = TensorDataSet(uri)
    picked = [0, 2, 4, 6, 8, 10, 39]
    data = torch.utils.data.ConcatDataset([torch.utils.data.Subset(base, picked), base])
    with reprodl.start_run(str(tmp_path / "models"), "views", seed=2) as run:
        _train_here(run, data, shuffle=True)
    assert run.record is not None and run.uri is not None
    subset_ref, whole_ref = run.record.data
    for ref in (subset_ref, whole_ref):
        assert (ref.source, ref.uuid, ref.manifest_digest) == ("dtool", base.uuid, base.dataset.manifest_digest())
    assert [v.kind for v in subset_ref.views] == ["concat", "subset"]
    assert subset_ref.views[1].indices_digest == order_digest(picked) and subset_ref.views[1].n_indices == 7
    assert [(v.kind, v.part, v.parts) for v in whole_ref.views] == [("concat", 1, 2)]
    assert len(run.record.training.data_order_digests) == 1

    ok = cli("verify", run.uri, "--data", "--allow", "torch.nn.modules.linear")
    assert ok.exit_code == 0, ok.output
    assert "All checks passed" in ok.output and "tiny" in ok.output
    flip_byte(item_file(uri, "data.npy"))
    failed = cli("verify", run.uri, "--data", "--allow", "torch.nn.modules.linear")
    assert failed.exit_code == 1
    assert "Verification FAILED" in failed.output and "All checks passed" not in failed.output
    assert "train data tiny" in failed.output


def test_verify_data_fails_for_unverified_data_and_says_why(tmp_path: Path, cli: Any) -> None:
    import reprodl

    class Squares(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 16

        def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
            return torch.full((4,), float(i)), i % 2

    with reprodl.start_run(str(tmp_path), "squares") as run:
        _train_here(run, Squares())
    assert run.uri is not None
    result = cli("verify", run.uri, "--data", "--allow", "torch.nn.modules.linear")
    assert result.exit_code == 1
    assert "All checks passed" not in result.output
    assert "unverified data" in result.output and "Squares" in result.output


def test_an_iterable_dataset_cannot_be_shuffled_by_the_run(tmp_path: Path) -> None:
    import reprodl
    from reprodl.errors import ParametersError

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            yield from ((torch.zeros(4), 0) for _ in range(8))

    with pytest.raises(ParametersError, match=r"IterableDataset \(.*Stream\): its samples come in its own order"):
        with reprodl.start_run(str(tmp_path), "stream") as run:
            run.loader(Stream(), batch_size=2, shuffle=True)
    assert list(tmp_path.iterdir()) == []


def test_a_missing_relative_data_path_fails_at_training_time_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import reprodl
    from reprodl.errors import ParametersError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ParametersError, match=r"train data path 'data/elsewhere' does not exist.*working directory"):
        with reprodl.start_run("models", "missing") as run:
            run.use("data/elsewhere")
    assert not (tmp_path / "models" / "missing").exists()


def test_a_relative_data_path_is_recorded_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import reprodl

    _tiny(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    with reprodl.start_run("models", "relative") as run:
        _train_here(run, run.use("data/tiny"))
    assert run.record is not None
    assert run.record.data[0].path == "data/tiny"


def test_start_run_and_finish_without_a_with_block_write_the_same_record(tmp_path: Path) -> None:
    import reprodl

    uri = _tiny(tmp_path / "data")
    with reprodl.start_run(str(tmp_path / "a"), "same", seed=4) as in_block:
        _train_here(in_block, reprodl.TensorDataSet(uri), shuffle=True)
    kept = reprodl.start_run(str(tmp_path / "b"), "same", seed=4)
    _train_here(kept, reprodl.TensorDataSet(uri), shuffle=True)
    assert kept.finish() == kept.uri and kept.uri is not None
    a, b = in_block.record, kept.record
    assert a is not None and b is not None
    assert a.results.weights_sha256 == b.results.weights_sha256
    assert a.training.data_order_digests == b.training.data_order_digests
    assert a.training.optimizer_steps == b.training.optimizer_steps == 10
    assert [d.model_dump() for d in a.data] == [d.model_dump() for d in b.data]
    with pytest.raises(reprodl.ReprodlError, match="finished already"):
        kept.finish()


def test_a_missing_base_directory_is_created_and_unnamed_runs_get_distinct_names(tmp_path: Path) -> None:
    import reprodl

    base = tmp_path / "not" / "yet"
    names = []
    for _ in range(2):
        run = reprodl.start_run(str(base), seed=1)
        _train_here(run, torch.utils.data.TensorDataset(torch.randn(8, 4), torch.arange(8) % 2))
        run.finish()
        assert run.record is not None
        names.append(run.record.model_name)
    assert len(set(names)) == 2
    assert sorted(p.name for p in base.iterdir()) == sorted(names)


def test_reproduce_data_refuses_a_dataset_that_is_not_the_recorded_one(tmp_path: Path, cli: Any) -> None:
    import reprodl

    uri = _tiny(tmp_path / "data")
    other = _tiny(tmp_path / "other", seed=1)
    with reprodl.start_run(str(tmp_path / "models"), "refuse") as run:
        _train_here(run, reprodl.TensorDataSet(uri))
    assert run.uri is not None and run.record is not None
    recorded_uuid = run.record.data[0].uuid
    result = cli("reproduce", run.uri, "--trust-code", "--data", f"train={other}")
    assert result.exit_code != 0
    message = " ".join(result.output.split())
    assert "--data train=" in message and recorded_uuid in message
    assert reprodl.TensorDataSet(other).uuid in message
    bad = cli("reproduce", run.uri, "--trust-code", "--data", "training=somewhere")
    assert bad.exit_code == 2 and "ROLE=URI" in bad.output


# --- re-executed ---------------------------------------------------------------------------
def test_an_iterable_dataset_records_its_samples_order_and_reproduces_identical(project: Path) -> None:
    record = _train(project, "--shape", "stream")
    base, ref = record["data"]
    assert base["source"] == "dtool" and ref["source"] == "unverified" and ref["stream"] is True
    digests = record["training"]["data_order_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]  # the stream yields the same samples each pass
    assert record["training"]["optimizer_steps"] == 16
    result = _reproduce(project)
    _identical(result)
    assert "unverified data" in result.stdout


def test_a_custom_batch_sampler_is_recorded_and_reproduces_identical(project: Path) -> None:
    record = _train(project, "--shape", "batch_sampler")
    digests = record["training"]["data_order_digests"]
    assert len(digests) == 2 and digests[0] != digests[1]  # the sampler's generator moved on
    assert record["training"]["batch_size"] == 6 and record["training"]["optimizer_steps"] == 14
    _identical(_reproduce(project))


def test_subset_and_concat_of_reprodl_datasets_reproduce_identical(project: Path) -> None:
    record = _train(project, "--shape", "subset")
    assert [r["source"] for r in record["data"]] == ["dtool", "dtool"]
    assert [r["path"] for r in record["data"]] == ["data/tiny", "data/tiny"]
    _identical(_reproduce(project))


def test_a_moved_project_reproduces_from_its_relative_data_path(project: Path, tmp_path: Path) -> None:
    _train(project, "--shape", "subset")
    moved = tmp_path / "moved"
    shutil.move(project, moved)  # the recorded URI of data/tiny is gone; its relative path is not
    _identical(_reproduce(moved))


def test_reproduce_reads_the_training_data_from_a_copy(project: Path, tmp_path: Path, cli: Any) -> None:
    record = _train(project, "--shape", "subset")
    copied = cli("dataset", "copy", str(project / "data" / "tiny"), str(tmp_path))
    assert copied.exit_code == 0, copied.output
    copy = tmp_path / "tiny"
    shutil.move(project / "data" / "tiny", tmp_path / "gone")  # only the copy is left to read
    result = _reproduce(project, "--data", f"train={copy}", "--json")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["verdict"] == "identical"
    (check,) = report["data_checks"]
    assert check["ok"] and check["uri"].endswith(f"{tmp_path.name}/tiny")  # the copy was checked and read
    assert json.loads((copy / ".dtool" / "dtool").read_text())["uuid"] == record["data"][0]["uuid"]


def test_a_dataset_redirected_by_reproduce_is_read_from_the_copy_with_the_same_selection(tmp_path: Path) -> None:
    from reprodl import TensorDataSet
    from reprodl.store import copy_dataset
    from reprodl.training.datarefs import opened

    uri = _tiny(tmp_path / "data")
    (tmp_path / "copies").mkdir()
    copy = copy_dataset(uri, str(tmp_path / "copies"))
    given = torch.utils.data.Subset(TensorDataSet(uri), [0, 1])  # not a reprodl dataset itself: left as it is
    assert opened(given, "train", {uri: copy}) is given
    read = opened(TensorDataSet(uri), "train", {TensorDataSet(uri).uri: copy})
    assert read.uri == copy and len(read) == 40
    assert opened(uri, "train", {TensorDataSet(uri).uri: copy}).uri == copy
