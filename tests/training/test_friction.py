"""Less friction (issue 18, item 9): a decorator form, ``reprodl.current_run()``, the base
directory created and a unique default name, and progress lines while a silent re-executed
script is reproduced."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from user_scripts import child_env, run_script, user_repo

pytest_plugins = ["train_fixtures"]


def _arrays() -> torch.utils.data.TensorDataset:
    g = torch.Generator().manual_seed(0)
    return torch.utils.data.TensorDataset(torch.randn(32, 4, generator=g), torch.randint(0, 2, (32,), generator=g))


def _train(run, data) -> torch.nn.Module:
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    run.watch(model, optimizer, loss=torch.nn.CrossEntropyLoss())
    for x, y in run.loader(data, batch_size=8, shuffle=True):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model


# --- the decorator and current_run ------------------------------------------------------------
def test_a_decorated_function_gets_its_run_as_a_parameter_and_is_written(tmp_path: Path) -> None:
    import reprodl

    seen = []

    @reprodl.recorded(str(tmp_path), "decorated", seed=5, params={"lr": 0.1})
    def train(data, run):
        seen.append(run)
        assert reprodl.current_run() is run
        run.save(_train(run, data))
        return "trained"

    assert train(_arrays()) == "trained"
    (run,) = seen
    assert train.last_run is run and train.__name__ == "train"
    assert run.uri is not None and Path(tmp_path / "decorated").is_dir()
    assert run.record is not None and run.record.training.seeds.seed == 5
    assert run.record.training.params == {"lr": 0.1} and run.record.training.optimizer_steps == 4
    with pytest.raises(reprodl.ReprodlError, match=r"outside a run"):
        reprodl.current_run()  # finished: no run is in progress any more


def test_a_decorated_function_without_a_run_parameter_reaches_it_by_current_run(tmp_path: Path) -> None:
    import reprodl

    @reprodl.recorded(str(tmp_path), "by-current-run")
    def train():
        run = reprodl.current_run()
        run.save(_train(run, _arrays()))

    train()
    assert train.last_run is not None and train.last_run.uri is not None


def test_current_run_outside_a_run_says_how_to_start_one() -> None:
    import reprodl
    from reprodl.errors import ParametersError

    with pytest.raises(ParametersError, match=r"outside a run.*@reprodl\.recorded.*start_run"):
        reprodl.current_run()


def test_current_run_inside_start_run_and_after_finish(tmp_path: Path) -> None:
    import reprodl

    run = reprodl.start_run(str(tmp_path), "kept")
    assert reprodl.current_run() is run
    with reprodl.start_run(str(tmp_path), "inner") as inner:
        assert reprodl.current_run() is inner  # the latest started
        inner.save(_train(inner, _arrays()))
    assert reprodl.current_run() is run
    run.save(_train(run, _arrays()))
    run.finish()
    with pytest.raises(reprodl.ReprodlError):
        reprodl.current_run()


def test_a_decorated_function_that_raises_writes_nothing_and_ends_the_run(tmp_path: Path) -> None:
    import reprodl

    @reprodl.recorded(str(tmp_path), "fails")
    def train(run):
        run.save(_train(run, _arrays()))
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom") as info:
        train()
    assert "no model dataset was written" in "".join(getattr(info.value, "__notes__", []))
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(reprodl.ReprodlError):
        reprodl.current_run()


def test_recorded_refuses_what_start_run_does_not_take_and_a_run_given_by_the_caller(tmp_path: Path) -> None:
    import reprodl
    from reprodl.errors import ParametersError

    with pytest.raises(ParametersError, match=r"takes the keywords of reprodl.start_run"):
        reprodl.recorded(str(tmp_path), "x", sede=1)

    @reprodl.recorded(str(tmp_path), "x")
    def train(run):  # pragma: no cover - never called with its run
        raise AssertionError

    with pytest.raises(ParametersError, match=r"leave the run argument out"):
        train(run=object())
    assert list(tmp_path.iterdir()) == []


# --- the base directory created, a unique default name ----------------------------------------
def test_start_run_and_the_decorator_create_the_base_and_name_unnamed_runs_uniquely(tmp_path: Path) -> None:
    import reprodl

    base = tmp_path / "not" / "yet"
    uris = []
    for _ in range(2):
        with reprodl.start_run(str(base)) as run:
            run.save(_train(run, _arrays()))
        uris.append(run.uri)

    @reprodl.recorded(str(tmp_path / "decorated" / "base"))
    def train(run):
        run.save(_train(run, _arrays()))

    for _ in range(2):
        train()
        uris.append(train.last_run.uri)
    names = [uri.rstrip("/").rsplit("/", 1)[-1] for uri in uris]
    assert len(set(names)) == 4, names
    assert all(re.fullmatch(r"[\w-]+-\d{8}T\d{6}-[0-9a-f]{6}", n) for n in names), names
    assert sorted(p.name for p in base.iterdir()) == sorted(names[:2])


def test_the_built_in_trainer_creates_a_missing_base_directory(digits_split_uri: str, tmp_path: Path) -> None:
    from train_fixtures import train_digits

    base = tmp_path / "new" / "models"
    uri, record = train_digits(base, "builtin", digits_split_uri, valid=False)
    assert (base / "builtin").is_dir() and record.model_name == "builtin"


def test_reprodl_train_creates_a_missing_output_directory(digits_split_uri: str, tmp_path: Path, cli) -> None:
    import yaml
    from train_fixtures import digits_config

    out = tmp_path / "new" / "models"
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(digits_config(digits_split_uri, out)))
    result = cli("train", str(config), "--quiet")
    assert result.exit_code == 0, result.stderr
    assert (out / "digits-cnn").is_dir()


# --- a decorated, silent script re-executed: progress lines, the verdict unchanged -------------
SILENT = """\
import time

