"""Lightning: what the Trainer writes (its logger's directory, its checkpoints) is the run's output, not code.

Lightning's logger writes ``lightning_logs/version_N/`` before ``on_fit_start``, and earlier fits leave
their versions and checkpoints beside the script: none of it is stored as untracked code or makes
the code dirty (``require_clean_code=True`` trains), and the record names each file left out, as a
run output. An untracked helper module is still stored.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("lightning", reason="Lightning is not installed: pip install 'reprodl[lightning]'")

from user_scripts import run_script, user_repo

from reprodl.modeldataset.read import load_record
from reprodl.provenance import summary_lines

SCRIPT = """\
import sys

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from reprodl.integrations.lightning import ReprodlCallback


class Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 2)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self.layer(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


if __name__ == "__main__":
    L.seed_everything(0)
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(16, 4, generator=g), torch.randint(0, 2, (16,), generator=g))
    callbacks = [
        L.pytorch.callbacks.ModelCheckpoint(dirpath="ckpt"),
        ReprodlCallback("models", sys.argv[1], require_clean_code=len(sys.argv) > 2),
    ]
    trainer = L.Trainer(max_epochs=1, enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks)
    trainer.fit(Tiny(), DataLoader(data, batch_size=8))
"""


def test_the_trainers_logs_and_checkpoints_are_left_out_of_the_code(tmp_path: Path) -> None:
    repo = user_repo(tmp_path / "repo", {"train.py": SCRIPT}, commit_message="the user's Lightning script")
    first = run_script(repo, "train.py", "first", "--require-clean")  # its logger wrote before on_fit_start
    assert first.returncode == 0, first.stderr
    logged = sorted(p.relative_to(repo).as_posix() for p in (repo / "lightning_logs").rglob("*") if p.is_file())
    assert logged and (repo / "ckpt").is_dir()

    (repo / "helper.py").write_text("X = 1\n")  # untracked code, beside the first fit's outputs
    second = run_script(repo, "train.py", "second")
    assert second.returncode == 0, second.stderr
    record = load_record(str(repo / "models" / "second"))
    git = record.code.git
    assert git is not None
    assert git.untracked_items == ["code/untracked/helper.py"]
    outputs = {rel for rel, why in git.untracked_skipped_reasons.items() if why == "run output"}
    assert set(logged) <= outputs
    assert any(rel.startswith("ckpt/") for rel in outputs)
    assert outputs == set(git.untracked_skipped)
    code_line = next(line for line in summary_lines(record) if line.startswith("Code: git"))
    assert "patch" not in code_line and "1 untracked file" in code_line, code_line
