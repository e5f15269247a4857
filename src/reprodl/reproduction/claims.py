"""Claims that survive their sources of variation: is recipe A really better than recipe B?

One trained model is one instantiation; "A is better than B" is a claim about the recipes.
:func:`compare` trains ``n`` instantiations of each recipe with paired, recorded seeds (run
``i`` of A and run ``i`` of B share the seed ``base + i``, which sets the initialisation, the
data order, the random augmentations, and seeds the resplit and the bootstrap resample of the
training data), then reports the probability of outperforming P(A>B) (the fraction of pairs in
which A's final metric beats B's, ties counting one half) with a seeded bootstrap 95%
confidence interval over the pairs, and a verdict (Bouthillier et al., MLSys 2021):

* ``A better`` when the interval's low end is above 0.5 and P(A>B) >= 0.75;
* ``B better`` when the interval's high end is below 0.5 and P(A>B) <= 0.25;
* ``no detectable difference`` otherwise.

The comparison is written as a dataset, a *claim* (``claim.json`` with every run's URI and
record digest, the rule, and a PNG of both distributions), which :func:`verify_claim` checks
member by member. The bootstrap has a fixed seed: the same compare gives the same numbers.

Example:
    >>> result = compare("a.yaml", "b.yaml", seeds=4)   # doctest: +SKIP
    >>> result.verdict, result.probability_a_better      # doctest: +SKIP
    ('A better', 1.0)
"""

from __future__ import annotations

import atexit
import dataclasses
import math
import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from reprodl import __version__, keys
from reprodl.data.baselines import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, baseline_accuracies
from reprodl.errors import DatasetFormatError, ParametersError
from reprodl.modeldataset.verify import ModelVerification
from reprodl.parsing import load_json
from reprodl.reproduction.executors import LOCAL, Executor, attached_claim, plan_key

A_BETTER, B_BETTER, NO_DIFFERENCE = "A better", "B better", "no detectable difference"
VERDICTS = (A_BETTER, B_BETTER, NO_DIFFERENCE)
THRESHOLD = 0.75
CONFIDENCE = 0.95
RULE = (
    f"A better when the {CONFIDENCE:.0%} interval's low end > 0.5 and P(A>B) >= {THRESHOLD}; "
    f"B better when its high end < 0.5 and P(A>B) <= {1 - THRESHOLD:.2f}; otherwise no detectable difference"
)
KNOWN_VARY = ("init", "order", "split", "bootstrap", "augment")
SUPPORTED_VARY = KNOWN_VARY
SEED_VARY = ("init", "order")  # both come from each run's seed
DEFAULT_METRIC = "valid_accuracy"

Recipe = Any  # a config path, a config dict or a TrainConfig


@dataclasses.dataclass
class RunValue:
    """One trained instantiation: its seed, final metric, model URI and record digest."""

    seed: int
    value: float
    uri: str
    record_digest: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Comparison:
    """The outcome of :func:`compare` (``to_dict`` is what ``reprodl compare --json`` prints)."""

    probability_a_better: float
    ci_low: float
    ci_high: float
    verdict: str
    metric: str
    n: int
    vary: list[str]
    runs: dict[str, list[RunValue]]
    recipes: dict[str, str]
    claim_uri: str | None = None
    rule: str = RULE
    baselines: dict[str, dict[str, float]] | None = None
    notes: list[str] = dataclasses.field(default_factory=list)
    evaluation_band: dict[str, Any] | None = None  # measure_evaluation_band: differences within it are ties

    def to_dict(self) -> dict[str, Any]:
        return {
            "probability_a_better": self.probability_a_better,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "confidence": CONFIDENCE,
            "verdict": self.verdict,
            "rule": self.rule,
            "metric": self.metric,
            "n": self.n,
            "vary": list(self.vary),
            "notes": list(self.notes),
            "recipes": dict(self.recipes),
            "bootstrap": {"resamples": BOOTSTRAP_RESAMPLES, "seed": BOOTSTRAP_SEED},
            "claim_uri": self.claim_uri,
            "baselines": self.baselines,
            "evaluation_band": self.evaluation_band,
            "runs": {side: [r.to_dict() for r in runs] for side, runs in self.runs.items()},
        }


def pair_scores(a: Sequence[float], b: Sequence[float], *, band: float = 0.0) -> list[float]:
    """1 where A's value beats B's in a pair by more than ``band``, 0 where B's beats A's by more,
    0.5 otherwise (a tie: a difference within the evaluation band is not called a difference)."""
    if len(a) != len(b) or not a:
        raise ParametersError(f"paired values need the same, non-zero, number of runs, but got {len(a)} and {len(b)}")
    return [1.0 if x - y > band else 0.0 if y - x > band else 0.5 for x, y in zip(a, b)]


