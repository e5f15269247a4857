"""`--executor slurm|ray`: compare and reproduce on real engines (a one-node Slurm, a local Ray).

Nothing is mocked: :mod:`engines` starts munged, slurmctld and slurmd on 127.0.0.1, and
``ray start --head``. Each compare is 2x2 members of one epoch on the digits, and must give the
claim the local process gives for the same seeds; each member's record names where it ran.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytest.register_assert_rewrite("train_fixtures", "engines")

from engines import *  # noqa: F403 - the fixtures
from engines import RayCluster, SlurmCluster
from train_fixtures import digits_config

from reprodl import keys
from reprodl.errors import ParametersError
from reprodl.modeldataset.read import load_record
from reprodl.provenance import Placement
from reprodl.reproduction import claims, executors
from reprodl.reproduction.executors import Executor, allocation_label

pytest_plugins = ["train_fixtures"]

REPO = Path(__file__).resolve().parents[2]
SET_B = ["--set-b", "learning_rate=0.005"]


def _numbers(result: dict) -> dict:
    keep = ("probability_a_better", "ci_low", "ci_high", "verdict", "metric", "n")
    runs = {s: [(r["seed"], r["value"]) for r in result["runs"][s]] for s in ("a", "b")}
    return {**{k: result[k] for k in keep}, "runs": runs}


def _config(tmp_path: Path, data_uri: str, name: str = "eng") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(digits_config(data_uri, tmp_path / "out", name=name)))
    return path


def _cli(*args: str, env: dict[str, str] | None = None, timeout: float = 240) -> dict:
    cmd = [sys.executable, "-m", "reprodl.cli", *args, "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def local_claim(digits_split_master: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The claim of the 2x2 compare on this machine's own process (the reference)."""
    tmp = tmp_path_factory.mktemp("local")
    cfg = _config(tmp, digits_split_master)
    (tmp / "local").mkdir()
    return claims.compare(cfg, seeds=2, set_b=["learning_rate=0.005"], jobs=1, output=str(tmp / "local")).to_dict()


def _placements(result: dict) -> list[Placement]:
    found = []
    for side in ("a", "b"):
        for run in result["runs"][side]:
            placement = load_record(run["uri"]).environment.placement
            assert placement is not None
            found.append(placement)
    return found


# --- without an engine -----------------------------------------------------------------------
def test_an_unknown_executor_is_refused_naming_the_engines():
    with pytest.raises(ParametersError, match=r"--executor 'pbs' is not an engine: use one of local, slurm, ray"):
        Executor("pbs")
    with pytest.raises(ParametersError, match=r"cpus 0"):
        Executor("slurm", cpus=0)


def test_a_local_run_records_its_node_and_no_scheduler(local_claim: dict):
    placement = _placements(local_claim)[0]
    assert placement.scheduler == "local" and placement.job_id is None and placement.allocation is None
    assert placement.node == os.uname().nodename.split(".")[0] or placement.node == os.uname().nodename


def test_allocation_labels():
    was = Placement(scheduler="slurm", job_id="7_0", node="n1", allocation="c/7")
    assert allocation_label(was, was) == executors.SAME_ALLOCATION
    assert allocation_label(was, Placement(scheduler="slurm", job_id="9", node="n1", allocation="c/9")) == "same node"
    assert allocation_label(was, Placement(scheduler="ray", node="n2", allocation="ray/x")) == "cross-allocation"
    assert allocation_label(None, was).startswith("unknown")


# --- Ray -------------------------------------------------------------------------------------
@pytest.mark.slow
def test_compare_on_ray_gives_the_local_claim_and_names_its_tasks(
    ray_cluster: RayCluster,
    local_claim: dict,
    digits_split_master: str,
    tmp_path: Path,
):
    cfg = _config(tmp_path, digits_split_master)
    ray = Executor("ray", ray_address=ray_cluster.address)
    (tmp_path / "ray").mkdir()
    result = claims.compare(
        cfg, seeds=2, set_b=["learning_rate=0.005"], output=str(tmp_path / "ray"), executor=ray
    ).to_dict()
    assert _numbers(result) == _numbers(local_claim)
    placements = _placements(result)
    assert {p.scheduler for p in placements} == {"ray"}
    assert len({p.job_id for p in placements}) == 4  # one task each
    assert all(p.allocation and p.allocation.startswith("ray/") for p in placements)


@pytest.mark.slow
def test_reproduce_on_ray_is_identical_and_says_where(ray_cluster: RayCluster, trained_model, tmp_path: Path):
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}:{os.environ.get('PYTHONPATH', '')}"}
    report = _cli("reproduce", trained_model.uri, "--executor", "ray", "--ray-address", ray_cluster.address, env=env)
    assert report["verdict"] == "identical"
    assert report["allocation"]["label"] == "same node"  # trained here, re-run in a Ray task on this node
    assert report["allocation"]["rerun"]["scheduler"] == "ray"


# --- Slurm -----------------------------------------------------------------------------------
def _state_files(output: Path) -> list[Path]:
    return sorted((output / keys.EXECUTOR_STATE_DIR).glob("*.json"))


