"""DistributedDataParallel for the built-in trainer and configs (issue 12, part 1): ``reprodl train
CONFIG`` under real ``torchrun --nproc-per-node 2`` (gloo, CPU) trains each rank on its shard and
writes one model dataset from rank 0; ``reprodl reproduce`` re-runs it under torchrun and gets
``identical``; a rank that dies leaves no model dataset.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from train_fixtures import N_TRAIN, digits_config
from user_scripts import child_env

from reprodl.errors import ParametersError, ReproductionError
from reprodl.provenance.record import DistributedInfo
from reprodl.store import clean_staging
from reprodl.training.distributed import Group, ShardBatches

pytest_plugins = ["train_fixtures"]

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]

KILL_RANK_1 = textwrap.dedent(
    """
    import os, signal, sys
    import torch.optim.sgd as sgd

    if os.environ.get("RANK") == "1":  # rank 1 dies at its KILL_AT-th optimiser step
        real, count = sgd.SGD.step, [0]
        def killer(*a, **k):
            count[0] += 1
            if count[0] >= int(os.environ["KILL_AT"]):
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*a, **k)
        sgd.SGD.step = killer
    from reprodl.cli import main
    sys.argv = ["reprodl", *sys.argv[1:]]
    main()
    """
)


def torchrun(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TORCHRUN, *args],
        cwd=cwd,
        env={**child_env(), **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def write_config(path: Path, data_uri: str, output: Path, **extra: Any) -> Path:
    output.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({**digits_config(data_uri, output, name="digits-ddp", n_epochs=2), **extra}))
    return path


@pytest.fixture(scope="module")
def ddp_trained(digits_split_master: str, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """``torchrun --nproc-per-node 2 -m reprodl.cli train train.yaml`` (2 epochs of the digits)."""
    from reprodl.modeldataset.read import read_record
    from reprodl.store import open_dataset

    work = tmp_path_factory.mktemp("ddp-train")
    config = write_config(work / "train.yaml", digits_split_master, work / "models")
    proc = torchrun(work, "-m", "reprodl.cli", "train", str(config), "--quiet")
    assert proc.returncode == 0, proc.stderr[-4000:]
    uri = proc.stdout.strip().splitlines()[-1].removeprefix("Model dataset: ")
    return SimpleNamespace(uri=uri, record=read_record(open_dataset(uri)), base=work / "models", stdout=proc.stdout)


@pytest.mark.slow
def test_reprodl_train_under_torchrun_writes_one_model_recording_every_rank(ddp_trained: SimpleNamespace) -> None:
    assert [p.name for p in ddp_trained.base.iterdir()] == ["digits-ddp"]  # rank 0 only; nothing staged left
    assert ddp_trained.stdout.count("Model dataset:") == 1  # only rank 0 reports
    t = ddp_trained.record.training
    assert t.world_size == 2 and t.distributed is not None
    d = t.distributed
    assert (d.backend, d.world_size, d.rank_seeds) == ("gloo", 2, [0, 1])
    assert d.sampler == {"shuffle": True, "seed": 1, "drop_last": False}  # the plan's sampler seed
    assert [len(r) for r in d.rank_order_digests] == [2, 2] and d.rank_order_digests[0] != d.rank_order_digests[1]
    assert t.data_order_digests == d.rank_order_digests[0]
    assert d.validation is not None and "all-reduced" in d.validation
    shard = (N_TRAIN + 1) // 2
    assert t.optimizer_steps == 2 * -(-shard // 32)  # two epochs of one shard's batches
    history = ddp_trained.record.results.history
    assert len(history) == 2 and history[-1].valid_accuracy is not None and history[-1].valid_accuracy > 0.3


@pytest.mark.slow
def test_a_ddp_trained_config_reproduces_identical_under_torchrun(ddp_trained: SimpleNamespace) -> None:
    from reprodl.reproduction.rerun import reproduce

    report = reproduce(ddp_trained.uri)
    assert report.verdict == "identical", report.reasons
    assert report.weights["identical"] and report.data_order_matches
    assert report.divergence is not None and report.divergence.step is None


@pytest.mark.slow
def test_reproduce_at_world_size_1_says_whether_the_result_depends_on_it(ddp_trained: SimpleNamespace) -> None:
    from reprodl.reproduction.rerun import reproduce

    report = reproduce(ddp_trained.uri, world_size=1)  # 2 processes of batch 32 -> 1 of batch 64
    assert report.world_size == {
        "original": 2,
        "rerun": 1,
        "global_batch": 64,
        "batch_per_process": {"original": 32, "rerun": 64},
        "depends_on_world_size": report.verdict != "identical",
    }
    assert report.verdict in ("identical", "within tolerance", "differs")
    assert report.metrics  # compared as any reproduction is


def test_a_world_size_that_does_not_divide_the_global_batch_is_refused(ddp_trained: SimpleNamespace) -> None:
    from reprodl.reproduction.rerun import reproduce

    with pytest.raises(
        ParametersError, match=r"--world-size 3: .* 2 process\(es\) of batch 32 \(a global batch of 64\)"
    ):
        reproduce(ddp_trained.uri, world_size=3)


@pytest.mark.slow
def test_a_killed_rank_fails_reprodl_train_and_writes_no_model(digits_split_master: str, tmp_path: Path) -> None:
    config = write_config(tmp_path / "train.yaml", digits_split_master, tmp_path / "models")
    (tmp_path / "kill_rank_1.py").write_text(KILL_RANK_1)
    proc = torchrun(tmp_path, "kill_rank_1.py", "train", str(config), "--quiet", KILL_AT="10")
    assert proc.returncode != 0
    assert "FAILED" in proc.stderr and "SIGKILL" in proc.stderr
    deadline = time.monotonic() + 30  # a rank torchrun stopped may still be exiting on a busy machine
    while True:
        clean_staging(tmp_path / "models")  # what a rank killed by torchrun left is stale: removable
        if not list((tmp_path / "models").iterdir()) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert list((tmp_path / "models").iterdir()) == []


@pytest.mark.slow
def test_a_killed_ddp_training_resumes_under_torchrun_bit_identical(
    ddp_trained: SimpleNamespace, digits_split_master: str, tmp_path: Path
) -> None:
    from reprodl.modeldataset.read import read_record
    from reprodl.store import open_dataset

    config = write_config(tmp_path / "train.yaml", digits_split_master, tmp_path / "models", checkpoint_every=1)
    (tmp_path / "kill_rank_1.py").write_text(KILL_RANK_1)
    # torchrun polls its ranks (every 0.1 s by default) and stops the others once one died: rank 0 may be
    # stopped before its next collective tells it, and then it says nothing. A slower poll lets it say so.
    slow_poll = ("--monitor-interval", "5")
    killed = torchrun(tmp_path, *slow_poll, "kill_rank_1.py", "train", str(config), "--quiet", KILL_AT="30")  # epoch 2
    assert killed.returncode != 0 and "lost another rank" in killed.stderr and "--resume" in killed.stderr
    resumed = torchrun(tmp_path, "-m", "reprodl.cli", "train", str(config), "--resume", "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    record = read_record(open_dataset(str(tmp_path / "models" / "digits-ddp")))
    assert record.training.resumed is not None and record.training.resumed.from_epoch == [1]
    assert record.results.weights_sha256 == ddp_trained.record.results.weights_sha256
    assert record.training.distributed == ddp_trained.record.training.distributed
    assert [m.train_loss for m in record.results.history] == [m.train_loss for m in ddp_trained.record.results.history]


def test_shard_batches_cover_each_rank_shard_and_reseed_each_epoch() -> None:
    samplers = [ShardBatches(10, 3, group=Group(r, 2, "gloo"), seed=4, shuffle=True) for r in (0, 1)]
    first = [[i for b in s for i in b] for s in samplers]
    assert sorted(first[0] + first[1]) == list(range(10)) and len(samplers[0]) == 2
    assert [len(b) for b in samplers[0]] == [3, 2]
    for s in samplers:
        s.set_epoch(1)
    second = [[i for b in s for i in b] for s in samplers]
    assert second != first and sorted(second[0] + second[1]) == list(range(10))
    samplers[0].set_epoch(0)
    assert [i for b in samplers[0] for i in b] == first[0]  # an epoch's order is its seed's alone
    assert samplers[0].order_digest == samplers[0].digests[0] and samplers[0].digests[0] != samplers[0].digests[1]


def test_a_checkpoint_resumes_only_with_the_number_of_processes_it_was_written_by() -> None:
    from reprodl.training._trainer_checkpoints import rank_state as _rank_state

    state = {"rng": 0, "ranks": [{"rng": 10}, {"rng": 11}]}
    assert _rank_state(state, Group(1, 2, "gloo")) == {"rng": 11}
    with pytest.raises(ParametersError, match="random states of 2 process.*runs in 1.*--nproc-per-node 2"):
        _rank_state(state, None)
    with pytest.raises(ParametersError, match="random states of 1 process.*runs in 2"):
        _rank_state({"rng": 0}, Group(0, 2, "gloo"))


def test_a_ddp_trainer_record_is_refused_where_its_processes_cannot_run() -> None:
    from reprodl.reproduction.ddp import train_under_torchrun

    dist = DistributedInfo(backend="nccl", world_size=64, rank_seeds=list(range(64)))
    record: Any = SimpleNamespace(training=SimpleNamespace(distributed=dist), code=SimpleNamespace(run=None))
    model_ds: Any = SimpleNamespace(uri="file:///m")
    with pytest.raises(ReproductionError, match="64 processes on nccl.*reproduce it where 64 GPUs are available"):
        train_under_torchrun(model_ds, record, base="/tmp/none", options={})


def test_only_a_lost_peer_becomes_an_interruption_that_keeps_the_checkpoint() -> None:
    from reprodl.errors import RankLostError
    from reprodl.training.distributed import peer_loss_as_interruption

    group = Group(0, 2, "gloo")
    with pytest.raises(RankLostError, match="rank 0 of 2 lost another rank.*Connection closed by peer.*--resume"):
        with peer_loss_as_interruption(group):
            raise RuntimeError("[pair.cc:553] Connection closed by peer [127.0.0.1]:1. This is typically caused by")
    with pytest.raises(RuntimeError, match="^mat1 and mat2 shapes cannot be multiplied$"):
        with peer_loss_as_interruption(group):
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")


def test_several_trainings_are_refused_under_torchrun(
    cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(tmp_path / "train.yaml", "file:///nowhere", tmp_path / "models")
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = cli("train", config, "--seeds", "3")
    assert result.exit_code != 0 and "one of 2 (torchrun)" in result.stderr and "--set seed=N" in result.stderr
    assert list((tmp_path / "models").iterdir()) == []
