"""Training a claim's members: the plan of paired runs, the kept pool of worker processes, and a cluster's members."""

from __future__ import annotations

import atexit
import dataclasses
import importlib
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from reprodl.errors import DatasetNotFoundError, ParametersError, ReproductionError
from reprodl.reproduction.claim_stats import Recipe, RunValue, parse_vary
from reprodl.reproduction.executors import Executor, run_members
from reprodl.store.uris import dataset_uri


def _load(recipe: Recipe, overrides: list[str]) -> Any:
    from reprodl.training.config import TrainConfig, load_config

    if isinstance(recipe, TrainConfig):
        dumped = recipe.model_dump(mode="json", by_alias=True)
        source = recipe.source
        cfg = load_config(dumped, overrides)
        cfg.source = source
        return cfg
    return load_config(recipe, overrides)


def check_metric(cfgs: dict[str, Any], metric: str) -> None:
    """Refuse, before any training, a metric a recipe's runs will not report."""
    from reprodl.training.loop import final_metric_names

    for side, cfg in cfgs.items():
        reported = final_metric_names(bool(cfg.specs("valid")))
        if metric not in reported:
            hint = "" if cfg.specs("valid") else ", or give the config data.valid"
            raise ParametersError(
                f"the runs of {side} ({cfg.name}) will not report the metric {metric!r} (they report "
                f"{', '.join(reported)}): pick one of those with --metric{hint}"
            )


def _train_run(cfg_json: dict[str, Any], name: str, metric: str, cwd: str | None = None) -> dict[str, Any]:
    """Train one run (in this process, or a pool worker: in the caller's ``cwd``); its seed, value, URI, digest."""
    from reprodl.training.config import TrainConfig, build_and_train

    if cwd is not None:
        os.chdir(cwd)  # a kept worker is wherever the last run left it (perhaps a removed directory)
    cfg = TrainConfig.model_validate(cfg_json)
    uri, record = build_and_train(cfg, progress=False, name=name)
    final = record.results.final
    value = final.get(metric)
    if not isinstance(value, (int, float)):
        raise ParametersError(
            f"the run {uri} has no final metric {metric!r} (it has {', '.join(sorted(final)) or 'none'}): "
            "pick one of those with --metric, or give the config data.valid"
        )
    seed = int(record.training.seeds.seed)
    return {"seed": seed, "value": float(value), "uri": uri, "record_digest": record.digest}


def _one_thread() -> None:
    """Pool worker initialiser: one thread each, so J workers use J cores; torch and the trainer
    imported once per worker (already in memory when forked from a preloaded forkserver)."""

    os.environ["OMP_NUM_THREADS"] = "1"
    for module in _PRELOAD:
        importlib.import_module(module)
    import torch

    torch.set_num_threads(1)


# Modules a forkserver imports once, so that every worker forked from it starts with them loaded.
# torch._dynamo is what a first optimiser imports (about 2 s): measured, it was most of a worker's first run.
_PRELOAD = [
    "torch",
    "torch._dynamo",
    "reprodl.training.config",
    "reprodl.training.loop",
    "reprodl.reproduction.claim_runs",
]
_POOLS: dict[int, Any] = {}


def pool(jobs: int) -> Any:
    """The process pool of ``jobs`` single-threaded workers, kept for the next compare in this process.

    Workers come from a forkserver that imported torch and the trainer once (where the platform
    has one; else they are spawned, each importing them once), and stay alive between runs and
    between compares: a run pays for training, not for starting Python and importing torch.
    Forking from the forkserver, never from this process, keeps a CUDA context or threads here
    out of the workers. :func:`shutdown_pools` ends them (they also end when Python exits).
    """
    import multiprocessing

    executor = _POOLS.get(jobs)
    if executor is not None and not getattr(executor, "_broken", False):
        return executor
    context: Any = multiprocessing.get_context("spawn")
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(_PRELOAD)
    executor = ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_one_thread)
    if not _POOLS:  # ended before the interpreter tears down the modules the executor's cleanup needs
        atexit.register(shutdown_pools)
    _POOLS[jobs] = executor
    return executor


