"""A re-run that fails on a file its code reads by a relative path says why: the re-run runs in a copy
of the recorded code, which holds no file git did not hold (a data file kept out of git), and the
message says what to do (record the data as a dataset, or read it by an absolute path)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from user_scripts import run_script, user_repo

from reprodl import reproduce
from reprodl.errors import ReproductionError

SCRIPT = """\
import torch

import reprodl

run = reprodl.start_run("models", "relpath", seed=0)
x, y = torch.load("data/train.pt")
ds = run.use(torch.utils.data.TensorDataset(x, y))
model = torch.nn.Linear(4, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
run.watch(model, optimizer)
for xb, yb in run.loader(ds, batch_size=8):
    optimizer.zero_grad()
    torch.nn.functional.mse_loss(model(xb), yb).backward()
    optimizer.step()
run.save(model)
run.finish()
"""


@pytest.fixture(scope="module")
def relpath_run(tmp_path_factory: pytest.TempPathFactory) -> str:
    repo = user_repo(
        tmp_path_factory.mktemp("relpath"), {"train.py": SCRIPT}, commit_message="s", gitignore="models/\ndata/\n"
    )
    (repo / "data").mkdir()
    g = torch.Generator().manual_seed(0)
    torch.save((torch.randn(16, 4, generator=g), torch.randn(16, 1, generator=g)), repo / "data" / "train.pt")
    res = run_script(repo, "train.py")
    assert res.returncode == 0, res.stderr
    return str(repo / "models" / "relpath")


@pytest.mark.parametrize("streamed", [True, False], ids=["on_output", "to-the-terminal"])
def test_a_file_read_by_a_relative_path_outside_git_is_named_with_what_to_do(
    relpath_run: str, streamed: bool, tmp_path: Path
) -> None:
    lines: list[str] = []
    with pytest.raises(ReproductionError) as caught:
        reproduce(relpath_run, trust_code=True, output=str(tmp_path), on_output=lines.append if streamed else None)
    message = str(caught.value)
    assert "nothing was compared" in message
    assert "'data/train.pt'" in message, message
    assert "copy of the recorded code" in message and "relative path" in message, message
    assert "run.use" in message and "absolute path" in message, message
    if streamed:
        assert any("FileNotFoundError" in line for line in lines)  # the script's output still streamed
