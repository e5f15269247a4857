"""DistributedDataParallel with capture (issue 12, part 1): a ``start_run`` script under real
``torchrun --nproc-per-node 2`` (gloo, CPU) writes one model dataset from rank 0 whose record
holds every rank's seed and shard order; ``reprodl reproduce`` re-runs it under torchrun and
gets ``identical``; a rank that dies leaves no model dataset.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from user_scripts import child_env, user_repo

from reprodl.errors import ReproductionError
from reprodl.provenance.record import DistributedInfo
from reprodl.store import clean_staging
from reprodl.training.distributed import Group, RecordedDistributedSampler

pytest_plugins = ["train_fixtures"]

DDP_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    import torch.distributed as dist
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel

    import reprodl
    from reprodl import GenNet, TensorDataSet

    torch.set_num_threads(1)
    base, data = sys.argv[1], sys.argv[2]
    dist.init_process_group("gloo")
    if os.environ.get("KILL_RANK") == str(dist.get_rank()):  # a rank that dies at step KILL_AT_STEP
        import torch.optim.sgd as sgd
        real, count = sgd.SGD.step, [0]
        def killer(*a, **k):
            count[0] += 1
            if count[0] >= int(os.environ["KILL_AT_STEP"]):
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*a, **k)
        sgd.SGD.step = killer
    with reprodl.start_run(base, "ddp-digits", seed=5, params={"lr": 0.05}) as run:
        train = run.use(TensorDataSet(data, usetype="train"))
        ddp = DistributedDataParallel(GenNet(input_channels=1, input_dim=8))
        opt = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
        run.watch(ddp, opt, loss=nn.NLLLoss())
        loader = run.loader(train, batch_size=32, shuffle=True)
        for epoch in run.epochs(2):
            for x, y in loader:
                opt.zero_grad()
                nn.functional.nll_loss(ddp(nn.functional.dropout(x, 0.1)), y).backward()
                opt.step()
            run.log(epoch=epoch)
        run.save(ddp)
    if dist.get_rank() == 0:
        print(run.uri)
    del ddp, opt, loader  # nothing may hold the wrapper at exit: gloo can abort the process there
    dist.barrier()  # the ranks leave together (gloo may abort a rank whose peer already exited)
    dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)  # torch 2.13's gloo threads can abort at interpreter teardown after a good run
    """
)


def torchrun(repo: Path, base: Path, data: str, **env: str) -> subprocess.CompletedProcess[str]:
    base.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    return subprocess.run(
        [*command, "train_ddp.py", str(base), data],
        cwd=repo,
        env={**child_env(), **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def ddp_model(digits_split_master: str, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A 2-process run (2 epochs of the digits) and its record."""
    from reprodl.modeldataset.read import read_record
    from reprodl.store import open_dataset

    repo = user_repo(tmp_path_factory.mktemp("ddp"), {"train_ddp.py": DDP_SCRIPT}, commit_message="ddp")
    base = repo / "models"
    proc = torchrun(repo, base, digits_split_master)
    assert proc.returncode == 0, proc.stderr[-4000:]
    uri = proc.stdout.strip().splitlines()[-1]
    return SimpleNamespace(uri=uri, record=read_record(open_dataset(uri)), base=base, repo=repo)


@pytest.mark.slow
def test_a_two_process_run_writes_one_model_recording_every_rank(ddp_model: SimpleNamespace) -> None:
    assert [p.name for p in ddp_model.base.iterdir()] == ["ddp-digits"]  # rank 0 only; nothing staged left
    t = ddp_model.record.training
    assert t.world_size == 2 and t.distributed is not None
    d = t.distributed
    assert (d.backend, d.world_size, d.rank_seeds) == ("gloo", 2, [5, 6])
    assert d.sampler == {"shuffle": True, "seed": 6, "drop_last": False}
    assert [len(r) for r in d.rank_order_digests] == [2, 2] and d.rank_order_digests[0] != d.rank_order_digests[1]
    assert t.data_order_digests == d.rank_order_digests[0]
    assert t.optimizer_steps == 2 * 23  # 1,438 samples in 2 shards of 719, batches of 32
    assert ddp_model.record.architecture.class_name == "GenNet"  # the module inside the DDP wrapper


@pytest.mark.slow
def test_a_ddp_model_reproduces_identical_under_torchrun(ddp_model: SimpleNamespace) -> None:
    from reprodl.reproduction.reexec import reexecution_plan
    from reprodl.reproduction.rerun import reproduce

    plan = reexecution_plan(ddp_model.uri)
    assert plan is not None and plan.command[1:7] == [
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "train_ddp.py",
    ]
    report = reproduce(ddp_model.uri, trust_code=True, on_output=lambda line: None)
    assert report.verdict == "identical", report.reasons


@pytest.mark.slow
def test_a_killed_rank_fails_the_run_and_writes_no_model(digits_split_master: str, tmp_path: Path) -> None:
    repo = user_repo(tmp_path / "repo", {"train_ddp.py": DDP_SCRIPT}, commit_message="ddp")
    base = tmp_path / "models"
    proc = torchrun(repo, base, digits_split_master, KILL_RANK="1", KILL_AT_STEP="10")
    assert proc.returncode != 0
    assert "FAILED" in proc.stderr and "SIGKILL" in proc.stderr
    clean_staging(base)  # what a rank killed by torchrun left is stale: removable
    assert list(base.iterdir()) == []


def test_a_ddp_record_is_refused_where_its_processes_cannot_run() -> None:
    from reprodl.reproduction.reexec import _launcher

    dist = DistributedInfo(backend="nccl", world_size=64, rank_seeds=list(range(64)))
    record: Any = SimpleNamespace(training=SimpleNamespace(distributed=dist))
    model_ds: Any = SimpleNamespace(uri="file:///m")
    with pytest.raises(ReproductionError, match="64 processes on nccl.*reproduce it where 64 GPUs are available"):
        _launcher(model_ds, record)


def test_the_distributed_sampler_shards_and_reseeds_each_pass() -> None:
    orders: dict[int, list[str]] = {0: [], 1: []}
    samplers = [
        RecordedDistributedSampler(
            range(10), group=Group(r, 2, "gloo"), seed=3, shuffle=True, drop_last=False, on_order=orders[r].append
        )
        for r in (0, 1)
    ]
    first = [list(s) for s in samplers]
    assert sorted(first[0] + first[1]) == list(range(10))
    second = [list(s) for s in samplers]
    assert second != first and sorted(second[0] + second[1]) == list(range(10))
    again = RecordedDistributedSampler(
        range(10), group=Group(0, 2, "gloo"), seed=3, shuffle=True, drop_last=False, on_order=lambda d: None
    )
    assert list(again) == first[0]
    assert len(orders[0]) == 2 and orders[0] != orders[1]
    assert samplers[0].settings() == {"shuffle": True, "seed": 3, "drop_last": False}


def test_the_built_in_trainer_refuses_torchrun_without_a_process_group(
    digits_split_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from train_fixtures import train_digits

    from reprodl.errors import ParametersError

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ParametersError, match="one of 2 processes \\(torchrun\\), but no process group.*reprodl train"):
        train_digits(tmp_path, "m", digits_split_uri)
    assert list(tmp_path.glob("m")) == []
