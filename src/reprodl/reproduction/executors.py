"""Where the trainings of a compare, an ablation or a reproduce run: this machine, Slurm or Ray.

reprodl grows no scheduler of its own; it hands the members to the engine a cluster already runs:

* ``local``: this machine's pool of single-threaded worker processes (the default, as before);
* ``slurm``: one Slurm job per member, a job array submitted through ``submitit`` (partition,
  time, CPUs, GPUs and memory from :class:`Executor`). The jobs submitted are kept in a state
  file under the output (``.reprodl-executor/<plan>.json``): an interrupted compare, run again
  the same way, attaches to them instead of submitting again. Members are read back from their
  records as ``reprodl collect`` reads them (digest checked), never from a pickle;
* ``ray``: one Ray task per member on the cluster at ``ray_address`` (a local one by default).

Each member's record names where it ran (``environment.placement``: scheduler, job id, node,
allocation), and :func:`allocation_label` says whether a re-run ran on the original's allocation,
its node, or elsewhere ("cross-allocation": NCCL rings and GPU models can differ there).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from reprodl import keys
from reprodl.errors import DatasetNotFoundError, MissingDependencyError, ParametersError, ReproductionError
from reprodl.files import writing_output
from reprodl.parsing import load_json
from reprodl.provenance import Placement
from reprodl.store import open_dataset
from reprodl.store.uris import dataset_uri, local_path

SAME_ALLOCATION, SAME_NODE, CROSS_ALLOCATION = "same allocation", "same node", "cross-allocation"
POLL_SECONDS = 1.0  # how often the Slurm jobs' states are read while waiting


@dataclasses.dataclass(frozen=True)
class Executor:
    """An engine and its options (``reprodl compare --executor slurm --partition gpu ...``)."""

    kind: str = "local"
    ray_address: str | None = None
    partition: str | None = None
    time_min: int = 60
    cpus: int = 1
    gpus: int = 0
    mem_gb: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in keys.EXECUTORS:
            raise ParametersError(f"--executor {self.kind!r} is not an engine: use one of {', '.join(keys.EXECUTORS)}")
        if self.cpus < 1 or self.gpus < 0 or self.time_min < 1 or (self.mem_gb is not None and self.mem_gb <= 0):
            raise ParametersError(
                f"the executor's resources are cpus {self.cpus}, gpus {self.gpus}, time {self.time_min} min, "
                f"mem {self.mem_gb} GB: give cpus >= 1, gpus >= 0, time >= 1 and mem > 0"
            )

    @property
    def local(self) -> bool:
        return self.kind == "local"


LOCAL = Executor()


def plan_key(parts: Any) -> str:
    """A short digest of what decides a compare's members (configs, seeds, variation): the state file's name."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _state_path(output: str, key: str) -> Path:
    base = local_path(output)
    if base is None:
        raise ParametersError(
            f"--executor slurm keeps its jobs' state and logs under the output, but {output} is not a local "
            "path: give --output a directory on a file system the cluster's nodes share"
        )
    return base.resolve() / keys.EXECUTOR_STATE_DIR / f"{key}.json"


def attached_claim(executor: Executor, output: str, key: str) -> str | None:
    """The claim name of a Slurm compare already submitted with this plan (to attach to), else None."""
    if executor.kind != "slurm":
        return None
    path = _state_path(output, key)
    if not path.exists():
        return None

    state = load_json(path.read_bytes(), what=str(path), error=ParametersError)
    return str(state["claim"])


# --- running members -------------------------------------------------------------------------
Member = tuple[str, tuple[Any, ...]]  # (name, arguments of the member function)


def run_members(
    executor: Executor,
    fn: Callable[..., Any],
    members: Sequence[Member],
    *,
    on_done: Callable[[int, Any], None] | None = None,
    output: str = ".",
    key: str = "",
    claim: str = "",
) -> list[Any]:
    """Run ``fn(*args)`` for every member on a Ray cluster (its results) or on Slurm (None each:
    read the members' records). ``on_done(i, result)`` is called as member ``i`` finishes (``result``
    None on Slurm)."""
    if executor.kind == "ray":
        return _run_ray(executor, fn, members, on_done)
    if executor.kind == "slurm":
        return _run_slurm(executor, fn, members, on_done, _state_path(output, key), claim)
    raise ParametersError(f"run_members runs on slurm or ray, not {executor.kind!r}: local runs use the pool")


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise MissingDependencyError("--executor ray needs Ray: pip install 'ray[default]'") from None
    return ray


