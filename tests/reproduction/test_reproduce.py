"""Reproduction from the record, verification, diff and multi-run envelopes.

The "must hold" cases: a default CPU model comes back `identical`; changed data is refused
before any training, naming the item; edited metadata in a copy does not fool verification;
a statistical-mode model is judged on numbers, never called `identical`; environment
differences are listed; a multi-run envelope judges a statistical reproduction.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import snapshot

from reprodl import keys
from reprodl.errors import IntegrityError, ParametersError, ReproductionError
from reprodl.modeldataset.read import load_record
from reprodl.modeldataset.verify import verify_model
from reprodl.provenance import diff_records, parse_record
from reprodl.reproduction.rerun import Tolerance, reproduce
from reprodl.store import open_dataset

pytest.register_assert_rewrite("train_fixtures")

from train_fixtures import digits_config, flip_byte, item_file, path_of, rewrite_model, train_digits

pytest_plugins = ["train_fixtures"]


def _failed(result) -> dict[str, str]:
    return {c.name: c.detail for c in result.checks if not c.ok}


# --- bitwise reproduction ------------------------------------------------------------------------


def test_cpu_model_with_default_settings_reproduces_identical(trained_model, tmp_path):
    report = reproduce(trained_model.uri, output=str(tmp_path))
    assert report.verdict == "identical" and report.ok and report.exit_code == 0
    assert report.mode == "bitwise"
    assert report.weights["identical"] and report.weights["max_abs_diff"] == 0.0
    assert report.weights["n_identical"] == report.weights["n_tensors"] == 6
    assert report.data_order_matches is True
    assert [c.ok for c in report.data_checks] == [True]  # one dataset, train and valid splits
    assert report.predictions["agreement"] == 1.0 and report.predictions["n"] == 359
    assert report.metrics and all(r["abs_diff"] == 0.0 for r in report.metrics)
    assert report.environment_differences == [] and report.reasons == []
    assert json.loads(report.to_json())["verdict"] == "identical"
    copy = load_record(report.reproduction_uri)
    assert copy.lineage.reproduces.uri == trained_model.uri
    assert copy.lineage.reproduces.record_digest == trained_model.record.digest
    assert copy.results.weights_sha256 == trained_model.record.results.weights_sha256


def test_model_with_adam_a_scheduler_and_loss_arguments_reproduces_identical(digits_split_master, tmp_path):
    uri, record = train_digits(
        tmp_path,
        "adam",
        digits_split_master,
        n_epochs=2,
        valid=False,
        loss_fn=torch.nn.CrossEntropyLoss(label_smoothing=0.1),
        optimiser=lambda net, p: torch.optim.Adam(net.parameters(), lr=0.01, betas=(0.8, 0.99), weight_decay=1e-4),
        scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5),
    )
    assert record.training.optimizer.param_groups[0]["betas"] == [0.8, 0.99]
    report = reproduce(uri)
    assert report.verdict == "identical", report.reasons
    assert report.predictions["dataset"] == "digits" and report.predictions["usetype"] == "train"


def test_unseeded_initial_weights_are_stored_and_reproduce(digits_split_master, tmp_path):
    from reprodl import GenNet

    torch.manual_seed(12345)  # not the params' seed: the start cannot be rebuilt from the constructor
    uri, record = train_digits(
        tmp_path, "stored", digits_split_master, valid=False, model=GenNet(input_channels=1, input_dim=8)
    )
    assert record.architecture.initialisation == "stored"
    ds = open_dataset(uri)
    assert keys.INITIAL_WEIGHTS_FILE in {ds.relpath(i) for i in ds.identifiers}
    assert reproduce(uri).verdict == "identical"


def test_fine_tuned_model_reproduces_from_its_parent(digits_split_master, tmp_path):
    from reprodl.training.config import build_and_train, load_config

    parent_uri, _ = build_and_train(
        load_config(digits_config(digits_split_master, tmp_path, name="parent")), progress=False
    )
    cfg = digits_config(digits_split_master, tmp_path, name="child")
    cfg.update(parent=parent_uri, freeze=["conv1", "conv2"])
    child_uri, record = build_and_train(load_config(cfg), progress=False)
    assert record.architecture.initialisation == "parent"
    report = reproduce(child_uri)
    assert report.verdict == "identical", report.reasons


# --- changed data: refused before training ------------------------------------------------------


@pytest.mark.parametrize("keep_mtime", [False, True], ids=["edited", "edited-mtime-restored"])
def test_changed_training_item_is_refused_before_training(digits_split_uri, tmp_path, keep_mtime):
    uri, _ = train_digits(tmp_path, "model", digits_split_uri, valid=False)
    flip_byte(item_file(digits_split_uri, "data.npy"), offset=-7, keep_mtime=keep_mtime)
    out = tmp_path / "reproductions"
    out.mkdir()
    with pytest.raises(IntegrityError, match=r"refusing to reproduce(.|\n)*content altered: data\.npy") as info:
        reproduce(uri, output=str(out))
    assert info.value.problems and all("data.npy" in p for p in info.value.problems)
    assert snapshot(out) == []  # nothing was trained

    result = verify_model(uri, data=True)
    assert not result.ok
    ((name, detail),) = _failed(result).items()
    assert name.startswith("train data digits") and "content altered: data.npy" in detail


def test_missing_training_data_is_refused(digits_split_uri, tmp_path):
    uri, _ = train_digits(tmp_path, "model", digits_split_uri, valid=False)
    shutil.rmtree(path_of(digits_split_uri))
    with pytest.raises(IntegrityError, match="cannot be opened"):
        reproduce(uri)


# --- edited metadata does not fool verification ------------------------------------------------


def test_verify_passes_on_an_untouched_model(trained_model):
    result = verify_model(trained_model.uri, data=True)
    assert result.ok, _failed(result)
    assert [c.name for c in result.checks][:4] == [
        "model dataset items match its manifest",
        "provenance record digest",
        "annotations mirror the record",
        "weights match the record",
    ]


def test_edited_annotations_in_a_copy_do_not_fool_verify(model_copy):
    ds = open_dataset(model_copy)
    params = ds.get_annotation(keys.MODEL_PARAMETERS)
    params["learning_rate"] = 0.5
    ds.put_annotation(keys.MODEL_PARAMETERS, params)
    ds.put_annotation(keys.SOURCE_DATASET_NAME, "mnist")

    assert load_record(str(model_copy)).training.params["learning_rate"] == 0.05  # the record is what counts
    result = verify_model(str(model_copy))
    failed = _failed(result)
    assert list(failed) == ["annotations mirror the record"]
    assert "model_parameters" in failed["annotations mirror the record"]
    assert 'source_dataset_name says "mnist"' in failed["annotations mirror the record"]


def test_edited_record_in_a_copy_fails_verification(model_copy):
    from reprodl import TrainedTorchModel

    record_file = model_copy / "data" / keys.PROVENANCE_FILE
    raw = json.loads(record_file.read_text())
    raw["training"]["params"]["learning_rate"] = 0.5
    raw["training"]["optimizer"]["param_groups"][0]["lr"] = 0.5
    record_file.write_text(json.dumps(raw, indent=2))

    failed = _failed(verify_model(str(model_copy)))
    assert "provenance.json" in failed["model dataset items match its manifest"]
    assert "the provenance record was altered" in failed["provenance record digest"]
    for load in (load_record, TrainedTorchModel, reproduce):
        with pytest.raises(IntegrityError, match="the provenance record was altered"):
            load(str(model_copy))

    # Resealing the edited record fixes its digest, not the dtool manifest that hashes the item.
    record_file.write_text(parse_record(json.dumps(raw)).sealed().to_json())
    failed = _failed(verify_model(str(model_copy)))
    assert "provenance.json" in failed["model dataset items match its manifest"]
    assert "provenance record digest" not in failed


def test_edited_and_refrozen_hyperparameters_are_caught_by_reproduction(trained_model, tmp_path):
    def faster(raw):
        raw["training"]["params"]["learning_rate"] = 0.5
        raw["training"]["optimizer"]["param_groups"][0]["lr"] = 0.5

    uri = rewrite_model(trained_model.uri, tmp_path, "forged", edit=faster)
    failed = _failed(verify_model(uri))
    assert list(failed) == ["annotations mirror the record"]  # only the stale mirror gives it away offline
    report = reproduce(uri)
    assert report.verdict == "differs" and not report.ok and report.exit_code == 1
    assert report.weights["identical"] is False
    assert any(r.startswith("weights differ") for r in report.reasons)


# --- statistical mode ---------------------------------------------------------------------------


def test_statistical_mode_is_reported_with_numbers_never_identical(digits_split_master, tmp_path):
    uri, record = train_digits(tmp_path, "stat", digits_split_master, n_epochs=2, deterministic=False, num_workers=2)
    t = record.training
    assert t.determinism.mode == "statistical" and t.num_workers == 2 and len(t.seeds.worker_seeds) == 2
    report = reproduce(uri)
    assert report.mode == "statistical"
    assert report.verdict in ("within tolerance", "differs")
    assert report.exit_code == (0 if report.verdict == "within tolerance" else 1)
    assert any("re-run with seed 100003 (recorded 0)" in r for r in report.reasons)
    assert report.data_order_matches is False
    last = [r for r in report.metrics if r["epoch"] == 2]
    assert {r["metric"] for r in last} == {"train_loss", "valid_loss", "valid_accuracy"}
    for row in last:
        assert isinstance(row["original"], float) and isinstance(row["reproduction"], float)
        assert row["abs_diff"] == pytest.approx(abs(row["original"] - row["reproduction"]))
    assert report.weights["max_abs_diff"] > 0
    assert 0.0 <= report.predictions["agreement"] <= 1.0


# --- environment differences ----------------------------------------------------------------------


def test_report_lists_environment_differences(trained_model, tmp_path):
    def older_torch(raw):
        raw["environment"]["torch"] = "1.13.1"
        raw["environment"]["packages"]["torch"] = "1.13.1"

    uri = rewrite_model(trained_model.uri, tmp_path, "old-torch", edit=older_torch)
    report = reproduce(uri)
    differences = {d["what"]: d for d in report.to_dict()["environment_differences"]}
    assert differences["torch"] == {"what": "torch", "recorded": "1.13.1", "now": torch.__version__}
    assert differences["package torch"]["recorded"] == "1.13.1"
    assert f"environment differs: torch 1.13.1 -> {torch.__version__}" in report.reasons
    assert "1 installed package version(s) differ" in report.reasons
    assert report.verdict == "identical"  # the weights came back bit for bit all the same


# --- diff -------------------------------------------------------------------------------------


def test_diff_shows_differing_hyperparameters(trained_model, digits_split_master, tmp_path):
    _, other = train_digits(tmp_path, "slower", digits_split_master, n_epochs=3, learning_rate=0.02)
    diff = diff_records(trained_model.record, other)
    rows = {r["key"]: (r["a"], r["b"]) for r in diff["hyperparameters"]}
    assert rows["params.learning_rate"] == (0.05, 0.02)
    assert rows["optimizer.param_groups[0].lr"] == (0.05, 0.02)
    assert "results" in diff and "data" not in diff and "seeds" not in diff
    assert diff_records(trained_model.record, trained_model.record) == {}


# --- tolerance -------------------------------------------------------------------------------------


def test_tolerance_parses_a_number_or_named_values():
    assert Tolerance.parse("1e-6").atol == 1e-6
    tol = Tolerance.parse("atol=1e-3,rtol=0,metric=0.1,agreement=0.9")
    assert (tol.atol, tol.rtol, tol.metric_abs, tol.agreement) == (1e-3, 0.0, 0.1, 0.9)
    assert Tolerance.parse(None) == Tolerance()
    with pytest.raises(ReproductionError, match="tolerance 'speed=3' should be"):
        Tolerance.parse("speed=3")


# --- multi-run envelopes ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def multirun(digits_split_master, tmp_path_factory):
    from reprodl.training.config import load_config
    from reprodl.training.multirun import train_many

    out = tmp_path_factory.mktemp("multirun")
    cfg = load_config(digits_config(digits_split_master, out, name="mr", n_epochs=2, deterministic=False))
    return cfg, train_many(cfg, seeds=3)


def test_seeds_write_a_summary_dataset_with_statistics_and_a_plot(multirun):
    from reprodl.training.multirun import load_summary

    _, result = multirun
    records = [load_record(u) for u in result.model_uris]
    assert [r.training.seeds.seed for r in records] == [0, 1, 2]
    assert len({r.results.weights_sha256 for r in records}) == 3
    summary = load_summary(result.summary_uri)
    assert summary == json.loads(json.dumps(result.summary))
    assert summary["n_runs"] == 3 and summary["varied"] == "seed" and summary["kind"] == keys.KIND_SUMMARY
    for metric in ("train_loss", "valid_loss", "valid_accuracy"):
        rows = summary["per_epoch"][metric]
        assert [r["epoch"] for r in rows] == [1, 2]
        for row in rows:
            values = [getattr(r.results.history[row["epoch"] - 1], metric) for r in records]
            assert row["mean"] == pytest.approx(np.mean(values))
            assert row["std"] == pytest.approx(np.std(values, ddof=1))
            assert (row["min"], row["max"], row["n"]) == (min(values), max(values), 3)
    assert summary["final"]["valid_accuracy"]["mean"] == pytest.approx(
        np.mean([r.results.final["valid_accuracy"] for r in records])
    )
    ds = open_dataset(result.summary_uri)
    assert ds.get_annotation(keys.MODEL_KIND) == keys.KIND_SUMMARY
    assert ds.get_annotation("reprodl.members") == result.model_uris
    png = ds.item_path(ds.identifier_of(keys.ENVELOPE_PLOT_FILE))
    with open(png, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    for uri in result.model_uris:
        assert open_dataset(uri).get_annotation(keys.SUMMARY_URI) == result.summary_uri


def test_splits_train_one_model_per_split(multirun):
    from reprodl.training.multirun import train_many

    cfg, _ = multirun
    result = train_many(cfg.model_copy(update={"name": "mr-split", "params": {**cfg.params, "n_epochs": 1}}), splits=2)
    assert result.summary["varied"] == "split" and result.summary["n_runs"] == 2
    records = [load_record(u) for u in result.model_uris]
    assert [r.data[0].split for r in records] == [{"test": 0.2, "seed": 0}, {"test": 0.2, "seed": 1}]
    assert records[0].data[0].selection_digest != records[1].data[0].selection_digest
    assert records[0].data[0].n_items == records[1].data[0].n_items == 1438


def test_multirun_needs_at_least_two_runs_of_one_kind(multirun):
    from reprodl.training.multirun import train_many

    cfg, _ = multirun
    with pytest.raises(ParametersError, match="at least 2 runs, but got 1"):
        train_many(cfg, seeds=1)
    with pytest.raises(ParametersError, match="either seeds=N or splits=N"):
        train_many(cfg, seeds=2, splits=2)


def test_statistical_reproduction_is_judged_against_the_envelope(multirun):
    _, result = multirun
    summary = result.summary
    report = reproduce(result.model_uris[0])
    assert report.mode == "statistical" and report.envelope is not None
    rows = {r["metric"]: r for r in report.envelope["metrics"]}
    # A claim about a model is about its accuracy: losses are judged only when no accuracy exists.
    assert set(rows) == {m for m in summary["final"] if "accuracy" in m} == {"valid_accuracy"}
    for metric, row in rows.items():
        stats = summary["final"][metric]
        assert row["low"] == pytest.approx(stats["min"] - stats["std"])
        assert row["high"] == pytest.approx(stats["max"] + stats["std"])
        assert row["within"] == (row["low"] <= row["value"] <= row["high"])
    assert report.verdict == ("within tolerance" if report.envelope["within"] else "differs")

    wide = {"final": {m: {"min": -10.0, "max": 10.0, "std": 0.0, "mean": 0.0} for m in summary["final"]}}
    assert reproduce(result.model_uris[0], envelope=wide).verdict == "within tolerance"
    narrow = {"final": {m: {"min": 99.0, "max": 99.0, "std": 0.0, "mean": 99.0} for m in summary["final"]}}
    report = reproduce(result.model_uris[0], envelope=narrow)
    assert report.verdict == "differs"
    assert "final metrics fall outside the tolerance envelope" in report.reasons
