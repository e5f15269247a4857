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

This module is the public face; the work is done in one module per job:
:mod:`~reprodl.reproduction.claim_stats` (P(A>B), interval, verdict),
:mod:`~reprodl.reproduction.claim_runs` (the plan and the pool that trains the members),
:mod:`~reprodl.reproduction.claim_compare` (compare, collect),
:mod:`~reprodl.reproduction.claim_dataset` (the claim dataset written and read),
:mod:`~reprodl.reproduction.claim_verify` (verify_claim) and
:mod:`~reprodl.reproduction.ablation` (ablate).
"""

from __future__ import annotations

from reprodl.data.baselines import baseline_accuracies
from reprodl.reproduction.ablation import VARIANT_NAME, Ablation, ablate, parse_variant
from reprodl.reproduction.claim_compare import (
    baselines,
    collect,
    compare,
    measure_evaluation_band,
    write_member_configs,
)
from reprodl.reproduction.claim_dataset import check_claim, is_claim, load_claim, plot_distributions, write_claim
from reprodl.reproduction.claim_runs import check_metric, default_jobs, pool, shutdown_pools, start_pool
from reprodl.reproduction.claim_stats import (
    A_BETTER,
    B_BETTER,
    CONFIDENCE,
    DEFAULT_METRIC,
    KNOWN_VARY,
    NO_DIFFERENCE,
    RULE,
    SEED_VARY,
    SUPPORTED_VARY,
    THRESHOLD,
    VERDICTS,
    Comparison,
    Recipe,
    RunValue,
    bootstrap_interval,
    judge,
    pair_scores,
    parse_vary,
    probability_a_better,
    verdict,
)
from reprodl.reproduction.claim_verify import STATISTICS_CHECK, ClaimVerification, verify_claim

__all__ = [
    "A_BETTER",
    "Ablation",
    "B_BETTER",
    "CONFIDENCE",
    "ClaimVerification",
    "Comparison",
    "DEFAULT_METRIC",
    "KNOWN_VARY",
    "NO_DIFFERENCE",
    "RULE",
    "Recipe",
    "RunValue",
    "SEED_VARY",
    "STATISTICS_CHECK",
    "SUPPORTED_VARY",
    "THRESHOLD",
    "VARIANT_NAME",
    "VERDICTS",
    "ablate",
    "baseline_accuracies",
    "baselines",
    "bootstrap_interval",
    "check_claim",
    "check_metric",
    "collect",
    "compare",
    "default_jobs",
    "is_claim",
    "judge",
    "load_claim",
    "measure_evaluation_band",
    "pair_scores",
    "parse_variant",
    "parse_vary",
    "plot_distributions",
    "pool",
    "probability_a_better",
    "shutdown_pools",
    "start_pool",
    "verdict",
    "verify_claim",
    "write_claim",
    "write_member_configs",
]
