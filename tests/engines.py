"""Real cluster engines on 127.0.0.1 for the executor tests: a one-node Slurm and a local Ray.

- Slurm: Debian's ``slurm-wlm`` and ``munge``. :func:`slurm_cluster` writes a minimal
  ``slurm.conf`` for one node on 127.0.0.1 (select/cons_tres, proctrack/linuxproc, no cgroups,
  no accounting), starts ``munged`` on a private socket and key, ``slurmctld`` and ``slurmd``,
  waits until ``sinfo`` shows the node idle, and stops all three after.
- Ray: ``ray start --head`` on 127.0.0.1 (the ``ray`` of the test extra), stopped after.

Where an engine is missing the tests skip, saying why, unless ``REPRODL_REQUIRE_SERVERS=1``
(CI, whose ``.ci/run`` installs both), where they fail; ``.ci/run`` sets
``REPRODL_NO_SLURM_REASON`` when it tried to install Slurm and could not.

Import the fixtures into a test module with ``from engines import *``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from remote_servers import unavailable

__all__ = ["RayCluster", "SlurmCluster", "ray_cluster", "slurm_cluster"]

HOST = "127.0.0.1"
START_TIMEOUT = 60.0
SBIN = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")
REPO = Path(__file__).resolve().parents[1]


def _which(name: str) -> str | None:
    return shutil.which(name) or next((f"{d}/{name}" for d in SBIN if os.access(f"{d}/{name}", os.X_OK)), None)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _env() -> dict[str, str]:
    """The environment jobs run in: this checkout's source first (the jobs import reprodl)."""
    path = os.environ.get("PYTHONPATH", "")
    src = str(REPO / "src")
    return {**os.environ, "PYTHONPATH": f"{src}:{path}" if path else src, "OMP_NUM_THREADS": "1"}


# --- Slurm -----------------------------------------------------------------------------
@dataclass
class SlurmCluster:
    conf: Path
    node: str
    partition: str
    env: dict[str, str]