def probability_a_better(a: Sequence[float], b: Sequence[float], *, band: float = 0.0) -> float:
    """P(A>B): the fraction of pairs in which A beats B (by more than ``band``), ties counting one half."""
    scores = pair_scores(a, b, band=band)
    return sum(scores) / len(scores)


def bootstrap_interval(
    a: Sequence[float],
    b: Sequence[float],
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    band: float = 0.0,
) -> tuple[float, float]:
    """The percentile bootstrap interval (95%) of P(A>B), resampling pairs with a fixed seed."""
    import numpy as np

    scores = np.asarray(pair_scores(a, b, band=band))
    rng = np.random.default_rng(seed)
    means = scores[rng.integers(0, len(scores), size=(resamples, len(scores)))].mean(axis=1)
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def verdict(probability: float, ci_low: float, ci_high: float) -> str:
    """``A better``, ``B better`` or ``no detectable difference``, by :data:`RULE`."""
    if ci_low > 0.5 and probability >= THRESHOLD:
        return A_BETTER
    if ci_high < 0.5 and probability <= 1 - THRESHOLD:
        return B_BETTER
    return NO_DIFFERENCE


def parse_vary(vary: str | Iterable[str] | None) -> list[str]:
    """The sources of variation to randomise (``None``: all five); refuses unknown names, naming the known ones."""
    names = list(KNOWN_VARY) if vary is None else vary.split(",") if isinstance(vary, str) else list(vary)
    names = [n.strip() for n in names if n.strip()]
    unknown = [n for n in names if n not in KNOWN_VARY]
    if unknown:
        raise ParametersError(f"--vary {','.join(unknown)} is not a source of variation: use {','.join(KNOWN_VARY)}")
    missing = [n for n in names if n not in SUPPORTED_VARY]
    if missing:
        raise ParametersError(
            f"--vary {','.join(missing)} is not supported yet: compare varies {','.join(SUPPORTED_VARY)}; "
            "drop the others from --vary"
        )
    if not set(SEED_VARY) <= set(names):
        raise ParametersError(
            f"--vary {','.join(names) or '(empty)'}: init and order both come from each run's seed and vary "
            "together; give --vary init,order (and split to resplit the data too)"
        )
    return [n for n in SUPPORTED_VARY if n in names]


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
    import importlib

    os.environ["OMP_NUM_THREADS"] = "1"
    for module in _PRELOAD:
        importlib.import_module(module)
    import torch

    torch.set_num_threads(1)


# Modules a forkserver imports once, so that every worker forked from it starts with them loaded.
# torch._dynamo is what a first optimiser imports (about 2 s): measured, it was most of a worker's first run.
_PRELOAD = ["torch", "torch._dynamo", "reprodl.training.config", "reprodl.training.loop", "reprodl.reproduction.claims"]
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
    from concurrent.futures import ProcessPoolExecutor

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
    from reprodl.errors import ReproductionError
    from reprodl.reproduction.executors import run_members

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
    from reprodl.errors import DatasetNotFoundError, ReproductionError
    from reprodl.modeldataset.read import load_record
    from reprodl.store.uris import dataset_uri

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


def compare(
    a: Recipe,
    b: Recipe | None = None,
    *,
    seeds: int,
    vary: str | Iterable[str] | None = None,
    metric: str = DEFAULT_METRIC,
    jobs: int | None = None,
    set_a: Iterable[str] = (),
    set_b: Iterable[str] = (),
    output: str | None = None,
    on_run: Callable[[str, RunValue], None] | None = None,
    executor: Executor = LOCAL,
) -> Comparison:
    """Train ``seeds`` paired instantiations of recipes A and B; P(A>B), its interval and verdict.

    Args:
        a: recipe A: a config file, a config dict or a ``TrainConfig``.
        b: recipe B; ``None`` means A again (make it a variant with ``set_b``).
        seeds: runs per recipe (>= 2); run i of both uses the seed ``A's params.seed + i``.
        vary: the sources of variation (default all five): ``init,order`` (through the seed,
            always), ``split`` (the data specs with a usetype resplit 80/20, stratified, by the
            run's seed), ``bootstrap`` (the training data resampled with replacement, seeded by
            the run's seed and recorded in its data), ``augment`` (the random transforms, which
            draw from the run's seed; with none, a note says there was nothing to vary).
        metric: the final metric compared (higher is better), e.g. ``valid_accuracy``.
        jobs: processes training at once, each with one thread (default: the CPUs this process may use).
        set_a: ``key=value`` overrides of A (as ``reprodl train --set``).
        set_b: ``key=value`` overrides of B.
        output: base URI for the runs and the claim dataset (default: A's output).
        on_run: called with ("a" or "b", the run) as each run's result is collected.
        executor: where the runs train (:mod:`~reprodl.reproduction.executors`): this machine's pool
            (default), Slurm jobs or Ray tasks; each run's record names where it ran.

    Returns:
        The :class:`Comparison`, with ``claim_uri`` the claim dataset written.

    Raises:
        ParametersError: fewer than 2 seeds, jobs < 1, an unsupported ``vary``, a missing metric.
    """
    jobs = min(default_jobs() if jobs is None else jobs, max(2 * seeds, 1))
    prep = _prepare(a, b, seeds=seeds, jobs=jobs, vary=vary, set_a=set_a, set_b=set_b, output=output, executor=executor)
    check_metric(prep.cfgs, metric)
    engine = _Engine(executor, prep.output, prep.key, prep.claim)
    runs = _run_all(prep.plan, metric=metric, jobs=jobs, on_run=on_run or (lambda side, run: None), engine=engine)
    recipes = _recipes(a, b, prep.cfgs, set_a, set_b)
    result = judge(
        runs, metric=metric, vary=prep.varied, recipes=recipes, evaluation_band=measure_evaluation_band(runs, metric)
    )
    result.baselines, result.notes = baselines(prep.cfgs["a"], metric, runs), prep.notes
    result.claim_uri = write_claim(result, prep.output, prep.claim)
    return result


