"""A CIFAR-style custom loop adopts reprodl: OneCycleLR per step, augmentation, accumulation.

The script (a small residual net, label-smoothed cross-entropy, SGD with Nesterov momentum,
OneCycleLR stepped per optimiser step, gradient accumulation, random flips and pad-and-crop
drawn from its own seeded generator) is written to a real git repository on ``tmp_path`` and
committed; the adoption is committed too, so the tracked code comes from the source snapshot
alone. Its augmentation lives in ``augment.py``, which the user never committed (an untracked
file, stored with the model). The model then reproduces from its URI by re-executing that code.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from user_scripts import adopt, changed_lines, child_env, git, run_script, user_repo

pytest_plugins = ["train_fixtures"]

AUGMENT = """\
import torch
import torch.nn.functional as F


def augment(x, generator, pad=1):
    \"\"\"Random horizontal flips and pad-and-crop of a batch (N, C, H, W), drawn from generator.\"\"\"
    n, _, h, w = x.shape
    flip = torch.rand(n, generator=generator) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).tolist()
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).tolist()
    return torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])
"""

ORIGINAL = """\
import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim.lr_scheduler import OneCycleLR
from torch.utils.data import DataLoader

from augment import augment
from reprodl import TensorDataSet


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(x + self.bn2(self.conv2(out)))


