"""Checkpoint and resume (issue 12, part 2): a training SIGKILLed mid-run continues from its
checkpoint and ends bit-identical (weights and step trace) to one never interrupted.

The kills are real: a child process kills itself at the n-th optimiser step (``SGD.step``
patched before any optimiser exists, as in test_security_store's ``kill_at``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

from reprodl.errors import ResumeError
from reprodl.store import clean_staging, find_staging

pytest_plugins = ["train_fixtures"]

SRC = str(Path(__file__).resolve().parents[2] / "src")
STEPS_PER_EPOCH = 45  # 1,438 training digits in batches of 32

KILL_AT_STEP = """
import os, signal, sys
import torch.optim.sgd as sgd
real, count, n = sgd.SGD.step, [0], int(os.environ["KILL_AT_STEP"])
def killer(*a, **k):
    count[0] += 1
    if count[0] >= n:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*a, **k)
sgd.SGD.step = killer
if os.environ.get("KILL_IN_SAVE"):  # SIGKILL half-way through writing checkpoint n's state.pt
    import torch
    real_save, saves = torch.save, [0]
    def dying_save(obj, f, *a, **k):
        saves[0] += 1
        if saves[0] >= int(os.environ["KILL_IN_SAVE"]):
            f.write(b"half a checkpoint")  # the open state.pt
            os.kill(os.getpid(), signal.SIGKILL)
        return real_save(obj, f, *a, **k)
    torch.save = dying_save
"""

TRAIN_CONFIG = """
import json, sys
from reprodl.training.config import build_and_train, load_config
build_and_train(load_config(json.loads(sys.argv[1])), progress=False)
"""


def run_killed(code: str, *args: str, step: int, cwd: Path | None = None, in_save: int = 0) -> None:
    """Run ``code`` in a fresh Python that SIGKILLs itself at optimiser step ``step`` (or in checkpoint ``in_save``)."""
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", "KILL_AT_STEP": str(step)}
    if in_save:
        env["KILL_IN_SAVE"] = str(in_save)
    proc = subprocess.run(
        [sys.executable, "-c", KILL_AT_STEP + code, *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr[-3000:])


def config(data_uri: str, output: Path, **params: Any) -> dict[str, Any]:
    from train_fixtures import digits_config

    output.mkdir(parents=True, exist_ok=True)
    return {**digits_config(data_uri, output, n_epochs=3, **params), "checkpoint_every": 1}


def trained(cfg: dict[str, Any], *, resume: bool = False) -> Any:
    from reprodl.training.config import build_and_train, load_config

    return build_and_train(load_config(cfg), progress=False, resume=resume)[1]


@pytest.fixture(scope="module")
def uninterrupted(digits_split_master: str, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The record of the 3-epoch config training, never interrupted (checkpoints every epoch)."""
    return trained(config(digits_split_master, tmp_path_factory.mktemp("whole")))


