"""compare, and collect of runs trained elsewhere: two recipes' paired runs judged and written as a claim."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from reprodl import keys
from reprodl.data.baselines import baseline_accuracies
from reprodl.errors import DatasetFormatError, DatasetNotFoundError, ParametersError
from reprodl.parsing import load_json
from reprodl.reproduction.claim_dataset import load_claim, write_claim
from reprodl.reproduction.claim_runs import (
    _check_args,
    _claim_name,
    _Engine,
    _in_effect,
    _load,
    _plan,
    _plan_flags,
    _run_all,
    check_metric,
    default_jobs,
    start_pool,
)
from reprodl.reproduction.claim_stats import DEFAULT_METRIC, Comparison, Recipe, RunValue, judge, probability_a_better
from reprodl.reproduction.executors import LOCAL, Executor, attached_claim, plan_key
from reprodl.store.uris import dataset_uri, local_path


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

    import yaml

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
    from reprodl.modeldataset.read import load_record

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