@dataclasses.dataclass
class _Prepared:
    """A compare's recipes, output, claim name, sources of variation in effect, notes and plan."""

    cfgs: dict[str, Any]
    output: str
    claim: str
    varied: list[str]
    notes: list[str]
    plan: list[tuple[str, dict[str, Any], str]]
    key: str = ""  # the plan's digest: names a Slurm compare's state file


def _prepare(
    a: Recipe,
    b: Recipe | None,
    *,
    seeds: int,
    jobs: int,
    vary: str | Iterable[str] | None,
    set_a: Iterable[str],
    set_b: Iterable[str],
    output: str | None,
    executor: Executor = LOCAL,
) -> _Prepared:
    """Everything :func:`compare` decides before training: the two configs and every run's config.

    A Slurm compare submitted before with the same plan keeps its claim name (its jobs are attached to).
    """
    varied = _check_args(seeds, jobs, vary)
    if executor.local:
        start_pool(jobs)
    cfgs = {"a": _load(a, list(set_a)), "b": _load(a if b is None else b, list(set_b))}
    out = output or cfgs["a"].output
    base = int(cfgs["a"].params.get("seed", 0))
    key = plan_key([{k: c.model_dump(mode="json") for k, c in cfgs.items()}, out, seeds, base, varied])
    claim = attached_claim(executor, out, key) or _claim_name(
        out, f"{cfgs['a'].name}-vs-{cfgs['b'].name}", sides="ab", seeds=seeds, base=base
    )
    for cfg in cfgs.values():
        cfg.output = out
    varied, notes = _in_effect(cfgs, varied, explicit=vary is not None)
    plan = _plan(cfgs, seeds=seeds, base=base, claim=claim, **_plan_flags(varied))
    return _Prepared(cfgs, out, claim, varied, notes, plan, key)


def write_member_configs(
    a: Recipe,
    b: Recipe | None = None,
    *,
    seeds: int,
    directory: str | os.PathLike[str],
    vary: str | Iterable[str] | None = None,
    set_a: Iterable[str] = (),
    set_b: Iterable[str] = (),
    output: str | None = None,
) -> list[Path]:
    """Write every run :func:`compare` would train as a config file, ``<run name>.yaml``, training nothing.

    Each file is a complete ``reprodl train`` config: the run's seed, split and bootstrap
    resample, its name (``<claim>.a.seed<i>``...) and the output (absolute), so one task per
    file on a cluster (a Slurm array task, a Ray task, a ``torchrun`` job) trains the member
    compare would, with the same kind of record. Existing files are never overwritten.
    ``compare-plan.json`` beside them lets :func:`collect` judge the runs once they are trained.
    """
    import json

    import yaml

    from reprodl.store.uris import local_path

    prep = _prepare(a, b, seeds=seeds, jobs=1, vary=vary, set_a=set_a, set_b=set_b, output=output)
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{name}.yaml" for _, _, name in prep.plan]
    taken = [str(p) for p in [*paths, folder / keys.COMPARE_PLAN_FILE] if p.exists()]
    if taken:
        raise ParametersError(f"{', '.join(taken)} already exist: write the member configs to an empty directory")
    base = local_path(prep.output)
    output_uri = str(base.resolve()) if base is not None else prep.output
    for path, (_, cfg, name) in zip(paths, prep.plan):
        cfg = {k: v for k, v in cfg.items() if k != "source"}
        cfg.update(name=name, output=output_uri)
        path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    plan = {
        "claim": prep.claim,
        "output": output_uri,
        "vary": prep.varied,
        "notes": prep.notes,
        "recipes": _recipes(a, b, prep.cfgs, set_a, set_b),
        "runs": [{"side": side, "name": name, "config": f"{name}.yaml"} for side, _, name in prep.plan],
    }
    (folder / keys.COMPARE_PLAN_FILE).write_text(json.dumps(plan, indent=2) + "\n", encoding="utf-8")
    return paths