import torch

import reprodl


@reprodl.recorded("models", "silent", seed=4)
def main(run):
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(640, 8, generator=g), torch.randint(0, 2, (640,), generator=g))
    train_ds = run.use(data)
    model = torch.nn.Linear(8, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    run.watch(model, optimizer, loss=torch.nn.CrossEntropyLoss())
    for epoch in range(1, 3):
        for x, y in run.loader(train_ds, batch_size=8, shuffle=True):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
            time.sleep(0.015)  # a long training, in miniature
        reprodl.current_run().log(epoch=epoch)
    run.save(model)


if __name__ == "__main__":
    main()
"""


@pytest.fixture(scope="module")
def silent_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The decorated script, committed, trained once: its model's URI (160 steps)."""
    repo = user_repo(tmp_path_factory.mktemp("silent"), {"train.py": SILENT}, commit_message="a silent script")
    res = run_script(repo, "train.py")
    assert res.returncode == 0 and res.stdout == "", res.stderr
    return str(repo / "models" / "silent")


def _reproduce(uri: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "reprodl.cli", "reproduce", uri, "--trust-code", *args]
    return subprocess.run(command, env={**child_env(), **env}, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_a_silent_decorated_script_reproduces_with_progress_on_stderr_and_pure_json(silent_model: str) -> None:
    res = _reproduce(silent_model, "--json", REPRODL_PROGRESS="1", REPRODL_PROGRESS_EVERY="0.3")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)  # stdout is the report alone
    assert report["verdict"] == "identical", report["reasons"]
    steps = [int(m[1]) for m in re.finditer(r"^reproduce: step (\d+) of 160 \(\d+%\)$", res.stderr, re.M)]
    assert len(steps) >= 2, res.stderr
    assert steps == sorted(steps) and len(set(steps)) == len(steps) and 0 < steps[0] and steps[-1] <= 160
    assert "reproduce: step" not in res.stdout


@pytest.mark.slow
def test_progress_hidden_when_not_asked_and_the_verdict_is_the_same(silent_model: str) -> None:
    res = _reproduce(silent_model, REPRODL_PROGRESS="0", REPRODL_PROGRESS_EVERY="0.3")
    assert res.returncode == 0, res.stderr
    assert "Verdict: identical" in res.stdout
    assert "reproduce: step" not in res.stderr + res.stdout


def test_progress_lines_and_the_childs_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from reprodl.reproduction.progress import progress_line, progress_wanted, reporting_progress
    from reprodl.training.progress import ProgressFile

    assert progress_line(120, 400) == "reproduce: step 120 of 400 (30%)"
    assert progress_line(5, 0) == progress_line(5, None) == "reproduce: step 5"
    monkeypatch.setenv("REPRODL_PROGRESS", "0")
    assert not progress_wanted()
    with reporting_progress(10, print) as env:
        assert env == {}  # nothing asked of the child
    monkeypatch.setenv("REPRODL_PROGRESS", "1")
    monkeypatch.setenv("REPRODL_PROGRESS_EVERY", "0.2")
    lines: list[str] = []
    with reporting_progress(10, lines.append) as env:
        monkeypatch.setenv("REPRODL_PROGRESS_FILE", env["REPRODL_PROGRESS_FILE"])
        writer = ProgressFile.from_environment()
        assert writer is not None and writer.every == pytest.approx(0.1)
        writer.step(3)
        writer.step(4)  # within the interval: not written
        assert Path(env["REPRODL_PROGRESS_FILE"]).read_text() == "3\n"
        import time

        time.sleep(0.6)
    assert lines and lines[0] == "reproduce: step 3 of 10 (30%)", lines
    assert not Path(env["REPRODL_PROGRESS_FILE"]).exists()  # the folder went with the wait