@pytest.mark.slow
def test_compare_on_slurm_attaches_after_an_interrupt_and_gives_the_local_claim(
    slurm_cluster: SlurmCluster,
    local_claim: dict,
    digits_split_master: str,
    tmp_path: Path,
):
    cfg, output = _config(tmp_path, digits_split_master), tmp_path / "slurm"
    output.mkdir()
    args = ["compare", str(cfg), "--seeds", "2", *SET_B, "--output", str(output), "--executor", "slurm"]
    args += ["--partition", slurm_cluster.partition, "--time", "10"]
    first = subprocess.Popen(
        [sys.executable, "-m", "reprodl.cli", *args, "--json"],
        env=slurm_cluster.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        # as at a terminal: a job started in the background (nohup ... &, as CI may) inherits SIGINT ignored
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 600  # a loaded machine imports torch slowly
    while not _state_files(output) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    ended_by_itself = first.poll()
    first.send_signal(signal.SIGINT)  # the submitting process goes; its jobs stay
    stdout, stderr = first.communicate(timeout=60)
    states = _state_files(output)
    said = f"exit {first.returncode} (by itself: {ended_by_itself}); stdout {stdout.decode()[-2000:]!r}"
    assert len(states) == 1, f"{said}; stderr {stderr.decode()[-2000:]!r}"
    submitted = [j["job_id"] for j in json.loads(states[0].read_text())["jobs"]]

    result = _cli(*args, env=slurm_cluster.env)  # the same command: attaches, submits nothing new
    assert _numbers(result) == _numbers(local_claim)
    placements = _placements(result)
    assert [p.job_id for p in placements] == [submitted[i] for i in (0, 2, 1, 3)]  # plan order is a0 b0 a1 b1
    assert {p.scheduler for p in placements} == {"slurm"} and {p.node for p in placements} == {slurm_cluster.node}
    assert not _state_files(output)  # all collected: the same command again is a new compare


@pytest.mark.slow
def test_reproduce_on_slurm_is_identical_on_a_fresh_allocation(
    slurm_cluster: SlurmCluster,
    trained_model,
    tmp_path: Path,
):
    args = ["reproduce", trained_model.uri, "--executor", "slurm", "--time", "10"]
    done = subprocess.run(
        [sys.executable, "-m", "reprodl.cli", *args, "--json"],
        env=slurm_cluster.env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["verdict"] == "identical"
    assert report["allocation"]["label"] == "same node"  # one node: another allocation on the same node
    assert report["allocation"]["rerun"]["scheduler"] == "slurm"
    assert report["allocation"]["rerun"]["allocation"].startswith("reprodltest/")


@pytest.mark.parametrize("command", ["compare", "ablate", "reproduce", "train"])
def test_every_command_that_runs_several_trainings_takes_an_executor(command: str, cli):
    args = {
        "compare": ["compare", "a.yaml", "--seeds", "2"],
        "ablate": ["ablate", "a.yaml", "--variant", "x: lr=1", "--seeds", "2"],
        "reproduce": ["reproduce", "models/m"],
        "train": ["train", "a.yaml", "--seeds", "2"],
    }[command]
    result = cli(*args, "--executor", "pbs")
    assert result.exit_code != 0
    assert "--executor 'pbs' is not an engine: use one of local, slurm, ray" in result.stderr


def test_train_refuses_an_executor_for_one_training(digits_split_master: str, tmp_path: Path, cli):
    result = cli("train", _config(tmp_path, digits_split_master), "--executor", "ray")
    said = " ".join(result.stderr.replace("│", " ").split())  # the message in rich's box, unwrapped
    assert result.exit_code != 0 and "runs several trainings: give --seeds or --splits" in said


@pytest.mark.slow
def test_train_seeds_on_ray_gives_the_local_summary(ray_cluster: RayCluster, digits_split_master: str, tmp_path: Path):
    from reprodl.training.config import load_config
    from reprodl.training.multirun import train_many

    cfg = _config(tmp_path, digits_split_master)
    (tmp_path / "out").mkdir()
    local = train_many(load_config(cfg, ["output=" + str(tmp_path / "out")]), seeds=2)
    (tmp_path / "ray").mkdir()
    on_ray = executors.train_many_on(
        Executor("ray", ray_address=ray_cluster.address), load_config(cfg, ["output=" + str(tmp_path / "ray")]), seeds=2
    )
    assert on_ray.summary["final"] == local.summary["final"]
    assert [m["seed"] for m in on_ray.summary["models"]] == [0, 1]
    assert {load_record(u).environment.placement.scheduler for u in on_ray.model_uris} == {"ray"}


@pytest.mark.slow
def test_a_failed_slurm_job_is_reported_with_its_log(slurm_cluster: SlurmCluster, trained_model, tmp_path: Path):
    missing = tmp_path / "no-such-copy"
    args = ["reproduce", trained_model.uri, "--executor", "slurm", "--data", f"train={missing}"]
    done = subprocess.run(
        [sys.executable, "-m", "reprodl.cli", *args],
        env=slurm_cluster.env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    said = " ".join(done.stderr.split())
    assert done.returncode != 0
    assert "ended without a report" in said and "the end of its log" in said
    assert str(missing) in said  # the job's own error, quoted from its log


def test_a_site_sets_the_executor_options_in_the_environment(cli, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(keys.EXECUTOR_ENV["executor"], "pbs")
    result = cli("compare", "a.yaml", "--seeds", "2")
    assert result.exit_code != 0 and "--executor 'pbs' is not an engine" in result.stderr
    monkeypatch.setenv(keys.EXECUTOR_ENV["executor"], "slurm")
    monkeypatch.setenv(keys.EXECUTOR_ENV["cpus"], "0")
    result = cli("compare", "a.yaml", "--seeds", "2")
    assert result.exit_code != 0 and "cpus 0" in result.stderr