def _recipes(a: Recipe, b: Recipe | None, cfgs: dict[str, Any], set_a: Iterable[str], set_b: Iterable[str]) -> dict:
    """How the claim names recipes A and B: their config files (or names) and overrides."""
    return {"a": _describe(a, cfgs["a"], set_a), "b": _describe(b if b is not None else a, cfgs["b"], set_b)}


def collect(directory: str | os.PathLike[str], *, metric: str = DEFAULT_METRIC) -> Comparison:
    """Judge a comparison whose runs were trained elsewhere from :func:`write_member_configs`' files.

    Reads ``compare-plan.json`` in ``directory``, loads each member's record from the planned
    output (digest checked), and writes the claim dataset as :func:`compare` would have.

    Raises:
        ParametersError: a member not trained yet, or without ``metric``; no plan in ``directory``.
    """
    from reprodl.training.config import free_name, load_config

    folder = Path(directory)
    try:
        text = (folder / keys.COMPARE_PLAN_FILE).read_bytes()
    except FileNotFoundError:
        raise ParametersError(
            f"{folder} has no {keys.COMPARE_PLAN_FILE}: give the directory `reprodl compare --write-configs` wrote"
        ) from None
    plan = load_json(text, what=str(folder / keys.COMPARE_PLAN_FILE), error=ParametersError)
    runs: dict[str, list[RunValue]] = {"a": [], "b": []}
    for run in plan["runs"]:
        runs[run["side"]].append(_collected(plan["output"], run, folder, metric))
    band = measure_evaluation_band(runs, metric)
    result = judge(runs, metric=metric, vary=list(plan["vary"]), recipes=dict(plan["recipes"]), evaluation_band=band)
    first_a = next(run["config"] for run in plan["runs"] if run["side"] == "a")
    result.baselines = baselines(load_config(folder / first_a), metric, runs)
    result.notes = list(plan["notes"])
    result.claim_uri = _same_claim(result, plan["output"], plan["claim"]) or write_claim(
        result, plan["output"], free_name(plan["output"], plan["claim"])
    )
    return result


def _same_claim(result: Comparison, output: str, name: str) -> str | None:
    """The URI of a claim already collected from the same members (record digests) and metric, if any."""
    from reprodl.errors import DatasetNotFoundError
    from reprodl.store.uris import dataset_uri

    uri = dataset_uri(output, name)
    try:
        existing = load_claim(uri)
    except (DatasetNotFoundError, DatasetFormatError, KeyError):
        return None
    mine = result.to_dict()
    same = existing.get("metric") == mine["metric"] and existing.get("runs") == mine["runs"]
    return uri if same else None


def _collected(output: str, run: dict[str, Any], folder: Path, metric: str) -> RunValue:
    """The planned member ``run``'s seed, value, URI and record digest, from its record."""
    from reprodl.errors import DatasetNotFoundError
    from reprodl.modeldataset.read import load_record
    from reprodl.store.uris import dataset_uri

    uri = dataset_uri(output, run["name"])
    try:
        record = load_record(uri)
    except DatasetNotFoundError:
        raise ParametersError(
            f"the run {run['name']} has not been trained (no model at {uri}): train it with "
            f"`reprodl train {folder / run['config']}`, then collect again"
        ) from None
    value = record.results.final.get(metric)
    if not isinstance(value, (int, float)):
        raise ParametersError(f"the run {uri} has no final metric {metric!r}: pick another with --metric")
    digest = record.digest or ""  # a record read with its digest checked has one
    return RunValue(seed=int(record.training.seeds.seed), value=float(value), uri=uri, record_digest=digest)


def judge(
    runs: dict[str, list[RunValue]],
    *,
    metric: str,
    vary: list[str],
    recipes: dict[str, str],
    evaluation_band: dict[str, Any] | None = None,
) -> Comparison:
    """P(A>B) of paired runs, its bootstrap interval and the verdict (no claim written).

    ``evaluation_band`` (:func:`measure_evaluation_band`): a pair whose values differ by no more
    than its ``band`` counts as a tie, so a difference the evaluation batch size alone makes is
    never called a difference."""
    values_a, values_b = [r.value for r in runs["a"]], [r.value for r in runs["b"]]
    band = float((evaluation_band or {}).get("band", 0.0))
    p = probability_a_better(values_a, values_b, band=band)
    low, high = bootstrap_interval(values_a, values_b, band=band)
    return Comparison(
        probability_a_better=p,
        ci_low=low,
        ci_high=high,
        verdict=verdict(p, low, high),
        metric=metric,
        n=len(values_a),
        vary=vary,
        runs=runs,
        recipes=recipes,
        evaluation_band=evaluation_band,
    )


