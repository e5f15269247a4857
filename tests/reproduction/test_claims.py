"""Claims: `reprodl compare` (P(A>B), its bootstrap interval, the verdict) and the claim dataset.

Modules: reprodl.reproduction.claims (the public face), reprodl.reproduction.claim_runs (training the
members), reprodl.reproduction.claim_compare (comparing them), reprodl.reproduction.claim_stats.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

pytest.register_assert_rewrite("train_fixtures")

from train_fixtures import digits_config, path_of

from reprodl import keys
from reprodl.errors import ParametersError
from reprodl.reproduction import claim_runs, claims
from reprodl.store import open_dataset

pytest_plugins = ["train_fixtures"]

JSON_KEYS = {"probability_a_better", "ci_low", "ci_high", "verdict", "metric", "n", "runs", "rule"}


def _numbers(result: dict) -> dict:
    """What a re-run must repeat: the statistics and each run's seed and value."""
    keep = ("probability_a_better", "ci_low", "ci_high", "verdict", "metric", "n")
    runs = {s: [(r["seed"], r["value"]) for r in result["runs"][s]] for s in ("a", "b")}
    return {**{k: result[k] for k in keep}, "runs": runs}


def _config(tmp_path: Path, data_uri: str, name: str, **params) -> Path:
    path = tmp_path / f"{name}.yaml"
    (tmp_path / "out").mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump(digits_config(data_uri, tmp_path / "out", name=name, **params)))
    return path


# --- the statistics, without training ------------------------------------------------------


def test_probability_counts_ties_as_half():
    assert claims.probability_a_better([0.9, 0.8, 0.7, 0.6], [0.5, 0.8, 0.9, 0.1]) == pytest.approx(2.5 / 4)


def test_bootstrap_interval_is_seeded_and_brackets_the_estimate():
    a, b = [0.9, 0.8, 0.7, 0.6, 0.5], [0.5, 0.8, 0.9, 0.1, 0.2]
    low, high = claims.bootstrap_interval(a, b)
    assert (low, high) == claims.bootstrap_interval(a, b)
    assert low <= claims.probability_a_better(a, b) <= high
    assert claims.bootstrap_interval([1.0] * 4, [0.0] * 4) == (1.0, 1.0)


@pytest.mark.parametrize(
    ("p", "low", "high", "expected"),
    [
        (1.0, 1.0, 1.0, "A better"),
        (0.75, 0.51, 1.0, "A better"),
        (0.7, 0.55, 0.9, "no detectable difference"),  # P(A>B) under 0.75
        (0.8, 0.5, 1.0, "no detectable difference"),  # the interval reaches 0.5
        (0.0, 0.0, 0.0, "B better"),
        (0.5, 0.5, 0.5, "no detectable difference"),
    ],
)
def test_verdict_rule(p, low, high, expected):
    assert claims.verdict(p, low, high) == expected
    assert expected in claims.VERDICTS


def test_baseline_accuracies():
    assert claims.baseline_accuracies({"cat": 3, "dog": 1}) == {"majority": 0.75, "stratified_random": 0.625}


def test_vary_refuses_what_is_not_a_source_of_variation_naming_what_is():
    assert claims.parse_vary(None) == ["init", "order", "split", "bootstrap", "augment"]
    assert claims.parse_vary("order,init") == ["init", "order"]
    assert claims.parse_vary("split,order,init") == ["init", "order", "split"]
    assert claims.parse_vary("augment,bootstrap,init,order") == ["init", "order", "bootstrap", "augment"]
    with pytest.raises(ParametersError, match=r"not a source of variation: use init,order,split,bootstrap,augment"):
        claims.parse_vary("init,weather")
    with pytest.raises(ParametersError, match=r"vary together"):
        claims.parse_vary("init")


