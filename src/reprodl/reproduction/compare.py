"""Comparing a reproduction with its original: metrics, predictions, envelopes (the weights: :mod:`.weightdiff`).

No torch at import: a re-executed run is compared without it."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from reprodl.errors import ReproductionError
from reprodl.provenance import ProvenanceRecord

if TYPE_CHECKING:
    import torch

    from reprodl.data.datasets import WrappedDataSet


@dataclasses.dataclass
class Tolerance:
    """How far a reproduction may be from the original and still count.

    weights: per tensor, ``|a - b| <= atol + rtol * |a|`` everywhere; metrics: each final
    metric within ``metric_abs``; predictions: at least ``agreement`` of them equal.
    """

    atol: float = 1e-5
    rtol: float = 1e-4
    metric_abs: float = 0.02
    agreement: float = 0.99
    loss_rtol: float = 0.25

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ReproductionError(
                    f"tolerance {field.name} should be a finite number >= 0, but got {field.name}={value!r}; "
                    "e.g. --tolerance 'atol=1e-5,rtol=1e-4,metric=0.02,agreement=0.99'"
                )
        if self.agreement > 1:
            raise ReproductionError(
                f"tolerance agreement is a fraction of predictions, between 0 and 1, but got agreement={self.agreement}"
            )

    @classmethod
    def parse(cls, text: str | float | None) -> Tolerance:
        """From "1e-5" or 1e-5 (atol) or "atol=1e-5,rtol=1e-4,metric=0.02,agreement=0.99"."""
        if isinstance(text, (int, float)):
            return cls(atol=text)  # a bool is refused there
        if not text:
            return cls()
        values: dict[str, float] = {}
        names = {
            "atol": "atol",
            "rtol": "rtol",
            "metric": "metric_abs",
            "metric_abs": "metric_abs",
            "agreement": "agreement",
            "loss_rtol": "loss_rtol",
        }
        try:
            if "=" not in text:
                values["atol"] = float(text)
            else:
                for part in text.split(","):
                    key, _, value = part.partition("=")
                    if key.strip() not in names:
                        raise ValueError(key)
                    values[names[key.strip()]] = float(value)
        except ValueError:
            raise ReproductionError(
                f"tolerance {text!r} should be a number (atol) or a list like "
                "'atol=1e-5,rtol=1e-4,metric=0.02,agreement=0.99'"
            ) from None
        return cls(**values)


# --- comparison (the weights': :mod:`.weightdiff`) -----------------------------------------------------
def compare_metrics(a: ProvenanceRecord, b: ProvenanceRecord) -> list[dict[str, Any]]:
    """Per epoch and metric, the original and reproduced value and their difference."""
    rows = []
    for ma, mb in zip(a.results.history, b.results.history):
        for key in ("train_loss", "valid_loss", "valid_accuracy"):
            x, y = getattr(ma, key), getattr(mb, key)
            if x is None and y is None:
                continue
            rows.append(
                {
                    "epoch": ma.epoch,
                    "metric": key,
                    "original": x,
                    "reproduction": y,
                    "abs_diff": abs(x - y) if x is not None and y is not None else None,
                }
            )
    return rows


def compare_predictions(m1: torch.nn.Module | None, m2: torch.nn.Module, ds: WrappedDataSet) -> dict[str, Any]:
    """Agreement and accuracies of two models on ``ds``.

    ``m1=None`` says the first model is bit-identical to ``m2`` (same class, same weights):
    its predictions are then ``m2``'s, so ``m2`` alone is evaluated (one pass, not two).
    """
    import torch  # here: a re-executed run's comparison needs no torch

    from reprodl.data.datasets import collate

    if m1 is not None:
        m1.eval()
    m2.eval()
    agree = total = c1 = c2 = 0
    with torch.no_grad():
        for x, y in torch.utils.data.DataLoader(ds, batch_size=512, shuffle=False, collate_fn=collate):
            p2 = m2(x).argmax(1)
            p1 = p2 if m1 is None else m1(x).argmax(1)
            agree += int((p1 == p2).sum())
            c1 += int((p1 == y).sum())
            c2 += int((p2 == y).sum())
            total += len(y)
    return {
        "dataset": ds.name,
        "usetype": ds.usetype,
        "n": total,
        "agreement": agree / max(total, 1),
        "original_accuracy": c1 / max(total, 1),
        "reproduction_accuracy": c2 / max(total, 1),
    }


def judged_metrics(names: Iterable[str]) -> list[str]:
    """Accuracy metrics when there are any (what a claim about a model is about), else losses."""
    names = list(names)
    accuracy = [n for n in names if "accuracy" in n]
    return accuracy or names


def statistical_metrics_ok(
    rows: list[dict[str, Any]], epochs: int, tol: Tolerance, limits: dict[str, float] | None = None
) -> bool:
    """Final accuracies within ``limits`` (per metric; else ``metric_abs``); losses (only when no accuracy)
    within ``loss_rtol``."""
    final = {r["metric"]: r for r in rows if r["epoch"] == epochs and r["abs_diff"] is not None}
    judged = judged_metrics(final)
    if not judged:
        return False
    for name in judged:
        r = final[name]
        limit = (limits or {}).get(name, tol.metric_abs) if "accuracy" in name else tol.loss_rtol * abs(r["original"])
        if r["abs_diff"] > limit:
            return False
    return True


BAND_Z = 2.0  # the default band is this many binomial standard errors (about 95%)


def binomial_band(p: float, n: int) -> float:
    """The default band for an accuracy ``p`` measured on ``n`` items: ``BAND_Z * sqrt(p(1-p)/n)``, at
    least one item's worth (``1/n``) so that an accuracy of 0 or 1 still has a band."""

    return max(BAND_Z * math.sqrt(p * (1 - p) / n), 1 / n)


def default_bands(record: ProvenanceRecord, rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per final accuracy metric of ``rows`` evaluated on a recorded dataset: the binomial band, ``p`` and ``n``.

    ``valid_accuracy`` is measured on the validation data (else the test data): ``n`` is its recorded items.
    """
    last = max((r["epoch"] for r in rows if r.get("epoch") is not None), default=None)
    n = sum(r.n_items for r in record.data if r.role == "valid") or sum(
        r.n_items for r in record.data if r.role == "test"
    )
    out = {}
    for r in rows:
        if r["epoch"] == last and "accuracy" in r["metric"] and r["original"] is not None and n > 0:
            p = float(r["original"])
            out[r["metric"]] = {"band": binomial_band(p, n), "p": p, "n": n}
    return out


def envelope_check(envelope: dict[str, Any], new: ProvenanceRecord) -> dict[str, Any]:
    """Is each judged final metric of the new run inside [min, max] widened by 1 std of the multi-run summary?"""
    final = {k: v for k, v in envelope.get("final", {}).items() if k in judged_metrics(envelope.get("final", {}))}
    rows = []
    within = True
    for metric, stats in final.items():
        value = new.results.final.get(metric)
        if value is None:
            continue
        lo = stats["min"] - stats["std"]
        hi = stats["max"] + stats["std"]
        ok = lo <= value <= hi
        within &= ok
        rows.append({"metric": metric, "value": value, "low": lo, "high": hi, "mean": stats["mean"], "within": ok})
    return {"within": within and bool(rows), "metrics": rows}
