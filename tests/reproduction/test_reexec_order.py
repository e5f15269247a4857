"""A re-executed run whose loaders recorded no data order: the verdict says it could not tell."""

from __future__ import annotations

import json
from pathlib import Path

from reprodl.provenance import ProvenanceRecord
from reprodl.reproduction.reexec import _order_matches
from reprodl.reproduction.verdict import Comparison, Tolerance, judge

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "provenance.json"


def _record(digests: list[str], not_recorded: str | None = None) -> ProvenanceRecord:
    record = ProvenanceRecord.model_validate(json.loads(GOLDEN.read_text()))
    update = {"data_order_digests": digests, "data_order_not_recorded": not_recorded}
    training = record.training.model_copy(update=update)
    return record.model_copy(update={"training": training})


WEIGHTS = {"identical": True, "within_tolerance": True, "n_tensors": 1, "n_identical": 1, "max_abs_diff": 0.0}


def _judge(old: ProvenanceRecord, new: ProvenanceRecord, order_matches: bool | None) -> tuple[str, list[str]]:
    """The one verdict, as a re-executed run calls it (no predictions compared, no trace)."""
    comparison = Comparison(WEIGHTS, [], {}, order_matches, None)
    judged = judge(old, new, comparison, code=None, environment=[], expectation=None, tol=Tolerance())
    return judged.verdict, judged.reasons


def test_no_digests_on_either_side_is_unknown_not_a_match() -> None:
    assert _order_matches(_record([]), _record([])) is None
    assert _order_matches(_record(["a"]), _record(["a"])) is True
    assert _order_matches(_record(["a"]), _record(["b"])) is False
    assert _order_matches(_record(["a"]), _record([])) is False


def test_an_unrecorded_order_is_a_reason_citing_why() -> None:
    old = _record([], not_recorded="a custom batch sampler")
    verdict, reasons = _judge(old, _record([]), None)
    assert verdict == "identical"  # the weights came back; the reason says what was not checked
    [reason] = [r for r in reasons if "data order" in r]
    assert "cannot tell" in reason and "a custom batch sampler" in reason


def test_a_different_order_is_a_reason() -> None:
    _, reasons = _judge(_record(["a"]), _record(["b"]), False)
    assert any("order in which samples were seen differs" in r for r in reasons)


def test_metrics_logged_by_step_are_compared_and_shown_by_step(capsys) -> None:
    """run.log(step=20, loss=...) is shown as "loss (step 20)", not as an epoch (nanoGPT logs by iteration)."""
    from types import SimpleNamespace

    from reprodl.cli.reproduce import _print_comparison
    from reprodl.reproduction.reexec import compare_logged

    def record(logged: list[dict[str, float]]) -> SimpleNamespace:
        return SimpleNamespace(results=SimpleNamespace(logged=logged))

    rows = compare_logged(
        record([{"step": 10, "loss": 2.0}, {"step": 20, "loss": 1.5}]),
        record([{"step": 10, "loss": 2.0}, {"step": 20, "loss": 1.25}]),
    )
    assert [(r["epoch"], r["at"], r["abs_diff"]) for r in rows] == [(10, "step", 0.0), (20, "step", 0.25)]
    weights = {"n_identical": 1, "n_tensors": 1, "max_abs_diff": 0.0}
    _print_comparison(SimpleNamespace(weights=weights, metrics=rows, predictions={}, envelope=None))
    shown = capsys.readouterr().out
    assert "loss (step 20): 1.5 -> 1.25" in shown and "epoch" not in shown