def _connect_ray(executor: Executor) -> Any:
    ray = _ray()
    if not ray.is_initialized():
        ray.init(
            address=executor.ray_address,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
            runtime_env={"env_vars": {"OMP_NUM_THREADS": str(executor.cpus)}},
        )
    return ray


def _run_ray(
    executor: Executor, fn: Callable[..., Any], members: Sequence[Member], on_done: Callable[[int, Any], None] | None
) -> list[Any]:
    ray = _connect_ray(executor)
    task = ray.remote(num_cpus=executor.cpus, num_gpus=executor.gpus, max_retries=0)(in_ray_task)
    refs = [task.remote(fn, *args) for _, args in members]
    index = {ref: i for i, ref in enumerate(refs)}
    pending = list(refs)
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            result = ray.get(done[0])  # raises the member's error here
            if on_done is not None:
                on_done(index[done[0]], result)
        return list(ray.get(refs))
    except BaseException:
        for ref in pending:
            ray.cancel(ref)
        raise


def in_ray_task(fn: Callable[..., Any], *args: Any) -> Any:
    """A member in a Ray task: where it runs set for the record (Ray names no job in the environment)."""
    import ray

    context = ray.get_runtime_context()
    os.environ[keys.PLACEMENT_SCHEDULER_ENV] = "ray"
    os.environ[keys.PLACEMENT_JOB_ENV] = str(context.get_task_id())
    os.environ[keys.PLACEMENT_ALLOCATION_ENV] = f"ray/{context.get_node_id()}"
    try:
        return fn(*args)
    finally:
        for name in (keys.PLACEMENT_SCHEDULER_ENV, keys.PLACEMENT_JOB_ENV, keys.PLACEMENT_ALLOCATION_ENV):
            os.environ.pop(name, None)


# --- Slurm (submitit) ------------------------------------------------------------------------
def _submitit() -> Any:
    try:
        import submitit
    except ImportError:
        raise MissingDependencyError("--executor slurm needs submitit: pip install submitit") from None
    return submitit


def call(fn: Callable[..., Any], args: Sequence[Any]) -> Any:
    """``fn(*args)``: what each array task of a Slurm job array runs."""
    return fn(*args)


def _run_slurm(
    executor: Executor,
    fn: Callable[..., Any],
    members: Sequence[Member],
    on_done: Callable[[int, Any], None] | None,
    state_path: Path,
    claim: str,
) -> list[Any]:
    """Submit the members as one job array (or attach to the one submitted before); wait for all.

    Returns each member's job id and the tail of its log: the caller reads the member from its
    record, and names the log where the member failed.
    """
    submitit = _submitit()
    folder = state_path.with_suffix("")
    jobs = _attach(submitit, state_path, folder, members) or _submit(executor, fn, members, state_path, claim)
    _wait(jobs, on_done)
    state_path.unlink(missing_ok=True)  # all finished: the same command again is a new compare
    return [{"job_id": str(job.job_id), "log": _log_tail(job)} for job in jobs]


def _submit(executor: Executor, fn: Callable[..., Any], members: Sequence[Member], state: Path, claim: str) -> list:
    submitit = _submitit()
    folder = state.with_suffix("")
    folder.mkdir(parents=True, exist_ok=True)
    slurm = submitit.SlurmExecutor(folder=folder)
    params: dict[str, Any] = dict(time=executor.time_min, cpus_per_task=executor.cpus, array_parallelism=len(members))
    if executor.partition:
        params["partition"] = executor.partition
    if executor.gpus:
        params["gpus_per_node"] = executor.gpus
    if executor.mem_gb is not None:
        params["mem"] = f"{max(1, round(executor.mem_gb * 1024))}M"
    slurm.update_parameters(**params)
    jobs = slurm.map_array(call, [fn] * len(members), [args for _, args in members])
    entries = [{"name": name, "job_id": str(job.job_id)} for (name, _), job in zip(members, jobs)]
    with writing_output("the Slurm jobs' state file", state):
        state.write_text(json.dumps({"claim": claim, "folder": str(folder), "jobs": entries}, indent=2) + "\n")
    return list(jobs)


