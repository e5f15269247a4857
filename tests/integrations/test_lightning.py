"""Lightning: ``ReprodlCallback`` records a ``Trainer.fit`` and the model reproduces by re-execution.

A tiny LightningModule script (a DataModule over the digits TensorDataSet, SGD with StepLR,
gradient clipping and accumulation) is written to a real git repository on ``tmp_path``,
adopted with two changed lines, trained in a subprocess, and reproduced from its URI.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lightning", reason="Lightning is not installed: pip install 'reprodl[lightning]'")

import torch
from user_scripts import adopt, changed_lines, child_env, run_script, user_repo

pytest_plugins = ["train_fixtures"]

ORIGINAL = """\
import argparse

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from reprodl import TensorDataSet


class DigitsModule(L.LightningModule):
    def __init__(self, lr=0.05, hidden=32):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("valid_accuracy", (self.net(x).argmax(1) == y).float().mean())

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)
        return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)]


class DigitsData(L.LightningDataModule):
    def __init__(self, uri, batch_size=64):
        super().__init__()
        self.uri, self.batch_size = uri, batch_size

    def setup(self, stage):
        self.train_ds = TensorDataSet(self.uri, usetype="train")
        self.val_ds = TensorDataSet(self.uri, usetype="test")

    def train_dataloader(self):
        return DataLoader(self.train_ds, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.val_ds, batch_size=500)


parser = argparse.ArgumentParser()
parser.add_argument("--data", required=True)
parser.add_argument("--epochs", type=int, default=2)
parser.add_argument("--lr", type=float, default=0.05)
parser.add_argument("--seed", type=int, default=1)

if __name__ == "__main__":
    args = parser.parse_args()
    L.seed_everything(args.seed)
    trainer = L.Trainer(
        max_epochs=args.epochs,
        gradient_clip_val=1.0,
        accumulate_grad_batches=2,
        deterministic=True,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
    )
    trainer.fit(DigitsModule(lr=args.lr), datamodule=DigitsData(args.data))
"""

# The adoption, edit by edit: (original text, adopted text).
EDITS = [
    (
        "from reprodl import TensorDataSet\n",
        "from reprodl import TensorDataSet\nfrom reprodl.integrations.lightning import ReprodlCallback\n",
    ),
    (
        "        enable_progress_bar=False,\n",
        '        enable_progress_bar=False,\n        callbacks=[ReprodlCallback("models", "digits")],\n',
    ),
]


@pytest.fixture(scope="module")
def lightning_run(digits_split_master: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The adopted Lightning script trained once in a git repo (the adoption left uncommitted)."""
    repo = tmp_path_factory.mktemp("lightning-repo")
    user_repo(repo, {"train.py": ORIGINAL}, commit_message="the user's Lightning script")
    (repo / "models").mkdir()
    (repo / "train.py").write_text(adopt(ORIGINAL, EDITS))
    res = run_script(repo, "train.py", "--data", digits_split_master, "--epochs", "2")
    assert res.returncode == 0, res.stderr
    from reprodl.store import open_dataset

    return {"repo": repo, "uri": open_dataset(str(repo / "models" / "digits")).uri}


def test_the_lightning_script_adopts_reprodl_in_at_most_8_changed_lines() -> None:
    assert changed_lines(ORIGINAL, adopt(ORIGINAL, EDITS)) <= 8


def test_importing_reprodl_imports_no_lightning() -> None:
    code = "import sys, reprodl, reprodl.integrations; print('lightning' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=child_env())
    assert out.stdout.strip() == "False"