def test_compare_refuses_fewer_than_two_seeds_and_no_jobs(tmp_path):
    cfg = digits_config(str(tmp_path / "nodata"), tmp_path / "out")
    with pytest.raises(ParametersError, match="at least 2 runs"):
        claims.compare(cfg, seeds=1)
    with pytest.raises(ParametersError, match="--jobs"):
        claims.compare(cfg, seeds=2, jobs=0)


# --- on digits -------------------------------------------------------------------------------


def test_high_lr_beats_tiny_lr_and_the_claim_verifies(digits_split_master, tmp_path, cli):
    config = _config(tmp_path, digits_split_master, "digits", n_epochs=3)
    result = cli("compare", config, "--seeds", "4", "--set-a", "lr=0.05", "--set-b", "lr=0.0005", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert JSON_KEYS <= set(report)
    assert report["verdict"] == "A better"
    assert report["probability_a_better"] >= 0.9
    assert report["n"] == 4 and report["metric"] == "valid_accuracy"
    band = report["evaluation_band"]  # each member on its own validation data at 256, 7 and 1
    assert band["batch_sizes"] == [256, 7, 1] and len(band["members"]) == 8
    assert band["band"] == max(band["members"].values()) >= 0
    majority = report["baselines"]["majority"]
    assert 0.1 < majority["accuracy"] < 0.11  # the digits are balanced: 37 of 359 in the largest class
    assert majority["probability_a_better"] == 1.0
    assert report["baselines"]["stratified_random"]["accuracy"] < majority["accuracy"]
    assert [r["seed"] for r in report["runs"]["a"]] == [r["seed"] for r in report["runs"]["b"]] == [0, 1, 2, 3]
    for run in report["runs"]["a"] + report["runs"]["b"]:
        assert open_dataset(run["uri"]).get_annotation(keys.RECORD_DIGEST) == run["record_digest"]
    # The claim is a dataset: its JSON, the plot, and a verify that checks every member.
    claim = report["claim_uri"]
    assert claims.is_claim(claim)
    stored = claims.load_claim(claim)
    assert _numbers(stored) == _numbers(report) and stored["rule"] == claims.RULE
    assert (path_of(claim) / "data" / keys.CLAIM_PLOT_FILE).read_bytes()[:4] == b"\x89PNG"
    verified = cli("verify", claim, "--json")
    assert verified.exit_code == 0, verified.stdout
    checks = json.loads(verified.stdout)["checks"]
    assert sum(c["name"].startswith("member ") for c in checks) == 24
    assert all(c["ok"] for c in checks)
    # Tampering with one member's weights fails the claim's verify, naming the member.
    member = path_of(report["runs"]["b"][2]["uri"]) / "data" / keys.WEIGHTS_FILE
    raw = bytearray(member.read_bytes())
    raw[-1] ^= 0xFF
    member.write_bytes(bytes(raw))
    failed = cli("verify", claim)
    assert failed.exit_code != 0
    assert "FAILED  member B seed 2" in failed.stdout


def test_a_recipe_against_itself_and_a_rerun_gives_identical_numbers(digits_split_master, tmp_path):
    for folder in ("first", "second"):
        (tmp_path / folder).mkdir()
    cfg = digits_config(digits_split_master, tmp_path / "first", name="self")
    first = claims.compare(cfg, seeds=3).to_dict()
    assert first["verdict"] == "no detectable difference"
    assert first["ci_low"] <= 0.5 <= first["ci_high"]
    again = claims.compare(cfg, seeds=3, output=str(tmp_path / "second")).to_dict()
    assert _numbers(again) == _numbers(first)
    assert again["claim_uri"] != first["claim_uri"]


def test_a_pool_of_processes_gives_the_numbers_of_one_process(digits_split_master, tmp_path):
    for folder in ("one", "pool"):
        (tmp_path / folder).mkdir()
    cfg = digits_config(digits_split_master, tmp_path / "one", name="pool")
    one = claims.compare(cfg, seeds=2, set_b=["lr=0.01"]).to_dict()
    pool = claims.compare(cfg, seeds=2, set_b=["lr=0.01"], jobs=2, output=str(tmp_path / "pool")).to_dict()
    assert _numbers(pool) == _numbers(one)


def test_a_leftover_run_of_a_failed_compare_moves_the_claim_name_on(digits_split_master, tmp_path):
    out = tmp_path / "out"
    (out / "pool-vs-pool.b.seed1").mkdir(parents=True)
    assert claim_runs._claim_name(str(out), "pool-vs-pool", sides="ab", seeds=2, base=0) == "pool-vs-pool-2"


def test_variant_parsing():
    assert claims.parse_variant("no-momentum: optimizer.momentum=0 lr=0.1") == (
        "no-momentum",
        ["optimizer.momentum=0", "lr=0.1"],
    )
    for bad in ("no-momentum optimizer.momentum=0", "bad name: lr=1", "x: lr", "x:"):
        with pytest.raises(ParametersError, match="NAME: key=value"):
            claims.parse_variant(bad)


def test_ablate_one_line_per_variant_each_a_claim(digits_split_master, tmp_path, cli):
    config = _config(tmp_path, digits_split_master, "digits")
    result = cli(
        "ablate", config, "--seeds", "3", "--variant", "tiny-lr: lr=0.0005", "--variant", "same: lr=0.05", "--json"
    )
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert [r["seed"] for r in report["base"]] == [0, 1, 2]
    tiny, same = report["variants"]["tiny-lr"], report["variants"]["same"]
    assert tiny["verdict"] == "A better" and tiny["probability_a_better"] == 1.0
    assert same["verdict"] == "no detectable difference" and same["probability_a_better"] == 0.5
    assert [r["uri"] for r in tiny["runs"]["a"]] == [r["uri"] for r in same["runs"]["a"]]  # the base, trained once
    assert claims.is_claim(tiny["claim_uri"]) and claims.is_claim(same["claim_uri"])
    text = cli("ablate", config, "--seeds", "2", "--set", "lr=0.1", "--variant", "tiny-lr: lr=0.0005")
    assert text.exit_code == 0, text.stderr
    assert "tiny-lr: 1.000 [1.000, 1.000]  A better" in text.stdout
    line = next(x for x in text.stdout.splitlines() if "tiny-lr:" in x)
    ablation = claims.load_claim(line.split()[-1])  # the line ends with its claim's URI
    assert ablation["recipes"]["a"].endswith("with lr=0.1") and ablation["recipes"]["b"].endswith("lr=0.1 lr=0.0005")


def test_vary_split_resplits_each_pair_alike(digits_split_master, tmp_path):
    from reprodl.modeldataset.read import load_record

    (tmp_path / "out").mkdir()
    cfg = digits_config(digits_split_master, tmp_path / "out", name="split")
    result = claims.compare(cfg, seeds=2, vary="init,order,split")
    assert result.vary == ["init", "order", "split"] and result.verdict == "no detectable difference"
    splits = {}
    for side in ("a", "b"):
        for run in result.runs[side]:
            record = load_record(run.uri)
            splits[(side, run.seed)] = [d.split for d in record.data]
    assert splits[("a", 0)] == splits[("b", 0)] != splits[("a", 1)] == splits[("b", 1)]


def test_a_metric_the_runs_will_not_report_is_refused_before_any_training(tmp_path: Path) -> None:
    from reprodl.errors import ParametersError
    from reprodl.reproduction.claims import check_metric
    from reprodl.training.config import TrainConfig

    raw = digits_config("data/digits", tmp_path)
    del raw["data"]["valid"]
    cfg = TrainConfig.model_validate(raw)
    with pytest.raises(
        ParametersError, match=r"will not report the metric 'valid_accuracy' .*give the config data.valid"
    ):
        check_metric({"a": cfg}, "valid_accuracy")
    with pytest.raises(ParametersError, match="will not report the metric 'nosuch'"):
        check_metric({"a": cfg}, "nosuch")
    check_metric({"a": cfg}, "train_loss")
