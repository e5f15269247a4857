"""Helpers for a user's training script adopted with a few changed lines, run as a subprocess.

The tests of the run API, of a custom loop and of the Lightning callback each write a user's
script to a real git repository on ``tmp_path``, adopt it with a few edits and train it in a
child process that imports this checkout's ``src``. Imported by name (``tests`` is on
``pythonpath``): ``from user_scripts import adopt, changed_lines, ...``.
"""

from __future__ import annotations

import difflib
import os
import subprocess
import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")


def adopt(original: str, edits: list[tuple[str, str]]) -> str:
    """``original`` with each ``(old, new)`` edit applied; every ``old`` must occur exactly once."""
    text = original
    for old, new in edits:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    return text


def changed_lines(before: str, after: str) -> int:
    """Lines of ``after`` that are new or modified."""
    diff = difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0)
    return sum(1 for line in diff if line.startswith("+") and not line.startswith("+++"))


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


def child_env() -> dict[str, str]:
    """The environment for a child process: this checkout's ``src`` first on ``PYTHONPATH``, one thread."""
    path = os.pathsep.join(p for p in (SRC, os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def user_repo(path: Path, files: dict[str, str], *, commit_message: str, gitignore: str = "models/\n") -> Path:
    """A git repository at ``path`` with an identity, ``.gitignore`` and ``files`` committed."""
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q")
    git(path, "config", "user.email", "t@example.org")
    git(path, "config", "user.name", "t")
    (path / ".gitignore").write_text(gitignore)
    for name, text in files.items():
        (path / name).write_text(text)
    git(path, "add", ".")
    git(path, "commit", "-q", "-m", commit_message)
    return path


def run_script(repo: Path, script: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """``python script args...`` in ``repo`` with :func:`child_env`, output captured as text."""
    command = [sys.executable, script, *args]
    return subprocess.run(command, cwd=repo, env=child_env(), capture_output=True, text=True, timeout=timeout)


TINY_RUN = """\
import torch

import reprodl


def main():
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(16, 4, generator=g), torch.randint(0, 2, (16,), generator=g))
    with reprodl.start_run("models", "tiny", seed=0) as run:
        model = torch.nn.Linear(4, 2)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        run.watch(model, optimizer, loss=torch.nn.CrossEntropyLoss())
        for x, y in run.loader(data, batch_size=8):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
        run.log(epoch=1, train_loss=loss)
        run.save(model)


if __name__ == "__main__":
    main()
"""


def tiny_run_script(*, helper: bool = False) -> str:
    """A tiny ``start_run`` training (a linear model, 2 steps) as a user's ``train.py``; with ``helper``,
    it also imports a local module ``helper`` and calls ``helper.hello()`` first (code beside the script)."""
    if not helper:
        return TINY_RUN
    return adopt(
        TINY_RUN,
        [("import reprodl\n", "import helper\nimport reprodl\n"), ("    main()\n", "    helper.hello()\n    main()\n")],
    )