class SmallResNet(nn.Module):
    def __init__(self, width=16, n_classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.block = Block(width)
        self.head = nn.Linear(width, n_classes)

    def forward(self, x):
        x = self.block(self.stem(x))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


def train_epoch(args, model, loader, criterion, optimizer, scheduler, generator):
    model.train()
    total, seen = 0.0, 0
    optimizer.zero_grad()
    for i, (inputs, targets) in enumerate(loader):
        inputs = augment(inputs, generator)
        loss = criterion(model(inputs), targets) / args.accum
        loss.backward()
        total += loss.item() * args.accum * len(targets)
        seen += len(targets)
        if (i + 1) % args.accum == 0:
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
    return total / seen


def evaluate(model, loader):
    model.eval()
    correct = 0
    with torch.no_grad():
        for inputs, targets in loader:
            correct += (model(inputs).argmax(1) == targets).sum().item()
    return correct / len(loader.dataset)


def main(args):
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    train_ds = TensorDataSet(args.data, usetype="train")
    test_ds = TensorDataSet(args.data, usetype="test")
    train_loader = DataLoader(train_ds, batch_size=args.batch_size, shuffle=True, drop_last=True)
    test_loader = DataLoader(test_ds, batch_size=256)
    model = SmallResNet(args.width)
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    total_steps = args.epochs * (len(train_loader) // args.accum)
    scheduler = OneCycleLR(optimizer, max_lr=args.lr, total_steps=total_steps)
    for epoch in range(1, args.epochs + 1):
        loss = train_epoch(args, model, train_loader, criterion, optimizer, scheduler, generator)
        acc = evaluate(model, test_loader)
        print(f"epoch {epoch}: loss {loss:.4f} accuracy {acc:.4f}", flush=True)
    torch.save(model.state_dict(), args.out)


parser = argparse.ArgumentParser(description="digits, CIFAR-style")
parser.add_argument("--data", required=True)
parser.add_argument("--batch-size", type=int, default=32)
parser.add_argument("--accum", type=int, default=2)
parser.add_argument("--epochs", type=int, default=2)
parser.add_argument("--lr", type=float, default=0.2)
parser.add_argument("--width", type=int, default=16)
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--out", default="resnet.pt")

if __name__ == "__main__":
    args = parser.parse_args()
    main(args)
"""

# The adoption, edit by edit: (original text, adopted text).
EDITS = [
    ("import argparse\n", "import argparse\nimport reprodl\n"),
    (
        '    train_ds = TensorDataSet(args.data, usetype="train")\n',
        '    train_ds = run.use(TensorDataSet(args.data, usetype="train"))\n',
    ),
    (
        "    train_loader = DataLoader(train_ds, batch_size=args.batch_size, shuffle=True, drop_last=True)\n",
        "    train_loader = run.loader(train_ds, batch_size=args.batch_size, shuffle=True, drop_last=True)\n",
    ),
    (
        "    scheduler = OneCycleLR(optimizer, max_lr=args.lr, total_steps=total_steps)\n",
        "    scheduler = OneCycleLR(optimizer, max_lr=args.lr, total_steps=total_steps)\n"
        "    run.watch(model, optimizer, scheduler=scheduler, loss=criterion)\n",
    ),
    (
        '        print(f"epoch {epoch}: loss {loss:.4f} accuracy {acc:.4f}", flush=True)\n',
        '        print(f"epoch {epoch}: loss {loss:.4f} accuracy {acc:.4f}", flush=True)\n'
        "        run.log(epoch=epoch, train_loss=loss, valid_accuracy=acc)\n",
    ),
    ("    torch.save(model.state_dict(), args.out)\n", "    run.save(model)\n"),
    (
        "    main(args)\n",
        '    with reprodl.start_run("models", "resnet", seed=args.seed, params=vars(args)) as run:\n'
        "        main(args)\n",
    ),
]

EPOCHS, BATCHES_PER_EPOCH, ACCUM = 2, 1438 // 32, 2  # drop_last: 44 full batches of 32


def _train(repo: Path, data: str, script: str = "train.py") -> subprocess.CompletedProcess[str]:
    return run_script(repo, script, "--data", data, "--epochs", str(EPOCHS))


@pytest.fixture(scope="module")
def loop_run(digits_split_master: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The adopted loop trained once: both versions committed, ``augment.py`` never committed.

    The data lie inside the repository (git-ignored) and are named by a relative path, as
    most scripts name them: the re-execution in a temporary copy must still find them.
    """
    from reprodl.store import local_path, open_dataset

    repo = tmp_path_factory.mktemp("cifar-style-repo")
    ignored = "data/\nmodels/\n*.pt\n__pycache__/\n"
    user_repo(repo, {"train.py": ORIGINAL}, commit_message="the user's loop", gitignore=ignored)
    (repo / "models").mkdir()
    data = local_path(digits_split_master)
    assert data is not None
    shutil.copytree(data, repo / "data" / "digits")  # named relatively: --data data/digits (git-ignored)
    (repo / "train.py").write_text(adopt(ORIGINAL, EDITS))
    git(repo, "commit", "-q", "-am", "record the loop with reprodl")
    (repo / "augment.py").write_text(AUGMENT)  # untracked
    res = _train(repo, "data/digits")
    assert res.returncode == 0, res.stderr
    uri = open_dataset(str(repo / "models" / "resnet")).uri
    return {"repo": repo, "uri": uri, "stdout": res.stdout, "data": digits_split_master}


def test_the_cifar_style_loop_adopts_reprodl_in_at_most_8_changed_lines() -> None:
    assert changed_lines(ORIGINAL, adopt(ORIGINAL, EDITS)) <= 8


@pytest.mark.slow
def test_the_original_loop_is_a_working_script(loop_run: dict[str, object], tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(ORIGINAL)
    (tmp_path / "augment.py").write_text(AUGMENT)
    res = _train(tmp_path, str(loop_run["data"]))
    assert res.returncode == 0, res.stderr
    assert "epoch 2:" in res.stdout and (tmp_path / "resnet.pt").is_file()


@pytest.mark.slow
def test_the_loop_records_accumulated_steps_the_per_step_scheduler_and_the_untracked_augmentation(
    loop_run: dict[str, object],
) -> None:
    from reprodl.modeldataset.read import load_record

    record = load_record(str(loop_run["uri"]))
    run = record.code.run
    assert run is not None and (run.entry_script, run.working_directory, run.seed) == ("train.py", ".", 0)
    assert record.training.optimizer_steps == EPOCHS * BATCHES_PER_EPOCH // ACCUM  # one step per 2 batches
    assert len(record.training.data_order_digests) == EPOCHS
    assert record.training.params["accum"] == ACCUM and record.training.params["data"] == "data/digits"
    scheduler = record.training.scheduler
    assert scheduler is not None and scheduler.class_name == "OneCycleLR"
    assert scheduler.args["total_steps"] == EPOCHS * BATCHES_PER_EPOCH // ACCUM
    assert record.training.optimizer.class_name == "SGD"
    assert record.training.loss.class_name == "CrossEntropyLoss"
    assert record.training.loss.args["label_smoothing"] == 0.1
    assert [e["epoch"] for e in record.results.logged] == [1, 2]
    git = record.code.git
    assert git is not None and not git.patch_item  # the adoption was committed: the snapshot alone
    assert record.code.snapshot is not None and record.code.snapshot.item
    assert any(item.endswith("augment.py") for item in git.untracked_items)


@pytest.mark.slow
def test_the_cifar_style_loop_reproduces_identically_by_re_execution(loop_run: dict[str, object]) -> None:
    from reprodl import reproduce

    lines: list[str] = []
    report = reproduce(str(loop_run["uri"]), trust_code=True, on_output=lines.append)
    assert report.verdict == "identical", report.reasons
    assert report.code is not None and report.code.status == "re-executed"
    assert [line for line in lines if line.startswith("epoch")] == [
        line for line in str(loop_run["stdout"]).splitlines() if line.startswith("epoch")
    ]


@pytest.mark.slow
def test_edits_to_the_loop_and_to_an_untracked_file_after_training_do_not_change_what_reproduce_runs(
    loop_run: dict[str, object],
) -> None:
    from reprodl import reproduce

    repo = Path(str(loop_run["repo"]))
    script, helper = repo / "train.py", repo / "augment.py"
    before = {p: p.read_text() for p in (script, helper)}
    try:
        script.write_text(before[script].replace("/ args.accum", "/ (args.accum * 2)") + 'print("EDITED LOOP")\n')
        helper.write_text(before[helper].replace("< 0.5", "< 0.9") + 'print("EDITED AUGMENT")\n')
        lines: list[str] = []
        report = reproduce(str(loop_run["uri"]), trust_code=True, on_output=lines.append)
        assert report.verdict == "identical", report.reasons
        assert not any("EDITED" in line for line in lines)
    finally:
        for path, text in before.items():
            path.write_text(text)


@pytest.mark.slow
def test_reproduce_on_the_command_line_without_trust_code_runs_nothing_and_writes_nothing(
    loop_run: dict[str, object], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    models = Path(str(loop_run["repo"])) / "models"
    before = sorted(p.name for p in models.iterdir())
    env = {**child_env(), "TMPDIR": str(tmp_path)}  # any temporary copy of the code would land here
    res = subprocess.run(
        [sys.executable, "-c", "from reprodl.cli import main; main()", "reproduce", str(loop_run["uri"])]
        + ["--output", str(out)],
        env=env,
        stdin=subprocess.DEVNULL,  # no TTY: no prompt, a refusal
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode != 0
    assert "python train.py --data" in res.stderr and "--trust-code" in res.stderr
    assert "then re-training" not in res.stderr  # a refusal is not announced as a start
    assert "epoch 1:" not in res.stdout + res.stderr  # the script never ran
    assert list(out.iterdir()) == []
    assert sorted(p.name for p in models.iterdir()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.slow
def test_the_provenance_summary_shows_what_the_loop_logged_and_how_to_run_it_again(
    loop_run: dict[str, object], cli
) -> None:
    result = cli("provenance", str(loop_run["uri"]))
    assert result.exit_code == 0, result.output
    assert "Run again by: python train.py --data data/digits --epochs 2 (in ., seed 0)" in result.stdout
    assert "Epoch 2: train loss " in result.stdout and ", valid accuracy " in result.stdout
    assert "valid loss" not in result.stdout  # the loop did not log one


@pytest.mark.slow
def test_verify_runs_the_loops_record_through_the_trust_policy(loop_run: dict[str, object], cli) -> None:
    """A start_run record is no exception: its script's class is named as rebuilt only by re-execution."""
    result = cli("verify", str(loop_run["uri"]))
    assert result.exit_code == 0, result.output
    assert "is defined in the recorded script" in result.stdout
    assert "re-executed by reproduce (with --trust-code)" in result.stdout
