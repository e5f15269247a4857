"""One recording core (issue 18, item 1): the built-in trainer, ``start_run`` and the Lightning
callback record through one :class:`reprodl.training.recorder.Recorder`.

The same training made three ways gives the same seed plan, the same order digests and the same
step trace; every saved model's weights are compared by ``reproduce`` (a GAN whose discriminator
alone was nudged after the last step differs, naming it); the trace columns of models watched
without ``name=`` carry the names ``run.save`` gave them; a Lightning ``Subset`` of a reprodl
dataset is recorded with its indices.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from user_scripts import child_env, user_repo

import reprodl
from reprodl.modeldataset.read import load_record, load_trace
from reprodl.store import open_dataset
from reprodl.training.order import order_digest
from reprodl.training.seeding import SeedPlan

pytest_plugins = ["train_fixtures"]

# The trace's columns that depend only on the training (the loss is known to the trainer alone).
STATE_COLUMNS = ("step", "epoch", "batch", "indices", "inputs", "optimizer", "digest")


def _trace(uri: str) -> np.ndarray:
    ds = open_dataset(uri)
    rows = load_trace(ds, load_record(uri))
    assert rows is not None
    return rows


def _own_loop(base: Path, data_uri: str, *, epochs: int, batch_size: int) -> Any:
    """The trainer's training as a user's own loop under start_run: same model, data, seed and optimiser."""
    from train_fixtures import TinyNet

    run = reprodl.start_run(str(base), "own-loop", seed=0)
    train_ds = run.use(reprodl.TensorDataSet(data_uri, usetype="train"))
    torch.manual_seed(0)
    net = TinyNet()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    run.watch(net, opt, loss=nn.NLLLoss())
    loader = run.loader(train_ds, batch_size=batch_size, shuffle=True)
    for epoch in range(1, epochs + 1):
        for x, y in loader:
            opt.zero_grad()
            loss = F.nll_loss(net(x), y)
            loss.backward()
            opt.step()
        run.log(epoch=epoch, train_loss=loss.item())
    run.save(net)
    run.finish()
    return run


def test_the_trainer_and_a_start_run_loop_record_the_same_seeds_order_trace_and_weights(
    digits_split_master: str, tmp_path: Path
) -> None:
    from train_fixtures import TinyNet, train_digits

    torch.manual_seed(0)
    uri, trainer = train_digits(
        tmp_path, "trainer", digits_split_master, valid=False, model=TinyNet(), n_epochs=2, batch_size=256
    )
    run = _own_loop(tmp_path / "run", digits_split_master, epochs=2, batch_size=256)
    own = run.record
    assert own.training.seeds == trainer.training.seeds == SeedPlan(0).record()
    assert len(trainer.training.data_order_digests) == 2
    assert own.training.data_order_digests == trainer.training.data_order_digests
    g = torch.Generator().manual_seed(SeedPlan(0).epoch_order_seed(0))
    assert trainer.training.data_order_digests[0] == order_digest(torch.randperm(1438, generator=g))
    assert own.training.optimizer_steps == trainer.training.optimizer_steps == 2 * 6
    assert own.results.trace.tensors == trainer.results.trace.tensors == ["fc.weight", "fc.bias"]
    a, b = _trace(uri), _trace(run.uri)
    for column in STATE_COLUMNS:
        assert np.array_equal(a[column], b[column]), column
    assert np.isfinite(a["loss"]).all()  # the trainer knows each step's loss; the user's loop did not say
    assert own.results.weights_sha256 == trainer.results.weights_sha256
    # The trainer's record names its one model and optimiser, with the hyperparameters as applied.
    (model,) = trainer.models
    (opt,) = trainer.training.optimizers
    assert (model.name, opt.name, opt.model, model.steps, opt.steps) == ("model", "model", "model", 12, 12)
    assert [(c.step, c.values["lr"]) for c in opt.applied] == [(1, 0.05)]


def test_a_lightning_fit_and_a_start_run_loop_record_the_same_seeds_order_and_trace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    L = pytest.importorskip("lightning")
    from reprodl.integrations.lightning import ReprodlCallback

    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(32, 4, generator=g), torch.randint(0, 2, (32,), generator=g))

    class Tiny(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(4, 2)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return F.cross_entropy(self.layer(x), y)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)  # restored after the test
    L.seed_everything(5, verbose=False)
    callback = ReprodlCallback(str(tmp_path / "lightning"), "tiny")
    trainer = L.Trainer(
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
    )
    trainer.fit(Tiny(), torch.utils.data.DataLoader(data, batch_size=8))
    assert callback.uri is not None and callback.record is not None

    with reprodl.start_run(str(tmp_path / "run"), "tiny-loop", seed=5) as run:
        torch.manual_seed(5)
        net = nn.Module()
        net.layer = nn.Linear(4, 2)
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        run.watch(net, opt)
        loader = run.loader(data, batch_size=8, shuffle=False)
        for epoch in range(1, 3):
            for x, y in loader:
                opt.zero_grad()
                F.cross_entropy(net.layer(x), y).backward()
                opt.step()
            run.log(epoch=epoch)
        run.save(net)
    lightning, own = callback.record, run.record
    assert lightning.training.seeds == own.training.seeds == SeedPlan(5).record()
    assert lightning.training.data_order_digests == own.training.data_order_digests
    assert lightning.training.data_order_digests == [order_digest(range(32))] * 2
    assert lightning.training.optimizer_steps == own.training.optimizer_steps == 8
    a, b = _trace(callback.uri), _trace(run.uri)
    for column in ("step", "optimizer", "digest"):  # the Lightning loop's batches are its own
        assert np.array_equal(a[column], b[column]), column


GAN = """\
import os