def measure_evaluation_band(runs: dict[str, list[RunValue]], metric: str) -> dict[str, Any] | None:
    """How much ``valid_accuracy`` moves with the evaluation batch size alone, over the members.

    Each member model is run on its own validation data as its record names it (split, transform)
    at :data:`reprodl.model.INVARIANCE_BATCH_SIZES`; ``band`` is the largest of the members' bands
    (:func:`reprodl.model.batch_size_invariance`). ``None`` for another metric, or when no member
    has validation data.
    """
    from reprodl.model import INVARIANCE_BATCH_SIZES, TrainedTorchModel, batch_size_invariance
    from reprodl.reproduction.rebuild import open_recorded

    if metric != "valid_accuracy":
        return None
    per_member: dict[str, float] = {}
    for side_runs in runs.values():
        for run in side_runs:
            model = TrainedTorchModel(run.uri)
            refs = [ref for ref in model.provenance.data if ref.role == "valid"]
            if not refs:
                continue
            data = open_recorded(refs[0])
            outputs = {size: model.logits(data, size) for size in INVARIANCE_BATCH_SIZES}
            labels = outputs[INVARIANCE_BATCH_SIZES[0]][1]
            inv = batch_size_invariance({size: out[0] for size, out in outputs.items()}, labels)
            per_member[run.uri] = float(inv["band"])
    if not per_member:
        return None
    return {"batch_sizes": list(INVARIANCE_BATCH_SIZES), "band": max(per_member.values()), "members": per_member}


def baselines(cfg: Any, metric: str, runs: dict[str, list[RunValue]]) -> dict[str, dict[str, float]] | None:
    """Each baseline's accuracy on the validation data and P(recipe > baseline) for every recipe.

    Only for ``valid_accuracy`` (a baseline of another metric is not defined here) with ``data.valid``.
    """
    from reprodl.training.config import valid_label_counts

    if metric != "valid_accuracy":
        return None
    counts = valid_label_counts(cfg)
    if not counts:
        return None
    result = {}
    for name, accuracy in baseline_accuracies(counts).items():
        row = {"accuracy": accuracy}
        for side, side_runs in runs.items():
            values = [r.value for r in side_runs]
            row[f"probability_{side}_better"] = probability_a_better(values, [accuracy] * len(values))
        result[name] = row
    return result


def _describe(recipe: Recipe, cfg: Any, overrides: Iterable[str]) -> str:
    where = cfg.source or (str(recipe) if isinstance(recipe, (str, os.PathLike)) else cfg.name)
    extra = list(overrides)
    return where + (f" with {' '.join(extra)}" if extra else "")


