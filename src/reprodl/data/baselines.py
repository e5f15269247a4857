"""Chance baselines of labelled data, and the probability that a model beats them.

The majority-class baseline always predicts the most frequent class; the stratified-random one
guesses each class with its frequency. :func:`baseline_accuracies` gives their accuracies from
per-class counts; :func:`evaluation_baselines` adds P(model > baseline) from a model's
confusion matrix, by a seeded paired bootstrap over the evaluated items. NumPy only: the claims
(``reprodl compare``) and a model's evaluation (``reprodl evaluate``) share these numbers.
"""

from __future__ import annotations

from typing import Any

BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0


def baseline_accuracies(counts: dict[str, int]) -> dict[str, float]:
    """Accuracy of always predicting the majority class, and (expected) of guessing by class frequency."""
    total = sum(counts.values())
    if not total:
        return {}
    return {
        "majority": max(counts.values()) / total,
        "stratified_random": sum((c / total) ** 2 for c in counts.values()),
    }


def evaluation_baselines(
    confusion: Any, *, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED
) -> dict[str, dict[str, float]]:
    """The baselines on evaluated data, each with P(model > baseline), from the model's confusion matrix.

    ``confusion[i][j]`` counts items of true class i predicted as j. The majority baseline
    predicts the evaluated data's most frequent class; the stratified-random one guesses each
    class with its frequency in the data (its correctness on an item of class k counts as its
    expectation, the frequency of k). P(model > baseline) is a paired bootstrap over the items:
    each of ``resamples`` draws (fixed ``seed``) takes the items with replacement and compares
    the model's accuracy on them with the baseline's on the same items; it is the fraction of
    draws in which the model's is higher, a tie counting one half.
    """
    import numpy as np

    matrix = np.asarray(confusion, dtype=np.int64)
    support = matrix.sum(1)
    n = int(support.sum())
    if not n:
        return {}
    counts = {str(i): int(c) for i, c in enumerate(support)}
    accuracies = baseline_accuracies(counts)
    freq = support / n
    per_class = {"majority": (np.arange(len(support)) == support.argmax()).astype(float), "stratified_random": freq}
    draws = np.random.default_rng(seed).multinomial(n, matrix.reshape(-1) / n, size=resamples)
    result = {}
    for name, base in per_class.items():
        # per (true, predicted) cell: the model's correctness minus the baseline's
        gain = np.eye(len(support)) - base[:, None]
        diff = draws @ gain.reshape(-1) / n
        better = float(np.mean(diff > 1e-12) + 0.5 * np.mean(np.abs(diff) <= 1e-12))
        result[name] = {"accuracy": accuracies[name], "probability_model_better": better}
    return result