def _attach(submitit: Any, state: Path, folder: Path, members: Sequence[Member]) -> list | None:
    """The jobs submitted before for these members (by the state file), or None when there are none."""
    if not state.exists():
        return None

    entries = load_json(state.read_bytes(), what=str(state), error=ParametersError)["jobs"]
    if [e["name"] for e in entries] != [name for name, _ in members]:
        raise ParametersError(f"{state} names other members than this command's: remove it to submit this compare anew")
    return [submitit.SlurmJob(folder=folder, job_id=e["job_id"]) for e in entries]


def _queued(jobs: Sequence[Any]) -> set[str]:
    """The job ids (ARRAY_TASK) of ``jobs`` that Slurm still has pending or running."""
    import subprocess

    arrays = sorted({str(job.job_id).split("_")[0] for job in jobs})
    cmd = ["squeue", "-h", "-r", "-o", "%i", "-j", ",".join(arrays)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=60)
    if done.returncode != 0 and "Invalid job id" not in done.stderr:
        raise ReproductionError(
            f"`{' '.join(cmd)}` failed ({done.returncode}: {done.stderr.strip()[:300]}): is the Slurm controller "
            "up? The jobs keep running: run the same command again to attach to them"
        )
    return set(done.stdout.split()) if done.returncode == 0 else set()


def _wait(jobs: Sequence[Any], on_done: Callable[[int, Any], None] | None) -> None:
    """Until no job is queued; ``on_done(i, None)`` as job ``i`` leaves the queue."""
    left = set(range(len(jobs)))
    while left:
        queued = _queued([jobs[i] for i in left])
        for i in sorted(left):
            if str(jobs[i].job_id) not in queued:
                left.discard(i)
                if on_done is not None:
                    on_done(i, None)
        if left:
            time.sleep(POLL_SECONDS)


def _log_tail(job: Any, n: int = 1500) -> str:
    for path in (job.paths.stderr, job.paths.stdout):
        try:
            text = Path(path).read_text(errors="replace")
        except OSError:
            continue
        if text.strip():
            return text[-n:]
    return ""


# --- where a re-run ran ----------------------------------------------------------------------
def allocation_label(was: Placement | None, now: Placement) -> str:
    """``same allocation``, ``same node`` (another allocation on it) or ``cross-allocation``."""
    if was is None:
        return "unknown (the original's record does not say where it ran)"
    if was.allocation is not None and was.allocation == now.allocation and was.node == now.node:
        return SAME_ALLOCATION
    return SAME_NODE if was.node == now.node else CROSS_ALLOCATION


# --- train --seeds / --splits through an engine ----------------------------------------------
def train_config(cfg_json: dict[str, Any], name: str, cwd: str) -> str:
    """Train one config (a Slurm job's or Ray task's member of ``train --seeds``); its model URI."""
    from reprodl.training.config import TrainConfig, build_and_train

    os.chdir(cwd)
    uri, _ = build_and_train(TrainConfig.model_validate(cfg_json), progress=False, name=name)
    return uri