def plot_distributions(comparison: Comparison, path: str | Path) -> None:
    """PNG of both recipes' final metric: one point per run, a line per pair, the mean of each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a = [r.value for r in comparison.runs["a"]]
    b = [r.value for r in comparison.runs["b"]]
    fig, ax = plt.subplots(figsize=(4.5, 3.6))
    for x, y in zip(a, b):
        ax.plot([0, 1], [x, y], color="0.75", lw=0.8, zorder=1)
    ax.scatter([0] * len(a), a, label="A", zorder=2)
    ax.scatter([1] * len(b), b, label="B", zorder=2)
    ax.hlines([sum(a) / len(a), sum(b) / len(b)], [-0.15, 0.85], [0.15, 1.15], colors="k", lw=2)
    ax.set_xticks([0, 1], ["A", "B"])
    ax.set_xlim(-0.5, 1.5)
    ax.set_ylabel(comparison.metric)
    ax.set_title(
        f"{comparison.verdict}: P(A>B) {comparison.probability_a_better:.2f} "
        f"[{comparison.ci_low:.2f}, {comparison.ci_high:.2f}]",
        fontsize=9,
    )
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_claim(comparison: Comparison, output: str, name: str) -> str:
    """Write the comparison as a claim dataset (``claim.json``, the plot); its URI."""
    import yaml

    from reprodl.store import create_dataset

    summary = {"kind": keys.KIND_CLAIM, "reprodl_version": __version__, **comparison.to_dict()}
    summary.pop("claim_uri")
    readme = yaml.safe_dump(
        {
            "name": name,
            "description": f"{comparison.verdict}: P(A>B) on {comparison.metric} over {comparison.n} paired runs",
            "rule": comparison.rule,
            "recipes": comparison.recipes,
        },
        sort_keys=False,
    )
    with create_dataset(output, name, readme=readme) as writer:
        writer.put_json(summary, keys.CLAIM_FILE)
        try:
            with writer.item_file(keys.CLAIM_PLOT_FILE) as png:
                plot_distributions(comparison, png)
        except ImportError:
            pass  # matplotlib is optional: the numbers are what count
        writer.put_annotation(keys.MODEL_KIND, keys.KIND_CLAIM)
        writer.put_annotation(keys.SUMMARY_MEMBERS, [r.uri for side in ("a", "b") for r in comparison.runs[side]])
    assert writer.uri is not None
    return writer.uri


def is_claim(uri: str) -> bool:
    """Whether the dataset at ``uri`` is a claim (its ``reprodl.kind`` annotation)."""
    from reprodl.store import open_dataset

    ds = open_dataset(uri)
    return keys.MODEL_KIND in ds.annotation_names() and ds.get_annotation(keys.MODEL_KIND) == keys.KIND_CLAIM


def load_claim(uri: str) -> dict[str, Any]:
    """The ``claim.json`` of the claim dataset at ``uri``."""
    from reprodl.store import open_dataset

    ds = open_dataset(uri)
    with open(ds.item_path(ds.identifier_of(keys.CLAIM_FILE)), "rb") as fh:
        return load_json(fh.read(), what=f"{ds.uri}: {keys.CLAIM_FILE}", error=DatasetFormatError)


def _claim_problem(claim: Any) -> str | None:
    """What makes ``claim`` (a parsed ``claim.json``) unlike any claim reprodl writes; None if nothing."""
    if not isinstance(claim, dict):
        return f"it holds a JSON {type(claim).__name__}, not an object"
    if not isinstance(claim.get("metric", ""), str):
        return f"its metric is {claim['metric']!r}, not a name"
    runs = claim.get("runs", {})
    if not isinstance(runs, dict):
        return f"its runs are a JSON {type(runs).__name__}, not an object with the lists 'a' and 'b'"
    for side in ("a", "b"):
        members = runs.get(side, [])
        if not isinstance(members, list):
            return f"runs.{side} is a JSON {type(members).__name__}, not a list of members"
        for i, member in enumerate(members):
            if not isinstance(member, dict) or not isinstance(member.get("uri"), str) or not member["uri"]:
                return f"runs.{side}[{i}] is {repr(member)[:80]}, not a member with a 'uri' (a string)"
    return None


def check_claim(claim: Any, uri: str) -> None:
    """Refuse a ``claim.json`` whose shape is not what reprodl writes, naming the field."""
    problem = _claim_problem(claim)
    if problem is not None:
        raise DatasetFormatError(
            f"{uri}: {keys.CLAIM_FILE} is not a claim reprodl can check: {problem}. It was edited or damaged: "
            "use an intact copy, or make the claim again (`reprodl compare`, or `reprodl collect` of its runs)"
        )


STATISTICS_CHECK = "statistics re-derived from the members' records"
_STATISTICS = ("n", "probability_a_better", "ci_low", "ci_high", "verdict")


@dataclasses.dataclass
class ClaimVerification(ModelVerification):
    """What :func:`verify_claim` found: its checks, and one entry per member (``side``,
    ``seed``, ``uri``, ``ok`` and the ``problems`` of that member's checks)."""

    members: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "members": [dict(m) for m in self.members]}


def verify_claim(uri: str, *, allow: Iterable[str] = ()) -> ClaimVerification:
    """Check a claim: its own items, each member, and its statistics against the members.

    Each member must verify (:func:`~reprodl.modeldataset.verify.verify_model`), have the
    record digest the claim names and give the value it reports; a member that cannot be
    reached fails its own checks, the others are still checked. P(A>B), its interval, n and
    the verdict are then re-derived from the members' records by :func:`judge` (what wrote
    the claim), pairing run i of A with run i of B, and any difference fails; so do a claim
    with no members, pairs whose records have different seeds, and a seed listed twice.
    """
    from reprodl.store import open_dataset

    ds = open_dataset(uri)
    result = ClaimVerification(uri=ds.uri)
    items = ds.verify(deep=True)
    result.add("claim dataset items match its manifest", items.ok, "; ".join(items.problems()))
    claim = load_claim(uri)
    check_claim(claim, ds.uri)
    raw = claim.get("runs")
    runs: dict[str, Any] = raw if isinstance(raw, dict) else {}
    members = {side: [m if isinstance(m, dict) else {} for m in runs.get(side) or []] for side in ("a", "b")}
    if keys.SUMMARY_MEMBERS in ds.annotation_names():
        listed, named = ds.get_annotation(keys.SUMMARY_MEMBERS), [m.get("uri") for m in members["a"] + members["b"]]
        result.add(
            f"annotation {keys.SUMMARY_MEMBERS} lists the claim's members",
            listed == named,
            f"the annotation lists {listed}, the claim's members are {named}",
        )
    metric = str(claim.get("metric", ""))
    read = {side: [_verify_member(result, side, m, metric, allow) for m in members[side]] for side in ("a", "b")}
    problems = _statistics_problems(claim, members, read)
    result.add(STATISTICS_CHECK, not problems, "; ".join(problems))
    return result