def _submit(executor: Any, fn: Callable[..., Any], *args: Any) -> Any:
    """``executor.submit``, starting any worker it needs without re-running an unreadable ``__main__``.

    A new worker re-imports the caller's main script by its path (Python's multiprocessing rule); a
    main read from standard input or ``-c`` has no file to re-import, and the worker would die
    (``python - <<EOF``, a heredoc in a shell script). Such a main is hidden while workers start:
    the workers run reprodl's own functions only.
    """
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or path is None or getattr(main, "__spec__", None) is not None or os.path.isfile(path):
        return executor.submit(fn, *args)
    del main.__file__
    try:
        return executor.submit(fn, *args)
    finally:
        main.__file__ = path


def start_pool(jobs: int) -> None:
    """Start :func:`pool`'s workers now, without waiting for them: they import torch while this
    process reads the configs (``jobs`` 1 starts nothing)."""
    if jobs > 1:
        executor = pool(jobs)
        for _ in range(jobs):
            _submit(executor, os.getpid)


def shutdown_pools() -> None:
    """End the kept worker processes of :func:`pool` (a later compare starts new ones)."""
    atexit.unregister(shutdown_pools)
    while _POOLS:
        _, executor = _POOLS.popitem()
        executor.shutdown(wait=True, cancel_futures=True)


def _claim_name(
    output: str, name: str, *, sides: Sequence[str], seeds: int, base: int, extra: Sequence[str] = ()
) -> str:
    """The first of ``name``, ``name-2``... free under ``output`` for the claim, its runs and ``extra`` suffixes."""
    from reprodl.training.config import free_name

    n = 1
    while True:
        claim = name if n == 1 else f"{name}-{n}"
        taken = [f"{claim}.{side}.seed{base + i}" for i in range(seeds) for side in sides]
        taken += [f"{claim}{suffix}" for suffix in extra]
        if all(free_name(output, x) == x for x in [claim, *taken]):
            return claim
        n += 1


def _plan(
    cfgs: dict[str, Any], *, seeds: int, base: int, claim: str, split: bool = False, bootstrap: bool = False
) -> list[tuple[str, dict[str, Any], str]]:
    """(side, config, run name) of every run: run i of every side shares the seed base + i (and
    split, and bootstrap resample of the training data, each seeded by it too)."""
    from reprodl.training.multirun import with_split_seed

    plan = []
    for i in range(seeds):
        for side, cfg in cfgs.items():
            run_cfg = with_split_seed(cfg, base + i) if split else cfg.model_copy(deep=True)
            run_cfg.params = {**cfg.params, "seed": base + i}
            for spec in run_cfg.specs("train") if bootstrap else ():
                spec.bootstrap = base + i
            plan.append((side, run_cfg.model_dump(mode="json", by_alias=True), f"{claim}.{side}.seed{base + i}"))
    return plan


def _in_effect(cfgs: dict[str, Any], varied: list[str], *, explicit: bool) -> tuple[list[str], list[str]]:
    """The sources of variation that vary for these recipes, and notes on those that cannot or always do.

    A split needs data specs with a usetype: asked for explicitly without one it is refused (by
    :func:`~reprodl.training.multirun.with_split_seed`), by default it is left out with a note.
    Augmentation is the recipes' random transforms, drawn from each run's seed.
    """
    in_effect, notes = list(varied), []
    specs = [spec for cfg in cfgs.values() for role in cfg.data for spec in cfg.specs(role)]
    if "split" in varied and not explicit and not any(spec.usetype is not None for spec in specs):
        in_effect.remove("split")
        notes.append("split: nothing to vary: no data spec has a usetype to resplit")
    random = any(_is_random(spec.build_transform()) for spec in specs)
    if "augment" in varied and not random:
        in_effect.remove("augment")
        notes.append("augment: nothing to vary: neither recipe has a random transform")
    elif random:
        how = "varies" if "augment" in varied else "varies anyway (it cannot be held fixed)"
        notes.append(f"augment: the random transforms draw from each run's seed, so augmentation {how} with it")
    return in_effect, notes


def _plan_flags(varied: list[str]) -> dict[str, bool]:
    return {"split": "split" in varied, "bootstrap": "bootstrap" in varied}


def _is_random(transform: Any) -> bool:
    """Whether a transform is, or holds, a random one (``random = True``: reprodl's augmentations)."""
    if getattr(transform, "random", False):
        return True
    return any(_is_random(t) for t in getattr(transform, "transforms", None) or ())


