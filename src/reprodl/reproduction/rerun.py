"""One-command reproduction, by its earlier name: :func:`reproduce` is :mod:`reprodl.reproduction.pipeline`'s.

The stages (plan, check, run, compare, judge, explain) are the modules of
:mod:`reprodl.reproduction.pipeline`; this module keeps the names code written before them imports.

Example:
    >>> report = reproduce("/models/digits_model")      # doctest: +SKIP
    >>> report.verdict                                  # doctest: +SKIP
    'identical'
"""

from __future__ import annotations

from reprodl.modeldataset.verify import DataCheck
from reprodl.reproduction.code import CodeCheck, check_code, check_patch
from reprodl.reproduction.compare import Tolerance
from reprodl.reproduction.divergence import Divergence
from reprodl.reproduction.environment import EnvDifference, Expectation, environment_differences
from reprodl.reproduction.launch import STATISTICAL_SEED_OFFSET
from reprodl.reproduction.pipeline import reproduce
from reprodl.reproduction.pipeline.compare import divergence_of
from reprodl.reproduction.pipeline.explain import record_verdict, with_replays
from reprodl.reproduction.pipeline.judge import find_envelope
from reprodl.reproduction.pipeline.plan import trace_comparer
from reprodl.reproduction.pipeline.state import ReplayAsk, ReproductionReport
from reprodl.reproduction.verdict import Reason, Verdict

__all__ = [
    "STATISTICAL_SEED_OFFSET",
    "CodeCheck",
    "DataCheck",
    "Divergence",
    "EnvDifference",
    "Expectation",
    "Reason",
    "ReplayAsk",
    "ReproductionReport",
    "Tolerance",
    "Verdict",
    "check_code",
    "check_patch",
    "divergence_of",
    "environment_differences",
    "find_envelope",
    "record_verdict",
    "reproduce",
    "trace_comparer",
    "with_replays",
]