def _verify_member(
    result: ClaimVerification, side: str, member: dict[str, Any], metric: str, allow: Iterable[str]
) -> RunValue | None:
    """Add a member's checks and its entry to ``result``; what its record gives (None when the
    model does not verify, cannot be reached, or its record has no such metric)."""
    label, before = f"member {side.upper()} seed {member.get('seed')}", len(result.checks)
    run = _member_checks(result, label, member, metric, allow)
    problems = [f"{c.name}: {c.detail}" for c in result.checks[before:] if not c.ok]
    result.members.append(
        {"side": side, "seed": member.get("seed"), "uri": member.get("uri"), "ok": not problems, "problems": problems}
    )
    return run


def _member_checks(
    result: ClaimVerification, label: str, member: dict[str, Any], metric: str, allow: Iterable[str]
) -> RunValue | None:
    from reprodl.modeldataset.read import load_record
    from reprodl.modeldataset.verify import verify_model

    uri = str(member.get("uri"))
    try:
        check = verify_model(uri, allow=allow)
        record = load_record(uri, check=False) if check.ok else None
    except Exception as exc:  # noqa: BLE001 - one unreachable member fails itself, not the whole verify
        result.add(f"{label}: verify", False, f"{uri} cannot be read: {exc}")
        return None
    failed = [c.name for c in check.checks if not c.ok]
    result.add(f"{label}: verify", check.ok, f"{uri}: {', '.join(failed)}")
    if record is None:
        return None
    result.add(
        f"{label}: record digest",
        record.digest == member.get("record_digest"),
        f"the claim says {member.get('record_digest')}, the model's record is {record.digest}",
    )
    value = record.results.final.get(metric)
    result.add(
        f"{label}: {metric}", value == member.get("value"), f"the claim says {member.get('value')}, the record {value}"
    )
    if not isinstance(value, (int, float)):
        return None
    seed = int(record.training.seeds.seed)
    return RunValue(seed=seed, value=float(value), uri=uri, record_digest=record.digest or "")


def _statistics_problems(
    claim: dict[str, Any], members: dict[str, list[dict[str, Any]]], read: dict[str, list[RunValue | None]]
) -> list[str]:
    """How the claim's n, P(A>B), interval and verdict differ from what its members' records give."""
    if not read["a"] and not read["b"]:
        return ["the claim has no members: nothing supports its numbers or its verdict"]
    if len(read["a"]) != len(read["b"]):
        return [f"the claim pairs {len(read['a'])} runs of A with {len(read['b'])} of B: runs pair one to one"]
    unread = [f"{s.upper()} seed {m.get('seed')}" for s in ("a", "b") for m, r in zip(members[s], read[s]) if not r]
    if unread:
        return [f"cannot be re-derived: the member(s) {', '.join(unread)} could not be read (see their checks)"]
    runs = {side: [r for r in read[side] if r is not None] for side in ("a", "b")}
    problems = _pairing_problems(members, runs)
    band = claim.get("evaluation_band")  # as measured when the claim was made (not measured again here)
    band = band if isinstance(band, dict) and isinstance(band.get("band"), (int, float)) else None
    judged = judge(runs, metric=str(claim.get("metric", "")), vary=[], recipes={}, evaluation_band=band)
    for field in _STATISTICS:
        claimed, derived = claim.get(field), getattr(judged, field)
        if not _same(claimed, derived):
            problems.append(f"{field}: the claim says {claimed}, its members' records give {derived}")
    return problems


def _pairing_problems(members: dict[str, list[dict[str, Any]]], runs: dict[str, list[RunValue]]) -> list[str]:
    """Members whose record has another seed than the claim says, pairs of two seeds, seeds listed twice."""
    problems = [
        f"{side.upper()} seed {m.get('seed')}: its record's seed is {r.seed}"
        for side in ("a", "b")
        for m, r in zip(members[side], runs[side])
        if m.get("seed") != r.seed
    ]
    problems += [
        f"pair {i} is A seed {a.seed} against B seed {b.seed}: the runs of a pair share a seed"
        for i, (a, b) in enumerate(zip(runs["a"], runs["b"]), start=1)
        if a.seed != b.seed
    ]
    for side in ("a", "b"):
        seeds = [r.seed for r in runs[side]]
        twice = sorted(s for s in set(seeds) if seeds.count(s) > 1)
        problems += [f"{side.upper()} seed {s} is listed {seeds.count(s)} times" for s in twice]
    return problems


