"""Ablations: a base recipe against variants of it, one claim per variant."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable
from typing import Any

from reprodl.errors import ParametersError
from reprodl.reproduction.claim_compare import _describe, baselines, measure_evaluation_band
from reprodl.reproduction.claim_dataset import write_claim
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
from reprodl.reproduction.claim_stats import DEFAULT_METRIC, Comparison, Recipe, RunValue, judge
from reprodl.reproduction.executors import LOCAL, Executor, attached_claim, plan_key

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