def train_many_on(
    executor: Executor,
    cfg: Any,
    *,
    seeds: int = 0,
    splits: int = 0,
    test: float = 0.2,
    on_run: Callable[[int, str, Any], None] | None = None,
) -> Any:
    """:func:`~reprodl.training.multirun.train_many` with each run a Slurm job or a Ray task; the
    same runs (names, seeds, splits) and the same variance summary. A Slurm one interrupted and
    run again attaches to its jobs."""
    from reprodl.modeldataset.read import load_record
    from reprodl.training.config import check_name_free
    from reprodl.training.multirun import run_configs, write_summary

    if (seeds > 0) == (splits > 0) or max(seeds, splits) < 2:
        raise ParametersError(f"give either seeds=N or splits=N (N >= 2), not seeds={seeds} splits={splits}")
    runs = run_configs(cfg, seeds or splits, by_seed=bool(seeds), test=test)
    key = plan_key(["train", cfg.model_dump(mode="json"), seeds, splits, test])
    if not (executor.kind == "slurm" and _state_path(cfg.output, key).exists()):  # not attaching: names free
        for name, _ in runs:
            check_name_free(cfg.output, name)
    cwd = os.getcwd()
    members = [(name, (c.model_dump(mode="json", by_alias=True), name, cwd)) for name, c in runs]
    jobs = run_members(executor, train_config, members, output=cfg.output, key=key, claim=cfg.name)
    uris, records = [], []
    for i, ((name, _), job) in enumerate(zip(runs, jobs)):
        uri = dataset_uri(cfg.output, name)
        records.append(_member_record(load_record, uri, name, job))
        uris.append(uri)
        if on_run is not None:
            on_run(i, uri, records[-1])
    return write_summary(cfg, uris, records, varied="seed" if seeds else "split")


def _member_record(load_record: Callable[[str], Any], uri: str, name: str, job: Any) -> Any:
    """The record of a member trained by a job; a failed Slurm job named with the end of its log."""

    try:
        return load_record(uri)
    except DatasetNotFoundError:
        if not isinstance(job, dict):
            raise
        raise ReproductionError(
            f"the Slurm job {job['job_id']} ended without training the run {name} (no model at {uri}); the end "
            f"of its log:\n{job['log'] or '(empty)'}\nFix the cause and run the command again"
        ) from None


# --- reproduce through an engine -------------------------------------------------------------
def reproduce_here(uri: str, options: dict[str, Any], report_path: str | None = None) -> dict[str, Any]:
    """:func:`~reprodl.reproduction.pipeline.reproduce` in this process; its report's JSON form with
    ``allocation``: where the original and the re-run ran, and :func:`allocation_label` of the two.
    With ``report_path`` (a Slurm job), the report is also written there as JSON."""
    from reprodl.modeldataset.read import read_record
    from reprodl.reproduction.pipeline import reproduce
    from reprodl.training.placement import capture_placement

    was = read_record(open_dataset(uri)).environment.placement
    report = reproduce(uri, **options).to_dict()
    now = capture_placement()
    report["allocation"] = {
        "label": allocation_label(was, now),
        "original": was.model_dump() if was is not None else None,
        "rerun": now.model_dump(),
    }
    if report_path is not None:
        Path(report_path).write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    return report


def reproduce_on(executor: Executor, uri: str, *, state_dir: str | None = None, **options: Any) -> dict[str, Any]:
    """Reproduce the model at ``uri`` on ``executor``'s engine (a fresh Slurm job, a Ray task, or here).

    ``options`` are :func:`~reprodl.reproduction.pipeline.reproduce`'s (picklable ones: no callbacks
    for Slurm or Ray). A Slurm job keeps its state and logs under ``state_dir`` (default: the
    output, else the current directory); running the same command again attaches to the job.
    Returns the report's JSON form (what ``reprodl reproduce --json`` prints) with ``allocation``.
    """
    if executor.local:
        return reproduce_here(uri, options)
    if executor.kind == "ray":
        return dict(run_members(executor, reproduce_here, [("reproduce", (uri, options))])[0])

    base = state_dir or options.get("output") or os.getcwd()
    key = plan_key(["reproduce", uri, options])
    report = _state_path(base, key).with_suffix("") / "report.json"
    if not _state_path(base, key).exists():
        report.unlink(missing_ok=True)  # a report left by an earlier, finished, run of the same command
    jobs = run_members(executor, reproduce_here, [("reproduce", (uri, options, str(report)))], output=base, key=key)
    try:
        text = report.read_bytes()
    except FileNotFoundError:
        raise ReproductionError(
            f"the Slurm job {jobs[0]['job_id']} ended without a report at {report}; the end of its log:\n"
            f"{jobs[0]['log'] or '(empty)'}\nFix the cause and run the command again"
        ) from None
    return dict(load_json(text, what=str(report), error=ReproductionError))