def _same(claimed: Any, derived: Any) -> bool:
    """Equal, for numbers up to float rounding (a claim's numbers went through JSON)."""
    if isinstance(derived, (int, float)) and isinstance(claimed, (int, float)) and not isinstance(claimed, bool):
        return math.isclose(claimed, derived, rel_tol=0, abs_tol=1e-9)
    return bool(claimed == derived)


VARIANT_NAME = re.compile(r"^[A-Za-z0-9_-]{1,60}$")


def parse_variant(text: str) -> tuple[str, list[str]]:
    """``"no-momentum: optimizer.momentum=0 lr=0.1"`` -> ``("no-momentum", ["optimizer.momentum=0", "lr=0.1"])``."""
    import shlex

    name, sep, rest = text.partition(":")
    name = name.strip()
    overrides = shlex.split(rest)
    if not sep or not VARIANT_NAME.match(name) or not overrides or any("=" not in o for o in overrides):
        raise ParametersError(
            f"--variant {text!r} should be 'NAME: key=value [key=value ...]' with NAME of letters, digits, - or _ "
            "(e.g. 'no-momentum: optimizer.momentum=0')"
        )
    return name, overrides


@dataclasses.dataclass
class Ablation:
    """The base recipe against each variant: one :class:`Comparison` (and claim) per variant."""

    base: list[RunValue]
    variants: dict[str, Comparison]

    def to_dict(self) -> dict[str, Any]:
        return {
            "base": [r.to_dict() for r in self.base],
            "variants": {name: c.to_dict() for name, c in self.variants.items()},
        }


def ablate(
    config: Recipe,
    variants: Iterable[str],
    *,
    seeds: int,
    vary: str | Iterable[str] | None = None,
    metric: str = DEFAULT_METRIC,
    jobs: int | None = None,
    set_: Iterable[str] = (),
    output: str | None = None,
    on_run: Callable[[str, RunValue], None] | None = None,
    executor: Executor = LOCAL,
) -> Ablation:
    """The base recipe against each variant (``"NAME: key=value ..."``), with P(base > variant) each.

    The base is trained once (``seeds`` runs); each variant's runs share its seeds; each
    comparison is written as a claim dataset ``<config>-ablate.vs-<NAME>``. ``set_`` overrides
    (``key=value``) apply to the base and every variant, before the variant's own.
    """
    variants = list(variants)
    jobs = min(default_jobs() if jobs is None else jobs, max(seeds * (len(variants) + 1), 1))
    varied = _check_args(seeds, jobs, vary)
    if executor.local:
        start_pool(jobs)
    parsed = dict(parse_variant(v) for v in variants)
    if not parsed or "base" in parsed:
        raise ParametersError("give at least one --variant 'NAME: key=value', none of them called 'base'")
    common = list(set_)
    cfg = _load(config, common)
    cfgs = {"base": cfg, **{name: _load(config, [*common, *overrides]) for name, overrides in parsed.items()}}
    check_metric(cfgs, metric)
    out = output or cfg.output
    for c in cfgs.values():
        c.output = out
    base = int(cfg.params.get("seed", 0))
    extra = [f".vs-{name}" for name in parsed]
    key = plan_key(["ablate", {k: c.model_dump(mode="json") for k, c in cfgs.items()}, out, seeds, base, varied])
    prefix = attached_claim(executor, out, key) or _claim_name(
        out, f"{cfg.name}-ablate", sides=list(cfgs), seeds=seeds, base=base, extra=extra
    )
    varied, notes = _in_effect(cfgs, varied, explicit=vary is not None)
    plan = _plan(cfgs, seeds=seeds, base=base, claim=prefix, **_plan_flags(varied))
    engine = _Engine(executor, out, key, prefix)
    runs = _run_all(plan, metric=metric, jobs=jobs, on_run=on_run or (lambda side, run: None), engine=engine)
    results = {}
    for name, overrides in parsed.items():
        recipes = {"a": _describe(config, cfg, common), "b": _describe(config, cfgs[name], [*common, *overrides])}
        pair = {"a": runs["base"], "b": runs[name]}
        result = judge(
            pair, metric=metric, vary=varied, recipes=recipes, evaluation_band=measure_evaluation_band(pair, metric)
        )
        result.baselines, result.notes = baselines(cfg, metric, pair), notes
        result.claim_uri = write_claim(result, out, f"{prefix}.vs-{name}")
        results[name] = result
    return Ablation(base=runs["base"], variants=results)