def _slurm_conf(root: Path, node: str, user: str, cpus: int, socket_path: Path) -> str:
    ports = (_free_port(), _free_port())
    return f"""ClusterName=reprodltest
SlurmctldHost={node}({HOST})
SlurmctldPort={ports[0]}
SlurmdPort={ports[1]}
SlurmUser={user}
SlurmdUser={user}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={socket_path}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
SlurmdTimeout=60
InactiveLimit=0
MinJobAge=300
NodeName={node} NodeAddr={HOST} CPUs={cpus} RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


def _stop(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def _tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-1500:]
    except OSError:
        return ""


def _start_munge(root: Path, procs: list[subprocess.Popen[bytes]]) -> Path:
    munged = _which("munged")
    assert munged is not None
    key, sock = root / "munge.key", root / "munge.socket"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    cmd = [munged, "-F", "--force", f"--key-file={key}", f"--socket={sock}", f"--pid-file={root}/munged.pid"]
    cmd += [f"--log-file={root}/munged.log", f"--seed-file={root}/munged.seed"]
    procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(root / "munged.err", "wb")))
    _wait(lambda: sock.exists(), "munged", root / "munged.err", procs[-1])
    return sock


def _wait(ready: Callable[[], bool], what: str, log: Path, proc: subprocess.Popen[bytes] | None) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if ready():
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {_tail(log)}")
        time.sleep(0.2)
    raise RuntimeError(f"{what} not ready within {START_TIMEOUT:.0f} s: {_tail(log)}")


def _node_idle(env: dict[str, str]) -> bool:
    out = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True, check=False)
    return out.stdout.strip() == "idle"


def _first_job(root: Path, env: dict[str, str]) -> None:
    """One trivial job run to its end, so that the cluster is known to take jobs before a test submits."""
    cmd = ["sbatch", "--wait", "-p", "debug", "-t", "1", "-o", str(root / "first-job.out"), "--wrap", "true"]
    try:
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=START_TIMEOUT, check=False)
    except subprocess.TimeoutExpired as exc:
        log = _tail(root / "slurmctld.log")
        raise RuntimeError(f"a first job did not end within {START_TIMEOUT:.0f} s: {log}") from exc
    if res.returncode != 0:
        raise RuntimeError(
            f"a first job failed ({res.returncode}): {res.stderr[-1500:]} {_tail(root / 'slurmctld.log')}"
        )


@contextlib.contextmanager
def running_slurm(root: Path) -> Iterator[SlurmCluster]:
    """munged, slurmctld and slurmd for one node on 127.0.0.1, until the block ends."""
    node = socket.gethostname().split(".")[0]
    user = "root" if os.getuid() == 0 else os.environ.get("USER", "root")
    (root / "state").mkdir(parents=True)
    (root / "spool").mkdir()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        sock = _start_munge(root, procs)
        conf = root / "slurm.conf"
        conf.write_text(_slurm_conf(root, node, user, os.cpu_count() or 1, sock))
        env = {**_env(), "SLURM_CONF": str(conf)}
        for daemon in ("slurmctld", "slurmd"):
            path = _which(daemon)
            assert path is not None
            cmd = [path, "-D", "-f", str(conf), *(["-i"] if daemon == "slurmctld" else ["-N", node])]
            procs.append(
                subprocess.Popen(cmd, env=env, stdout=open(root / f"{daemon}.out", "wb"), stderr=subprocess.STDOUT)
            )
        _wait(lambda: _node_idle(env), "slurmd (sinfo idle)", root / "slurmd.log", procs[-1])
        _first_job(root, env)
        yield SlurmCluster(conf=conf, node=node, partition="debug", env=env)
    finally:
        for proc in reversed(procs):
            _stop(proc)


def slurm_missing() -> str | None:
    missing = [name for name in ("munged", "slurmctld", "slurmd", "sinfo", "sbatch") if _which(name) is None]
    if missing:
        return f"Slurm is not installed (no {', '.join(missing)}): apt-get install slurm-wlm munge"
    with contextlib.suppress(ImportError):
        import submitit  # noqa: F401 - only whether it imports

        return None
    return "submitit is not installed: pip install -e '.[test]'"


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    told = os.environ.get("REPRODL_NO_SLURM_REASON")
    if told:  # .ci/run tried to install it and could not (a transient apt error): skip, saying why
        pytest.skip(told)
    reason = slurm_missing()
    if reason:
        unavailable(reason)
    root = Path(tmp_path_factory.mktemp("slurm"))
    with running_slurm(root) as cluster:
        old = os.environ.get("SLURM_CONF")
        os.environ["SLURM_CONF"] = str(cluster.conf)
        try:
            yield cluster
        finally:
            if old is None:
                os.environ.pop("SLURM_CONF", None)
            else:
                os.environ["SLURM_CONF"] = old


# --- Ray -------------------------------------------------------------------------------
@dataclass
class RayCluster:
    address: str


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayCluster]:
    try:
        import ray  # noqa: F401 - only whether it imports
    except ImportError:
        unavailable("Ray is not installed: pip install -e '.[test]' (ray is in the test extra)")
    ray_bin = str(Path(sys.executable).parent / "ray")
    port = _free_port()
    temp = tmp_path_factory.mktemp("ray")
    cmd = [ray_bin, "start", "--head", "--block", f"--node-ip-address={HOST}", f"--port={port}", "--num-cpus=2"]
    cmd += ["--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}"]
    env = {**_env(), "RAY_USAGE_STATS_ENABLED": "0"}
    log = temp / "ray-start.log"
    # --block: this process owns the cluster's processes, and stops them when it is stopped (never
    # `ray stop`, which would stop every Ray cluster on the machine).
    proc = subprocess.Popen(cmd, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    try:
        _wait(lambda: "Ray runtime started" in _tail(log) or "ray.init()" in _tail(log), "ray start", log, proc)
        yield RayCluster(address=f"{HOST}:{port}")
    finally:
        with contextlib.suppress(Exception):
            import ray as ray_module

            ray_module.shutdown()
        _stop(proc)
