"""A claim's statistics: the paired runs' P(A>B), its seeded bootstrap interval and the verdict rule."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

from reprodl.data.baselines import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED
from reprodl.errors import ParametersError

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
