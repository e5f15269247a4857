"""compare's sources of variation beyond the seed: a bootstrap of the training data, and augmentation."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

pytest.register_assert_rewrite("train_fixtures")

from train_fixtures import N_TRAIN, digits_config

from reprodl.data.datasets import TensorDataSet
from reprodl.errors import DatasetFormatError
from reprodl.modeldataset.read import load_record
from reprodl.reproduction import claim_runs, claims
from reprodl.training.config import load_config

pytest_plugins = ["train_fixtures"]


def test_a_bootstrap_resamples_the_selection_with_replacement_by_its_seed(digits_split_master):
    plain = TensorDataSet(digits_split_master, "train")
    first = TensorDataSet(digits_split_master, "train", bootstrap=3)
    assert len(first) == len(plain) == N_TRAIN
    assert len(set(first.rows.tolist())) < N_TRAIN  # drawn with replacement: some twice, some not at all
    assert set(first.rows.tolist()) <= set(plain.rows.tolist())  # only from the train usetype
    assert np.array_equal(first.rows, TensorDataSet(digits_split_master, "train", bootstrap=3).rows)
    assert not np.array_equal(first.rows, TensorDataSet(digits_split_master, "train", bootstrap=4).rows)
    assert first.selection_digest() != plain.selection_digest()
    x, y = first[5]
    assert int(y) == int(first.labels[5]) and x.shape == (1, 8, 8)
    with pytest.raises(DatasetFormatError, match=r"bootstrap= is the seed of a resample, an integer >= 0"):
        TensorDataSet(digits_split_master, "train", bootstrap=-1)


def test_compare_by_default_varies_all_it_can_and_a_bootstrapped_member_reproduces(digits_split_master, tmp_path, cli):
    (tmp_path / "out").mkdir()
    cfg = digits_config(digits_split_master, tmp_path / "out", name="boot")
    result = claims.compare(cfg, seeds=2, set_b=["lr=0.01"])
    assert result.vary == ["init", "order", "split", "bootstrap"]
    assert result.notes == ["augment: nothing to vary: neither recipe has a random transform"]
    for side in ("a", "b"):
        for run in result.runs[side]:
            train, valid = load_record(run.uri).data
            assert (train.role, train.bootstrap, valid.bootstrap) == ("train", run.seed, None)
            assert train.split == valid.split == {"test": 0.2, "seed": run.seed}
    # The resample is recorded: reproducing a member trains on the same samples, bit for bit.
    reproduced = cli("reproduce", result.runs["b"][1].uri, "--json")
    assert reproduced.exit_code == 0, reproduced.stdout[-2000:]
    assert '"verdict": "identical"' in reproduced.stdout


def _cfg(data_uri, tmp_path, **train_spec):
    raw = digits_config(data_uri, tmp_path)
    raw["data"]["train"].update(train_spec)
    return load_config(raw)


def test_augment_varies_only_where_a_recipe_has_random_transforms(tmp_path):
    flip = [{"name": "RandomHorizontalFlip", "p": 0.5}]
    plain, augmented = _cfg("d", tmp_path), _cfg("d", tmp_path, transform=flip)
    all_five = claims.parse_vary(None)
    varied, notes = claim_runs._in_effect({"a": plain, "b": augmented}, all_five, explicit=False)
    assert varied == all_five
    assert notes == ["augment: the random transforms draw from each run's seed, so augmentation varies with it"]
    varied, notes = claim_runs._in_effect({"a": plain, "b": plain}, all_five, explicit=True)
    assert "augment" not in varied and notes == ["augment: nothing to vary: neither recipe has a random transform"]
    varied, notes = claim_runs._in_effect({"a": augmented, "b": augmented}, ["init", "order"], explicit=True)
    assert varied == ["init", "order"] and "varies anyway (it cannot be held fixed)" in notes[0]
    no_usetype = load_config({**digits_config("d", tmp_path), "data": {"train": {"uri": "d"}}})
    varied, notes = claim_runs._in_effect({"a": no_usetype, "b": no_usetype}, all_five, explicit=False)
    assert "split" not in varied and "split: nothing to vary: no data spec has a usetype to resplit" in notes


def test_the_pool_is_kept_between_compares_and_can_be_ended():
    first = claims.pool(2)
    try:
        assert claims.pool(2) is first
        pids = {first.submit(_pid).result() for _ in range(6)}
        assert 1 <= len(pids) <= 2 and os.getpid() not in pids
    finally:
        claims.shutdown_pools()
    assert claims.pool(1) is not first
    claims.shutdown_pools()


def _pid() -> int:
    return os.getpid()


def test_member_configs_train_the_runs_compare_trains(digits_split_master, tmp_path, cli):
    for folder in ("here", "cluster"):
        (tmp_path / folder).mkdir()
    cfg = digits_config(digits_split_master, tmp_path / "here", name="member")
    here = claims.compare(cfg, seeds=2, set_b=["lr=0.01"])
    args = [_yaml(tmp_path, cfg), "--seeds", "2", "--set-b", "lr=0.01", "--output", str(tmp_path / "cluster")]
    written = cli("compare", *args, "--write-configs", str(tmp_path / "configs"), "--json")
    assert written.exit_code == 0, written.stderr
    paths = json.loads(written.stdout)
    assert [Path(p).name for p in paths] == [
        "member-vs-member.a.seed0.yaml", "member-vs-member.b.seed0.yaml",
        "member-vs-member.a.seed1.yaml", "member-vs-member.b.seed1.yaml",
    ]  # fmt: skip
    assert not any((tmp_path / "cluster").iterdir())  # nothing trained
    again = cli("compare", *args, "--write-configs", str(tmp_path / "configs"))
    assert again.exit_code == 2 and "already exist: write the member configs to an empty directory" in again.stderr
    for path in paths[2:]:  # what one cluster task per file runs
        trained = cli("train", path, "--json")
        assert trained.exit_code == 0, trained.stderr
    for side in ("a", "b"):
        record = load_record(str(tmp_path / "cluster" / f"member-vs-member.{side}.seed1"))
        assert record.results.final["valid_accuracy"] == here.runs[side][1].value
        assert record.data[0].bootstrap == 1 and record.data[0].split == {"test": 0.2, "seed": 1}
    early = cli("collect", str(tmp_path / "configs"))
    assert early.exit_code == 2 and "member-vs-member.a.seed0 has not been trained" in early.stderr
    for path in paths[:2]:
        assert cli("train", path).exit_code == 0
    collected = cli("collect", str(tmp_path / "configs"), "--json")
    assert collected.exit_code == 0, collected.stderr
    report = json.loads(collected.stdout)
    mine = here.to_dict()
    for key in ("probability_a_better", "ci_low", "ci_high", "verdict", "vary", "notes", "baselines"):
        assert report[key] == mine[key], key
    assert [(r["seed"], r["value"]) for r in report["runs"]["b"]] == [(r.seed, r.value) for r in here.runs["b"]]
    assert report["claim_uri"].endswith("/cluster/member-vs-member")
    assert cli("verify", report["claim_uri"]).exit_code == 0
    again = json.loads(cli("collect", str(tmp_path / "configs"), "--json").stdout)  # the same members: same claim
    assert again["claim_uri"] == report["claim_uri"]
    assert sorted(p.name for p in (tmp_path / "cluster").iterdir() if "seed" not in p.name) == ["member-vs-member"]


def _yaml(tmp_path, cfg) -> str:
    import yaml

    path = tmp_path / "member.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)
