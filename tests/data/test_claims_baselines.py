"""Baselines beside a model's evaluation: majority-class and stratified-random, with P(model > baseline)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.register_assert_rewrite("train_fixtures")

from reprodl.data.baselines import evaluation_baselines

pytest_plugins = ["train_fixtures"]


def test_a_perfect_model_beats_both_baselines_and_a_wrong_one_neither():
    perfect = np.diag([30, 10, 10])
    result = evaluation_baselines(perfect)
    assert result["majority"] == {"accuracy": 0.6, "probability_model_better": 1.0}
    assert result["stratified_random"]["accuracy"] == pytest.approx(0.36 + 0.04 + 0.04)
    assert result["stratified_random"]["probability_model_better"] == 1.0
    wrong = np.array([[0, 30, 0], [10, 0, 0], [10, 0, 0]])
    assert {row["probability_model_better"] for row in evaluation_baselines(wrong).values()} == {0.0}


def test_a_model_that_always_predicts_the_majority_class_ties_with_it():
    always_first = np.array([[30, 0, 0], [10, 0, 0], [10, 0, 0]])
    result = evaluation_baselines(always_first)
    assert result["majority"]["probability_model_better"] == 0.5  # the same prediction on every item
    assert result["stratified_random"]["probability_model_better"] > 0.95  # 0.6 against 0.44 on 50 items


def test_a_close_call_is_uncertain_and_the_bootstrap_is_seeded():
    # 55% right on 100 items of two balanced classes: barely above the baselines' 50%.
    close = np.array([[28, 22], [23, 27]])
    p = evaluation_baselines(close)["majority"]["probability_model_better"]
    assert 0.6 < p < 0.95
    assert evaluation_baselines(close) == evaluation_baselines(close)
    assert evaluation_baselines(np.zeros((2, 2))) == {}


def test_evaluate_json_has_the_baselines(trained_model, cli):
    result = cli("evaluate", trained_model.uri, trained_model.data_uri, "--usetype", "test", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    majority, stratified = report["baselines"]["majority"], report["baselines"]["stratified_random"]
    assert majority["accuracy"] == report["majority_baseline_accuracy"]
    assert stratified["accuracy"] < majority["accuracy"] < 0.15 < report["accuracy"]
    assert majority["probability_model_better"] == stratified["probability_model_better"] == 1.0
    text = cli("evaluate", trained_model.uri, trained_model.data_uri, "--usetype", "test")
    assert "baseline stratified-random: accuracy" in text.stdout and "P(model > it) 1.000" in text.stdout