def _run_all(
    plan: list[tuple[str, dict[str, Any], str]],
    *,
    metric: str,
    jobs: int,
    on_run: Callable[[str, RunValue], None],
    engine: _Engine | None = None,
) -> dict[str, list[RunValue]]:
    """Train the plan, sequentially (``jobs=1``), on a pool of ``jobs`` single-threaded processes,
    or on the ``engine``'s cluster (Slurm, Ray)."""
    if engine is not None and not engine.executor.local:
        return _run_on_engine(plan, metric=metric, on_run=on_run, engine=engine)
    runs: dict[str, list[RunValue]] = {side: [] for side, _, _ in plan}
    if jobs == 1:
        results: Iterable[dict[str, Any]] = (_train_run(cfg, name, metric) for _, cfg, name in plan)
    else:
        executor, cwd = pool(jobs), os.getcwd()
        futures = [_submit(executor, _train_run, cfg, name, metric, cwd) for _, cfg, name in plan]
        try:
            results = [f.result() for f in futures]  # in plan order, whichever finished first
        except BaseException:
            for f in futures:
                f.cancel()
            raise
    for (side, _, _), result in zip(plan, results):
        run = RunValue(**result)
        runs[side].append(run)
        on_run(side, run)
    return runs


@dataclasses.dataclass(frozen=True)
class _Engine:
    """Where the members train (:mod:`reprodl.reproduction.executors`), and what a Slurm state file needs."""

    executor: Executor
    output: str
    key: str
    claim: str


def _run_on_engine(
    plan: list[tuple[str, dict[str, Any], str]],
    *,
    metric: str,
    on_run: Callable[[str, RunValue], None],
    engine: _Engine,
) -> dict[str, list[RunValue]]:
    """The plan's members as Ray tasks (their results) or Slurm array tasks (read from their records);
    ``on_run`` as each finishes (a Slurm member whose record cannot be read fails after all, with its log)."""

    collected: dict[int, RunValue] = {}

    def done(i: int, result: Any) -> None:
        side, _, name = plan[i]
        try:
            run = RunValue(**result) if result is not None else _slurm_member(engine.output, name, metric, None)
        except ReproductionError:
            return  # raised below with the job's log
        collected[i] = run
        on_run(side, run)

    cwd, ex = os.getcwd(), engine.executor
    members = [(name, (cfg, name, metric, cwd)) for _, cfg, name in plan]
    jobs = run_members(ex, _train_run, members, on_done=done, output=engine.output, key=engine.key, claim=engine.claim)
    runs: dict[str, list[RunValue]] = {side: [] for side, _, _ in plan}
    for i, ((side, _, name), job) in enumerate(zip(plan, jobs)):
        runs[side].append(collected.get(i) or _slurm_member(engine.output, name, metric, job))
    return runs


def _slurm_member(output: str, name: str, metric: str, job: dict[str, Any] | None) -> RunValue:
    """A member trained by a Slurm job, from its record (as collect reads it); its log where it failed."""
    from reprodl.modeldataset.read import load_record

    uri = dataset_uri(output, name)
    try:
        record = load_record(uri)
    except DatasetNotFoundError:
        job = job or {"job_id": "?", "log": ""}
        raise ReproductionError(
            f"the Slurm job {job['job_id']} ended without training the run {name} (no model at {uri}); the end "
            f"of its log:\n{job['log'] or '(empty)'}\nFix the cause and run the command again"
        ) from None
    value = record.results.final.get(metric)
    if not isinstance(value, (int, float)):
        raise ParametersError(f"the run {uri} has no final metric {metric!r}: pick another with --metric")
    seed = int(record.training.seeds.seed)
    return RunValue(seed=seed, value=float(value), uri=uri, record_digest=record.digest or "")


def default_jobs() -> int:
    """The CPUs this process may use (its affinity where the platform says, else the CPU count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS and Windows have no sched_getaffinity
        return max(1, os.cpu_count() or 1)


def _check_args(seeds: int, jobs: int, vary: str | Iterable[str] | None) -> list[str]:
    if seeds < 2:
        raise ParametersError(f"a comparison needs at least 2 runs per recipe, but got --seeds {seeds}")
    if jobs < 1:
        raise ParametersError(f"--jobs must be at least 1, but got {jobs}")
    return parse_vary(vary)