import torch
import torch.nn as nn

import reprodl


class Generator(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 4))

    def forward(self, z):
        return self.net(z)


class Discriminator(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.LeakyReLU(0.2), nn.Linear(8, 1))

    def forward(self, x):
        return self.net(x)


real_data = torch.randn(32, 4, generator=torch.Generator().manual_seed(0)) + 1.0
with reprodl.start_run("models", "gan", seed=3) as run:
    G, D = Generator(), Discriminator()
    opt_g = torch.optim.Adam(G.parameters(), lr=2e-3, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-3, betas=(0.5, 0.999))
    criterion = nn.BCEWithLogitsLoss()
    run.watch(G, opt_g)
    run.watch(D, opt_d, loss=criterion)
    loader = run.loader(torch.utils.data.TensorDataset(real_data), batch_size=16, shuffle=True)
    for epoch in range(1, 3):
        for (real,) in loader:
            ones, zeros = torch.ones(len(real), 1), torch.zeros(len(real), 1)
            D.zero_grad()
            fake = G(torch.randn(len(real), 2))
            (criterion(D(real), ones) + criterion(D(fake.detach()), zeros)).backward()
            opt_d.step()
            G.zero_grad()
            criterion(D(fake), ones).backward()
            opt_g.step()
        run.log(epoch=epoch)
    if os.environ.get("NUDGE_DISCRIMINATOR"):  # a test hook the record cannot see: after the last step
        with torch.no_grad():
            D.net[0].weight[0, 0] += 1e-6
    run.save({"generator": G, "discriminator": D})
print(run.uri)
"""


@pytest.fixture(scope="module")
def nudged_gan(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A GAN trained once with its discriminator nudged after the last step (the generator untouched)."""
    repo = user_repo(tmp_path_factory.mktemp("gan") / "repo", {"gan.py": GAN}, commit_message="a GAN")
    (repo / "models").mkdir()
    env = {**child_env(), "NUDGE_DISCRIMINATOR": "1"}
    res = subprocess.run(
        [sys.executable, "gan.py"], cwd=repo, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert res.returncode == 0, res.stderr
    uri = res.stdout.strip().splitlines()[-1]
    return {"repo": repo, "uri": uri, "record": load_record(uri)}


def test_trace_columns_carry_the_names_run_save_gave_models_watched_without_name(nudged_gan: dict[str, Any]) -> None:
    record = nudged_gan["record"]
    assert [m.name for m in record.models] == ["generator", "discriminator"]
    tensors = record.results.trace.tensors
    params = [f"net.{i}.{kind}" for i in (0, 2) for kind in ("weight", "bias")]
    assert tensors == [f"generator.{p}" for p in params] + [f"discriminator.{p}" for p in params]


def test_reproduce_compares_every_saved_models_weights_and_names_the_one_that_differs(
    nudged_gan: dict[str, Any], cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NUDGE_DISCRIMINATOR", raising=False)  # the re-run trains without the nudge
    result = cli("reproduce", nudged_gan["uri"], "--trust-code", "--json")
    report = json.loads(result.stdout)
    assert report["verdict"] == "differs", report["reasons"]
    assert result.exit_code == 1
    weights = [r for r in report["why"] if r["kind"] == "weights"]
    assert len(weights) == 1 and "model 'discriminator'" in weights[0]["text"], report["why"]
    assert "generator" not in weights[0]["text"]
    compared = {m["name"]: m["identical"] for m in report["weights"]["models"]}
    assert compared == {"generator": True, "discriminator": False}
    assert report["divergence"]["matched_to_end"] is True  # the nudge came after the last traced step


def test_a_lightning_subset_of_a_reprodl_dataset_is_recorded_with_its_indices(
    digits_split_master: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    L = pytest.importorskip("lightning")
    from reprodl.integrations.lightning import ReprodlCallback

    class Digits(L.LightningDataModule):
        def setup(self, stage: str) -> None:
            self.train_ds = reprodl.TensorDataSet(digits_split_master, usetype="train")

        def train_dataloader(self) -> Any:
            return torch.utils.data.DataLoader(torch.utils.data.Subset(self.train_ds, range(0, 128, 2)), batch_size=32)

    class Linear(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(64, 10)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return F.cross_entropy(self.fc(x.flatten(1)), y)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    L.seed_everything(1, verbose=False)
    callback = ReprodlCallback(str(tmp_path), "subset")
    trainer = L.Trainer(
        max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, callbacks=[callback]
    )
    trainer.fit(Linear(), datamodule=Digits())
    assert callback.record is not None
    (ref,) = callback.record.data  # one entry: the DataModule's dataset as the loader read it
    assert (ref.role, ref.source) == ("train", "dtool")
    (view,) = ref.views
    assert (view.kind, view.n_indices, view.indices_digest) == ("subset", 64, order_digest(range(0, 128, 2)))