def test_a_killed_config_training_is_kept_refused_if_changed_and_resumes_bit_identical(
    digits_split_master: str, tmp_path: Path, uninterrupted: Any, cli: Any
) -> None:
    import yaml

    from reprodl.modeldataset.read import read_record
    from reprodl.store import open_dataset

    cfg = config(digits_split_master, tmp_path / "models")
    run_killed(TRAIN_CONFIG, json.dumps(cfg), step=STEPS_PER_EPOCH + 15)  # SIGKILL in epoch 2
    base = Path(cfg["output"])
    [left] = clean_staging(base)  # the cleaner keeps it, and says so
    assert left.state == "resumable" and not left.removed and left.checkpoint is not None
    assert (left.checkpoint["epoch"], left.checkpoint["step"]) == (1, STEPS_PER_EPOCH)
    result = cli("dataset", "clean", base)
    assert "kept: a killed training's checkpoint (epoch 1, step 45); continue it with" in result.output
    changed = {**cfg, "params": {**cfg["params"], "learning_rate": 0.1}}
    with pytest.raises(ResumeError, match=r"config changed.*params\.learning_rate: 0\.05 -> 0\.1"):
        trained(changed, resume=True)
    assert torch.nn.utils.clip_grad_norm_.__module__ == "torch.nn.utils.clip_grad"  # the refusal gave them back
    assert [s.state for s in find_staging(base)] == ["resumable"]  # the refusal kept the checkpoint

    (tmp_path / "train.yaml").write_text(yaml.safe_dump(cfg))
    result = cli("train", tmp_path / "train.yaml", "--resume", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    record = read_record(open_dataset(out["uri"]))
    assert record.results.weights_sha256 == uninterrupted.results.weights_sha256
    assert record.results.trace.sha256 == uninterrupted.results.trace.sha256
    assert record.training.data_order_digests == uninterrupted.training.data_order_digests
    assert record.training.optimizer_steps == uninterrupted.training.optimizer_steps
    assert [m.train_loss for m in record.results.history] == [m.train_loss for m in uninterrupted.results.history]
    resumed = record.training.resumed
    assert (resumed.count, resumed.from_epoch, resumed.from_step) == (1, [1], [STEPS_PER_EPOCH])
    assert out["resumed"]["from_epoch"] == [1]
    assert uninterrupted.training.resumed is None and record.training.checkpoint_every == 1
    assert find_staging(base) == []  # the checkpoint went with the finished staging directory


def test_a_kill_while_writing_a_checkpoint_keeps_the_previous_one(
    digits_split_master: str, tmp_path: Path, uninterrupted: Any
) -> None:
    cfg = config(digits_split_master, tmp_path / "models")
    run_killed(TRAIN_CONFIG, json.dumps(cfg), step=10**6, in_save=2)  # in the checkpoint after epoch 2
    [left] = find_staging(tmp_path / "models")
    assert left.checkpoint is not None and left.checkpoint["epoch"] == 1
    record = trained(cfg, resume=True)
    assert record.results.weights_sha256 == uninterrupted.results.weights_sha256
    assert record.training.resumed.from_epoch == [1]


def test_resume_without_a_checkpoint_is_refused(digits_split_master: str, tmp_path: Path) -> None:
    with pytest.raises(ResumeError, match="no checkpoint of a killed training.*without --resume"):
        trained(config(digits_split_master, tmp_path / "models"), resume=True)
    assert list((tmp_path / "models").iterdir()) == []


def test_checkpoint_every_must_be_positive(digits_split_master: str, tmp_path: Path) -> None:
    from reprodl.errors import ParametersError

    bad = {**config(digits_split_master, tmp_path / "models"), "checkpoint_every": 0}
    with pytest.raises(ParametersError, match="checkpoint_every"):
        trained(bad)


RUN_SCRIPT = textwrap.dedent(
    """
    import os, sys
    import torch
    from torch import nn
    import reprodl
    from reprodl import GenNet, TensorDataSet

    base, data = sys.argv[1], sys.argv[2]
    with reprodl.start_run(base, "own-loop", seed=3, params={"lr": 0.05}, checkpoint_every=20,
                           resume=os.environ.get("RESUME") == "1") as run:
        train = run.use(TensorDataSet(data, usetype="train"))
        model = GenNet(input_channels=1, input_dim=8)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        run.watch(model, opt, scheduler=sched, loss=nn.NLLLoss())
        loader = run.loader(train, batch_size=32, shuffle=True)
        for epoch in run.epochs(3):
            for x, y in loader:
                opt.zero_grad()
                loss = nn.functional.nll_loss(model(nn.functional.dropout(x, 0.1)), y)
                loss.backward()
                opt.step()
            sched.step()
            run.log(epoch=epoch, lr=sched.get_last_lr()[0])
        run.save(model)
    print(run.uri)
    """
)


@pytest.mark.slow
def test_a_killed_start_run_resumes_bit_identical(digits_split_master: str, tmp_path: Path) -> None:
    from reprodl.modeldataset.read import read_record
    from reprodl.store import open_dataset

    script = tmp_path / "train.py"
    script.write_text(RUN_SCRIPT)
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}

    def run(base: Path, **extra: str) -> Any:
        base.mkdir(exist_ok=True)
        proc = subprocess.run(
            [sys.executable, str(script), str(base), digits_split_master],
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        return read_record(open_dataset(proc.stdout.strip().splitlines()[-1]))

    whole = run(tmp_path / "whole")
    (tmp_path / "killed").mkdir()
    run_killed(script.read_text(), str(tmp_path / "killed"), digits_split_master, step=STEPS_PER_EPOCH + 30)
    [left] = find_staging(tmp_path / "killed")
    assert left.state == "resumable" and left.checkpoint is not None and left.checkpoint["step"] == 60
    resumed = run(tmp_path / "killed", RESUME="1")
    assert resumed.results.weights_sha256 == whole.results.weights_sha256
    assert resumed.results.trace.sha256 == whole.results.trace.sha256
    assert resumed.training.data_order_digests == whole.training.data_order_digests
    assert resumed.training.optimizer_steps == whole.training.optimizer_steps == 3 * STEPS_PER_EPOCH
    assert (resumed.training.resumed.from_epoch, resumed.training.resumed.from_step) == ([2], [60])
    assert [e["lr"] for e in resumed.results.logged] == [e["lr"] for e in whole.results.logged]


# --- start_run in process: an interruption keeps the checkpoint; refusals ----------------------
def own_loop(base: Path, data_uri: str, *, stop_at: int | None = None, resume: bool = False, lr: float = 0.05) -> Any:
    """A short start_run loop (2 epochs, checkpoints every 10 steps); KeyboardInterrupt at step ``stop_at``."""
    import torch
    from torch import nn

    import reprodl
    from reprodl import GenNet, TensorDataSet

    base.mkdir(exist_ok=True)
    with reprodl.start_run(str(base), "loop", seed=1, params={"lr": lr}, checkpoint_every=10, resume=resume) as run:
        train = run.use(TensorDataSet(data_uri, usetype="train"))
        model = GenNet(input_channels=1, input_dim=8)
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        run.watch(model, opt, loss=nn.NLLLoss())
        loader = run.loader(train, batch_size=64, shuffle=True)
        steps = 0
        for epoch in run.epochs(2):
            for x, y in loader:
                opt.zero_grad()
                nn.functional.nll_loss(model(x), y).backward()
                opt.step()
                steps += 1
                if steps == stop_at:
                    raise KeyboardInterrupt
            run.log(epoch=epoch, seen=steps)
        run.save(model)
    return run.record


def test_an_interrupted_run_keeps_its_checkpoint_and_resumes_in_process(
    digits_split_master: str, tmp_path: Path
) -> None:
    whole = own_loop(tmp_path / "whole", digits_split_master)
    with pytest.raises(KeyboardInterrupt):
        own_loop(tmp_path / "cut", digits_split_master, stop_at=25)
    [left] = find_staging(tmp_path / "cut")
    assert left.state == "resumable" and left.checkpoint is not None and left.checkpoint["step"] == 20
    with pytest.raises(ResumeError, match=r"config changed.*params\.lr: 0\.05 -> 0\.1"):
        own_loop(tmp_path / "cut", digits_split_master, resume=True, lr=0.1)
    record = own_loop(tmp_path / "cut", digits_split_master, resume=True)
    assert record.results.weights_sha256 == whole.results.weights_sha256
    assert record.results.trace.sha256 == whole.results.trace.sha256
    assert record.training.resumed.from_step == [20] and record.training.checkpoint_every == 10
    assert find_staging(tmp_path / "cut") == []


def test_dataset_clean_checkpoints_removes_a_resumable_one(digits_split_master: str, tmp_path: Path, cli: Any) -> None:
    with pytest.raises(KeyboardInterrupt):
        own_loop(tmp_path / "cut", digits_split_master, stop_at=12)
    result = cli("dataset", "clean", tmp_path / "cut", "--checkpoints")
    assert result.exit_code == 0 and "removed" in result.output
    assert find_staging(tmp_path / "cut") == []
    with pytest.raises(ResumeError, match="no checkpoint of a killed training called 'loop'"):
        own_loop(tmp_path / "cut", digits_split_master, resume=True)


def test_persistent_workers_cannot_be_checkpointed(digits_split_master: str, tmp_path: Path) -> None:
    import reprodl
    from reprodl import TensorDataSet
    from reprodl.errors import ParametersError

    with pytest.raises(ParametersError, match="persistent_workers=True"):
        with reprodl.start_run(str(tmp_path), "pw", checkpoint_every=5) as run:
            run.loader(TensorDataSet(digits_split_master), batch_size=8, num_workers=1, persistent_workers=True)


@pytest.mark.slow
def test_a_killed_training_with_workers_and_random_transforms_resumes_bit_identical(
    digits_split_master: str, tmp_path: Path
) -> None:
    """Each worker's random state (a random flip per sample) continues from the checkpoint."""
    flip = [{"name": "RandomHorizontalFlip", "p": 0.5}]

    def cfg(output: Path) -> dict[str, Any]:
        c = config(digits_split_master, output, num_workers=2)
        c["data"]["train"]["transform"] = flip
        return c

    whole = trained(cfg(tmp_path / "whole"))
    killed = cfg(tmp_path / "killed")
    run_killed(TRAIN_CONFIG, json.dumps(killed), step=STEPS_PER_EPOCH + 15)
    record = trained(killed, resume=True)
    assert record.results.weights_sha256 == whole.results.weights_sha256
    assert record.results.trace.sha256 == whole.results.trace.sha256


# --- the negative control: a resume with one restore left out differs, at that component ------------
def noisy_loop(base: Path, data_uri: str, *, stop_at: int | None = None, resume: bool = False) -> Any:
    """A start_run loop whose every restore matters: momentum (optimiser state), dropout (global RNG),
    a shuffled loader; 2 epochs of 23 steps, checkpoints every 10; KeyboardInterrupt at step ``stop_at``."""
    import torch
    from torch import nn

    import reprodl
    from reprodl import GenNet, TensorDataSet

    base.mkdir(exist_ok=True)
    with reprodl.start_run(str(base), "noisy", seed=1, params={"lr": 0.05}, checkpoint_every=10, resume=resume) as run:
        train = run.use(TensorDataSet(data_uri, usetype="train"))
        model = GenNet(input_channels=1, input_dim=8)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        run.watch(model, opt, loss=nn.NLLLoss())
        loader = run.loader(train, batch_size=64, shuffle=True)
        steps = 0
        for epoch in run.epochs(2):
            for x, y in loader:
                opt.zero_grad()
                nn.functional.nll_loss(model(nn.functional.dropout(x, 0.2)), y).backward()
                opt.step()
                steps += 1
                if steps == stop_at:
                    raise KeyboardInterrupt
            run.log(epoch=epoch)
        run.save(model)
    return run.record


def test_a_resume_with_one_restore_skipped_differs_at_that_component(
    digits_split_master: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from reprodl.modeldataset.read import load_trace
    from reprodl.reproduction.divergence import TraceComparer
    from reprodl.store import open_dataset

    whole = noisy_loop(tmp_path / "whole", digits_split_master)
    recorded = load_trace(open_dataset(str(tmp_path / "whole" / "noisy")), whole)

    def resumed(skip: str | None) -> tuple[Any, Any]:
        base = tmp_path / f"resume-{skip}"
        monkeypatch.delenv("REPRODL_SKIP_RESTORE", raising=False)
        with pytest.raises(KeyboardInterrupt):
            noisy_loop(base, digits_split_master, stop_at=25)  # the checkpoint of step 20 is kept
        if skip:
            monkeypatch.setenv("REPRODL_SKIP_RESTORE", skip)
        else:
            monkeypatch.delenv("REPRODL_SKIP_RESTORE", raising=False)
        record = noisy_loop(base, digits_split_master, resume=True)
        comparer = TraceComparer(recorded, whole.results.trace.tensors)
        comparer.compare_all(load_trace(open_dataset(str(base / "noisy")), record))
        return record, comparer.result()

    record, div = resumed(None)  # the true resume
    assert record.results.weights_sha256 == whole.results.weights_sha256 and div.matched_to_end
    assert record.training.resumed.skipped_restore is None
    assert [o.sha256 for o in record.results.trace.oplog] == [o.sha256 for o in whole.results.trace.oplog]
    for skip in ("optimizer", "rng", "loader"):
        record, div = resumed(skip)
        assert record.results.weights_sha256 != whole.results.weights_sha256, skip  # `differs`
        assert record.training.resumed.skipped_restore == [skip]
        assert div.step == 21, (skip, div.step)  # the first step after the checkpoint
        assert div.tensors and div.growth[0]["tensors_differ"] > 0
        if skip == "loader":  # the loader's position: other samples at step 21
            assert div.indices_differ is True
        else:  # the same samples, another computation: momentum or dropout masks
            assert div.indices_differ is False and div.contents_differ is False


def test_an_unknown_skipped_restore_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from reprodl.training.checkpoint import skipped_restore

    monkeypatch.setenv("REPRODL_SKIP_RESTORE", "scheduler")
    with pytest.raises(ResumeError, match=r"REPRODL_SKIP_RESTORE='scheduler' names no restore: use one of rng"):
        skipped_restore()


def test_config_changes_tell_a_dotted_key_from_a_nested_one():
    """{"a": {"b": 1}} and {"a.b": 1} are different configs: flattened to one dotted key they looked equal,
    and a resume with the changed config went ahead."""
    from reprodl.training.checkpoint import config_changes

    changes = config_changes({"params": {"a": {"b": 1}}}, {"params": {"a.b": 1}})
    assert changes, "a nested key turned into a dotted one is a change"
    assert any("a.b" in c for c in changes)
    assert config_changes({"params": {"lr": 0.1}}, {"params": {"lr": 0.2}}) == ["params.lr: 0.1 -> 0.2"]
    assert config_changes({"x": {}}, {"x": {}}) == []
    assert config_changes({"x": {}}, {"x": None}) == ["x: {} -> null"]
