"""Lightning: what ``ReprodlCallback`` captures per epoch, in process (tiny model, 48 samples).

- metrics the LightningModule logs in its own ``on_train_epoch_end`` and
  ``on_validation_epoch_end`` are in the record for every epoch, with the values logged;
- the train loader's sample order is recorded, one digest per epoch, worker loaders included;
  equal for equal seeds, different for different ones;
- a loader whose order cannot be read (a custom sampler) is named in the record, not dropped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("lightning", reason="Lightning is not installed: pip install 'reprodl[lightning]'")

import lightning as L
import torch
from torch.utils.data import DataLoader, Sampler, TensorDataset

from reprodl.integrations.lightning import ReprodlCallback
from reprodl.provenance import ProvenanceRecord, summary_lines

EPOCHS = 3


class EpochEndLogger(L.LightningModule):
    """Logs only in its epoch-end hooks, keeping what it logged: {name: {epoch from 1: value}}."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 2)
        self.seen: dict[str, dict[int, float]] = {"train_loss_epoch": {}, "valid_accuracy": {}}
        self._losses: list[torch.Tensor] = []
        self._hits: list[torch.Tensor] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self.layer(x), y)
        self._losses.append(loss.detach())
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self._hits.append((self.layer(x).argmax(1) == y).float())

    def _keep(self, name: str, value: torch.Tensor) -> None:
        self.log(name, value)
        self.seen[name][self.current_epoch + 1] = float(value)

    def on_train_epoch_end(self) -> None:
        self._keep("train_loss_epoch", torch.stack(self._losses).mean())
        self._losses.clear()

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self._keep("valid_accuracy", torch.cat(self._hits).mean())
        self._hits.clear()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


class EveryOther(Sampler[int]):
    """A custom sampler: even indices, then odd ones."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __iter__(self):
        return iter([*range(0, self.n, 2), *range(1, self.n, 2)])

    def __len__(self) -> int:
        return self.n


def _data() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(48, 4, generator=g), torch.randint(0, 2, (48,), generator=g))


def _fit(tmp_path: Path, name: str, seed: int, **loader_kw: Any) -> tuple[ProvenanceRecord, EpochEndLogger]:
    L.seed_everything(seed, verbose=False)
    model, data = EpochEndLogger(), _data()
    loader_kw.setdefault("shuffle", "sampler" not in loader_kw)
    callback = ReprodlCallback(str(tmp_path), name)
    trainer = L.Trainer(
        max_epochs=EPOCHS,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
    )
    trainer.fit(model, DataLoader(data, batch_size=8, **loader_kw), DataLoader(data, batch_size=16))
    assert callback.record is not None
    return callback.record, model


@pytest.fixture(autouse=True)
def _own_seed_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)  # seed_everything's, restored after the test


def test_metrics_logged_in_the_modules_epoch_end_hooks_are_recorded_for_every_epoch(tmp_path: Path) -> None:
    record, model = _fit(tmp_path, "hooks", seed=3)
    logged = {e["epoch"]: e for e in record.results.logged}
    assert sorted(logged) == list(range(1, EPOCHS + 1))
    for name, by_epoch in model.seen.items():
        assert sorted(by_epoch) == list(range(1, EPOCHS + 1))
        assert {epoch: logged[epoch][name] for epoch in by_epoch} == pytest.approx(by_epoch, abs=0, rel=1e-6)


def test_the_train_order_is_recorded_per_epoch_and_follows_the_seed(tmp_path: Path) -> None:
    first, _ = _fit(tmp_path, "a", seed=3)
    again, _ = _fit(tmp_path, "b", seed=3)
    other, _ = _fit(tmp_path, "c", seed=4)
    digests = first.training.data_order_digests
    assert len(digests) == EPOCHS and len(set(digests)) == EPOCHS  # a new shuffle each epoch
    assert again.training.data_order_digests == digests
    assert other.training.data_order_digests != digests
    assert not any(set(other.training.data_order_digests) & set(digests))
    assert first.training.data_order_not_recorded is None


def test_a_worker_loaders_order_is_recorded_from_the_first_epoch(tmp_path: Path) -> None:
    record, _ = _fit(tmp_path, "workers", seed=3, num_workers=1)
    assert len(record.training.data_order_digests) == EPOCHS
    assert record.training.data_order_not_recorded is None


def test_an_unshuffled_loaders_order_is_the_same_every_epoch(tmp_path: Path) -> None:
    from reprodl.training.order import order_digest

    record, _ = _fit(tmp_path, "in-order", seed=3, shuffle=False)
    assert record.training.data_order_digests == [order_digest(range(48))] * EPOCHS


def test_a_custom_samplers_order_is_named_as_not_recorded(tmp_path: Path) -> None:
    record, _ = _fit(tmp_path, "custom", seed=3, sampler=EveryOther(48))
    t = record.training
    assert t.data_order_digests == []
    assert t.data_order_not_recorded is not None and "EveryOther" in t.data_order_not_recorded
    assert any(line.startswith("Warning: data order not recorded") for line in summary_lines(record))


def test_an_epoch_without_validation_records_no_stale_validation_metrics(tmp_path: Path) -> None:
    L.seed_everything(3, verbose=False)
    model, data = EpochEndLogger(), _data()
    callback = ReprodlCallback(str(tmp_path), "every-2")
    trainer = L.Trainer(
        max_epochs=EPOCHS,
        check_val_every_n_epoch=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
    )
    trainer.fit(model, DataLoader(data, batch_size=8, shuffle=True), DataLoader(data, batch_size=16))
    assert callback.record is not None
    validated = {e["epoch"]: e["valid_accuracy"] for e in callback.record.results.logged if "valid_accuracy" in e}
    assert validated == pytest.approx(model.seen["valid_accuracy"], abs=0, rel=1e-6) and list(validated) == [2]
    assert [e["epoch"] for e in callback.record.results.logged if "train_loss_epoch" in e] == [1, 2, 3]


def test_recording_the_order_leaves_the_training_as_it_was_without_reprodl(tmp_path: Path) -> None:
    _, recorded = _fit(tmp_path, "with", seed=3, num_workers=1)
    L.seed_everything(3, verbose=False)
    plain = EpochEndLogger()
    L.Trainer(
        max_epochs=EPOCHS,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    ).fit(plain, DataLoader(_data(), batch_size=8, shuffle=True, num_workers=1), DataLoader(_data(), batch_size=16))
    assert torch.equal(recorded.layer.weight, plain.layer.weight)
