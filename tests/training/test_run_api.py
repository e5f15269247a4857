"""The run API (``reprodl.start_run``, reprodl.training.run) and reproduction by re-executing the recorded code.

An argparse MNIST-style script (functional ``F.nll_loss``, Adadelta, StepLR, gradient clipping,
a dry-run flag) is written to a real git repository on ``tmp_path``, adopted with a few changed
lines, trained in a subprocess, and reproduced from its URI alone.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from user_scripts import adopt, changed_lines, run_script, user_repo

pytest_plugins = ["train_fixtures"]

ORIGINAL = """\
import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
from torch.optim.lr_scheduler import StepLR
from torch.utils.data import DataLoader

from reprodl import TensorDataSet


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, 1)
        self.conv2 = nn.Conv2d(8, 16, 3, 1)
        self.dropout = nn.Dropout(0.25)
        self.fc1 = nn.Linear(64, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = self.dropout(torch.flatten(x, 1))
        return F.log_softmax(self.fc2(F.relu(self.fc1(x))), dim=1)


def train(args, model, train_loader, optimizer, epoch):
    model.train()
    for data, target in train_loader:
        optimizer.zero_grad()
        loss = F.nll_loss(model(data), target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        optimizer.step()
        if args.dry_run:
            break
    return loss.item()


def test(model, test_loader):
    model.eval()
    correct = 0
    with torch.no_grad():
        for data, target in test_loader:
            correct += (model(data).argmax(1) == target).sum().item()
    return correct / len(test_loader.dataset)


def main(args):
    torch.manual_seed(args.seed)
    train_ds = TensorDataSet(args.data, usetype="train")
    test_ds = TensorDataSet(args.data, usetype="test")
    train_loader = DataLoader(train_ds, batch_size=args.batch_size, shuffle=True)
    test_loader = DataLoader(test_ds, batch_size=args.test_batch_size)
    model = Net()
    optimizer = optim.Adadelta(model.parameters(), lr=args.lr)
    scheduler = StepLR(optimizer, step_size=1, gamma=args.gamma)
    for epoch in range(1, args.epochs + 1):
        loss = train(args, model, train_loader, optimizer, epoch)
        acc = test(model, test_loader)
        print(f"epoch {epoch}: loss {loss:.4f} accuracy {acc:.4f}", flush=True)
        scheduler.step()
    if args.save_model:
        torch.save(model.state_dict(), "mnist_cnn.pt")


parser = argparse.ArgumentParser(description="digits, MNIST-style")
parser.add_argument("--data", required=True)
parser.add_argument("--batch-size", type=int, default=64)
parser.add_argument("--test-batch-size", type=int, default=500)
parser.add_argument("--epochs", type=int, default=2)
parser.add_argument("--lr", type=float, default=1.0)
parser.add_argument("--gamma", type=float, default=0.7)
parser.add_argument("--clip", type=float, default=1.0)
parser.add_argument("--dry-run", action="store_true")
parser.add_argument("--seed", type=int, default=1)
parser.add_argument("--save-model", action="store_true")

if __name__ == "__main__":
    args = parser.parse_args()
    main(args)
"""

# The adoption, edit by edit: (original line, adopted line); None adds a line after the previous one.
EDITS = [
    ("import argparse\n", "import argparse\nimport reprodl\n"),
    (
        '    train_ds = TensorDataSet(args.data, usetype="train")\n',
        '    train_ds = run.use(TensorDataSet(args.data, usetype="train"))\n',
    ),
    (
        "    train_loader = DataLoader(train_ds, batch_size=args.batch_size, shuffle=True)\n",
        "    train_loader = run.loader(train_ds, batch_size=args.batch_size, shuffle=True)\n",
    ),
    (
        "    scheduler = StepLR(optimizer, step_size=1, gamma=args.gamma)\n",
        "    scheduler = StepLR(optimizer, step_size=1, gamma=args.gamma)\n"
        "    run.watch(model, optimizer, scheduler=scheduler, loss=F.nll_loss)\n",
    ),
    (
        "        scheduler.step()\n",
        "        run.log(epoch=epoch, train_loss=loss, valid_accuracy=acc)\n        scheduler.step()\n",
    ),
    ('        torch.save(model.state_dict(), "mnist_cnn.pt")\n', "        run.save(model)\n"),
    (
        "    main(args)\n",
        '    with reprodl.start_run("models", "mnist", seed=args.seed, params=vars(args)) as run:\n'
        "        main(args)\n",
    ),
]


@pytest.fixture(scope="module")
def script_run(digits_split_master: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The adopted script trained once in a git repo (the adoption left uncommitted: a patch)."""
    repo = user_repo(tmp_path_factory.mktemp("user-repo"), {"train.py": ORIGINAL}, commit_message="the user's script")
    (repo / "models").mkdir()
    (repo / "train.py").write_text(adopt(ORIGINAL, EDITS))
    res = run_script(repo, "train.py", "--data", digits_split_master, "--epochs", "2", "--save-model")
    assert res.returncode == 0, res.stderr
    from reprodl.store import open_dataset

    uri = open_dataset(str(repo / "models" / "mnist")).uri
    return {"repo": repo, "uri": uri, "stdout": res.stdout}


def test_the_mnist_style_script_adopts_reprodl_in_at_most_8_changed_lines() -> None:
    assert changed_lines(ORIGINAL, adopt(ORIGINAL, EDITS)) <= 8


@pytest.mark.slow
def test_a_script_run_records_how_to_run_it_again(script_run: dict[str, object]) -> None:
    from reprodl.modeldataset.read import load_record

    record = load_record(str(script_run["uri"]))
    run = record.code.run
    assert run is not None
    assert (run.entry_script, run.working_directory, run.seed) == ("train.py", ".", 1)
    assert run.argv[-3:] == ["--epochs", "2", "--save-model"]
    assert record.training.params["clip"] == 1.0 and record.training.params["dry_run"] is False
    assert record.training.optimizer.class_name == "Adadelta"
    assert (record.training.loss.module, record.training.loss.class_name) == ("torch.nn.functional", "nll_loss")
    assert record.training.scheduler is not None and record.training.scheduler.class_name == "StepLR"
    assert record.training.optimizer_steps == 2 * 23  # 1438 samples in batches of 64, two epochs
    assert len(record.training.data_order_digests) == 2
    assert [e["epoch"] for e in record.results.logged] == [1, 2]
    assert record.code.snapshot is not None and record.code.snapshot.item == "code/snapshot.tar"
    assert record.code.git is not None and record.code.git.patch_item  # the adoption, uncommitted


@pytest.mark.slow
def test_reproduce_re_executes_the_recorded_script_identically(script_run: dict[str, object], tmp_path: Path) -> None:
    from reprodl import reproduce
    from reprodl.modeldataset.read import load_record

    lines: list[str] = []
    (tmp_path / "out").mkdir()
    report = reproduce(str(script_run["uri"]), trust_code=True, output=str(tmp_path / "out"), on_output=lines.append)
    assert report.verdict == "identical", report.reasons
    assert any(line.startswith("epoch 2:") for line in lines)  # the script's own output, streamed
    new = load_record(str(report.reproduction_uri))
    assert new.lineage.reproduces is not None and new.lineage.reproduces.uri == script_run["uri"]
    assert new.training.optimizer_steps == 46
    assert report.divergence is not None and report.divergence.matched_to_end, report.divergence
    assert report.divergence.compared_steps == 46 and new.results.trace is not None
    from reprodl.modeldataset.read import load_trace
    from reprodl.store import open_dataset

    rows = load_trace(open_dataset(str(report.reproduction_uri)), new)
    assert rows is not None and rows["epoch"][0] == 1 and rows["batch"][0] == 1 and (rows["indices"] != 0).all()


@pytest.mark.slow
def test_an_edited_script_or_a_deleted_repository_does_not_change_what_reproduce_runs(
    script_run: dict[str, object], tmp_path: Path
) -> None:
    from reprodl import reproduce

    repo = Path(str(script_run["repo"]))
    moved = tmp_path / "moved-away"
    shutil.copytree(repo, moved)
    try:
        script = repo / "train.py"
        script.write_text(script.read_text().replace("lr=args.lr", "lr=args.lr * 2") + 'print("EDITED")\n')
        lines: list[str] = []
        edited = reproduce(str(script_run["uri"]), trust_code=True, on_output=lines.append)
        assert edited.verdict == "identical", edited.reasons
        assert "EDITED" not in lines
        shared = tmp_path / "shared" / "mnist"  # the model, copied away from its repository
        shutil.copytree(repo / "models" / "mnist", shared)
        shutil.rmtree(repo)
        gone = reproduce(str(shared), trust_code=True, on_output=lines.append)
        assert gone.verdict == "identical", gone.reasons
    finally:
        if repo.exists():
            shutil.rmtree(repo)
        shutil.copytree(moved, repo)


@pytest.mark.slow
def test_reproduce_without_trust_code_exits_non_zero_and_writes_nothing(
    script_run: dict[str, object], tmp_path: Path, cli
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    result = cli("reproduce", str(script_run["uri"]), "--output", str(out))
    assert result.exit_code != 0
    assert "train.py" in result.stderr and "--trust-code" in result.stderr
    assert list(out.iterdir()) == []


# --- the run API in process ------------------------------------------------------------------
def _tiny_training(run, data) -> torch.nn.Module:
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    run.watch(model, optimizer, loss=torch.nn.CrossEntropyLoss())
    for epoch in range(2):
        for x, y in run.loader(data, batch_size=8, shuffle=True):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
        run.log(epoch=epoch + 1, train_loss=loss)
    return model


def _arrays() -> torch.utils.data.TensorDataset:
    g = torch.Generator().manual_seed(0)
    return torch.utils.data.TensorDataset(torch.randn(32, 4, generator=g), torch.randint(0, 2, (32,), generator=g))


def test_in_memory_data_is_hashed_and_recorded(tmp_path: Path) -> None:
    import reprodl

    data = _arrays()
    with reprodl.start_run(str(tmp_path), "tiny", seed=3) as run:
        model = _tiny_training(run, data)
        run.save(model)
    assert run.uri is not None and run.record is not None
    (ref,) = run.record.data
    assert (ref.role, ref.source, ref.n_items) == ("train", "in-memory", 32)
    assert ref.manifest_digest.startswith("sha256:")
    assert run.record.training.optimizer_steps == 8
    assert run.record.training.seeds.seed == 3
    # an epoch's time is not measured by the run API: null, never a 0.0 that reads as measured
    assert [(m.epoch, m.wall_time_s) for m in run.record.results.history] == [(1, None), (2, None)]


def test_other_datasets_are_recorded_by_class_as_unverified_data(tmp_path: Path) -> None:
    import reprodl

    class Squares(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 16

        def __getitem__(self, i: int):
            return torch.full((4,), float(i)), i % 2

    with reprodl.start_run(str(tmp_path), "tiny") as run:
        run.save(_tiny_training(run, Squares()))
    assert run.record is not None
    (ref,) = run.record.data
    assert ref.source == "unverified" and ref.name.endswith("Squares")


def test_a_run_that_never_saves_writes_nothing_and_says_so(tmp_path: Path) -> None:
    import reprodl
    from reprodl.errors import ParametersError

    with pytest.raises(ParametersError, match=r"without run.save\(model\)"):
        with reprodl.start_run(str(tmp_path), "tiny") as run:
            _tiny_training(run, _arrays())
    assert list(tmp_path.iterdir()) == []


def test_a_run_that_raises_writes_nothing(tmp_path: Path) -> None:
    import reprodl

    with pytest.raises(RuntimeError, match="boom") as info:
        with reprodl.start_run(str(tmp_path), "tiny") as run:
            run.save(_tiny_training(run, _arrays()))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    assert "no model dataset was written" in "".join(getattr(info.value, "__notes__", []))


def test_a_run_that_raises_says_so_on_python_3_10_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Python 3.10 has no BaseException.add_note: the note goes into the message and __notes__."""
    import reprodl
    import reprodl.errors

    monkeypatch.setattr(reprodl.errors, "NATIVE_NOTES", False)  # as on 3.10
    with pytest.raises(RuntimeError, match="boom") as info:
        with reprodl.start_run(str(tmp_path), "tiny") as run:
            run.save(_tiny_training(run, _arrays()))
            raise RuntimeError("boom")
    assert str(info.value) == "boom\nreprodl: the run 'tiny' raised, so no model dataset was written"
    assert info.value.__notes__ == ["reprodl: the run 'tiny' raised, so no model dataset was written"]
    key_error = KeyError("k")  # its message is repr(args[0]): only __notes__ takes the note
    reprodl.errors.add_note(key_error, "a note")
    assert (key_error.args, key_error.__notes__) == (("k",), ["a note"])


def test_start_run_seeds_python_numpy_and_torch(tmp_path: Path) -> None:
    import random

    import reprodl

    draws = []
    for _ in range(2):
        with pytest.raises(reprodl.ReprodlError):
            with reprodl.start_run(str(tmp_path), "seeded", seed=7):
                draws.append((random.random(), float(np.random.rand()), float(torch.rand(()))))
    assert draws[0] == draws[1]


def test_a_run_that_fails_while_starting_leaves_no_dataset(tmp_path, monkeypatch):
    from reprodl.training import run as run_module

    def broken_capture(self, workdir):
        raise RuntimeError("capture failed")

    monkeypatch.setattr(run_module.Run, "_capture", broken_capture)
    (tmp_path / "models").mkdir()
    with pytest.raises(RuntimeError, match="capture failed"):
        with run_module.start_run(str(tmp_path / "models"), "never"):
            pass  # pragma: no cover - the run does not start
    assert list((tmp_path / "models").iterdir()) == []


PROFILED = """\
import torch

import reprodl


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(x)


def main():
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(32, 4, generator=g), torch.randint(0, 2, (32,), generator=g))
    with reprodl.start_run("models", "profiled", seed=0) as run:
        model = Net()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        run.watch(model, optimizer, loss=torch.nn.CrossEntropyLoss())
        for x, y in run.loader(data, batch_size=8, shuffle=True):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
        run.log(epoch=1, train_loss=loss)
        run.save(model)


if __name__ == "__main__":
    main()
"""


@pytest.mark.slow
def test_a_script_run_under_cprofile_records_the_script_not_the_profiler(tmp_path: Path, cli) -> None:
    """``python -m cProfile train.py``: sys.modules["__main__"] is cProfile; the record names train.py."""
    import subprocess
    import sys

    from user_scripts import child_env

    from reprodl.modeldataset.read import read_record
    from reprodl.store import open_dataset

    repo = user_repo(
        tmp_path / "repo", {"train.py": PROFILED}, commit_message="a script", gitignore="models/\n*.prof\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "cProfile", "-o", "run.prof", "train.py"],
        cwd=repo,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    record = read_record(open_dataset(str(repo / "models" / "profiled")))
    assert record.code.entry_script == str(repo / "train.py")
    assert record.code.git is not None and record.code.git.root == str(repo)
    run = record.code.run
    assert run is not None and run.module is None and run.entry_script == "train.py" and run.argv == []
    result = cli("reproduce", str(repo / "models" / "profiled"), "--trust-code", "-q")
    assert result.exit_code == 0 and "Verdict: identical" in result.output, result.output[-3000:]