@pytest.mark.slow
def test_a_lightning_run_records_the_trainer_hparams_optimiser_seed_data_and_metrics(
    lightning_run: dict[str, object],
) -> None:
    from reprodl.modeldataset.read import load_record

    record = load_record(str(lightning_run["uri"]))
    t = record.training
    trainer = t.params["trainer"]
    assert (trainer["max_epochs"], trainer["precision"], trainer["deterministic"]) == (2, "32-true", True)
    assert (trainer["gradient_clip_val"], trainer["accumulate_grad_batches"]) == (1.0, 2)
    assert t.params["hparams"] == {"lr": 0.05, "hidden": 32} == record.architecture.init_params
    assert (t.optimizer.class_name, t.optimizer.param_groups[0]["momentum"]) == ("SGD", 0.9)
    assert t.scheduler is not None and t.scheduler.class_name == "StepLR"
    assert t.params["lr_schedulers"][0]["interval"] == "epoch"
    assert (t.loss.module, t.loss.class_name) == ("__main__", "DigitsModule.training_step")
    assert t.seeds.seed == 1 and t.batch_size == 64 and t.shuffle
    assert len(set(t.data_order_digests)) == 2 and t.data_order_not_recorded is None  # the DataModule's order
    assert t.optimizer_steps == 2 * 12  # 23 batches a epoch, one step per 2 (the last alone)
    assert [(d.role, d.source, d.n_items) for d in record.data] == [("train", "dtool", 1438), ("valid", "dtool", 359)]
    assert [e["epoch"] for e in record.results.logged] == [1, 2]
    assert {"train_loss", "valid_accuracy"} <= set(record.results.logged[-1])
    from reprodl.provenance import summary_lines

    assert any("valid accuracy" in line for line in summary_lines(record))  # no valid loss was logged
    run = record.code.run
    assert run is not None and (run.entry_script, run.argv[-2:], run.seed) == ("train.py", ["--epochs", "2"], 1)


@pytest.mark.slow
def test_a_lightning_run_reproduces_identically_by_re_execution(
    lightning_run: dict[str, object], tmp_path: Path
) -> None:
    from reprodl import reproduce
    from reprodl.modeldataset.read import load_record

    lines: list[str] = []
    (tmp_path / "out").mkdir()
    report = reproduce(str(lightning_run["uri"]), trust_code=True, output=str(tmp_path / "out"), on_output=lines.append)
    assert report.verdict == "identical", report.reasons
    assert report.data_order_matches
    assert any("max_epochs=2" in line for line in lines)  # Lightning's own output, streamed
    new = load_record(str(report.reproduction_uri))
    assert new.lineage.reproduces is not None and new.lineage.reproduces.uri == lightning_run["uri"]
    assert new.training.optimizer_steps == 24


# --- in process ------------------------------------------------------------------------------
def _module_and_data(*, fail: bool = False):
    import lightning as L

    class Tiny(L.LightningModule):
        def __init__(self, lr: float = 0.1) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.hparams["_instantiator"] = "lightning.pytorch.cli.instantiate_module"  # as LightningCLI adds
            self.layer = torch.nn.Linear(4, 2)
            self.loss_fn = torch.nn.CrossEntropyLoss()

        def training_step(self, batch, batch_idx):
            if fail:
                raise RuntimeError("boom")
            x, y = batch
            loss = self.loss_fn(self.layer(x), y)
            self.log("train_loss", loss, on_step=False, on_epoch=True)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(32, 4, generator=g), torch.randint(0, 2, (32,), generator=g))
    return Tiny(), torch.utils.data.DataLoader(data, batch_size=8)


def _trainer(callback):
    import lightning as L

    return L.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
    )


def test_internal_hparams_are_dropped_and_in_memory_data_is_hashed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lightning as L

    from reprodl.integrations.lightning import ReprodlCallback

    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)  # restored after the test
    L.seed_everything(5, verbose=False)
    model, loader = _module_and_data()
    callback = ReprodlCallback(str(tmp_path), "tiny", params={"note": "in process"})
    _trainer(callback).fit(model, loader)
    assert callback.uri is not None and callback.record is not None
    t = callback.record.training
    assert t.params["hparams"] == {"lr": 0.1} and t.params["note"] == "in process"
    assert (t.loss.class_name, t.seeds.seed, t.optimizer_steps, t.epochs) == ("CrossEntropyLoss", 5, 4, 1)
    (ref,) = callback.record.data
    assert (ref.role, ref.source, ref.n_items) == ("train", "in-memory", 32)


def test_a_fit_without_seed_everything_is_refused_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from reprodl.errors import ParametersError
    from reprodl.integrations.lightning import ReprodlCallback

    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    model, loader = _module_and_data()
    with pytest.raises(ParametersError, match=r"seed_everything"):
        _trainer(ReprodlCallback(str(tmp_path), "tiny")).fit(model, loader)
    assert list(tmp_path.iterdir()) == []


def test_a_fit_that_raises_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import lightning as L

    from reprodl.integrations.lightning import ReprodlCallback

    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    L.seed_everything(5, verbose=False)
    model, loader = _module_and_data(fail=True)
    callback = ReprodlCallback(str(tmp_path), "tiny")
    with pytest.raises(RuntimeError, match="boom"):
        _trainer(callback).fit(model, loader)
    assert callback.uri is None and list(tmp_path.iterdir()) == []
