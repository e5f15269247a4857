"""`reprodl replicate`: a model's recorded recipe trained on other data, refused when the data cannot stand in."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.register_assert_rewrite("train_fixtures")

from train_fixtures import digits_config

from reprodl.data.creators import digits_arrays
from reprodl.errors import DatasetFormatError, ReproductionError
from reprodl.modeldataset.read import load_record
from reprodl.reproduction.replicate import replicate, side_by_side
from reprodl.store import open_dataset

pytest_plugins = ["train_fixtures"]


def _digits_subset(base: Path, name: str, rows: np.ndarray, *, shape: list[int] | None = None) -> str:
    """A new digits dataset of the given rows (optionally reshaped), split 80/20 by seed 1."""
    from reprodl.data.creators import create_from_arrays
    from reprodl.data.ops import split_dataset

    images, labels = digits_arrays()
    data = images[rows]
    if shape is not None:
        data = data.reshape(len(rows), *shape[1:])
    uri = create_from_arrays(data, labels[rows], str(base), name, image_dimensions=shape or [1, 8, 8])
    split_dataset(uri, test=0.2, seed=1)
    return uri


@pytest.fixture(scope="module")
def other_digits(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Every other digit (899 of 1,797), split 80/20 with another seed: other data, same shape and labels."""
    return _digits_subset(tmp_path_factory.mktemp("other"), "digits-odd", np.arange(1, 1797, 2))


def test_a_replication_names_the_original_and_reads_other_data(trained_model, other_digits, tmp_path, cli):
    result = cli("replicate", trained_model.uri, "--data", other_digits, "--output", str(tmp_path), "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    record = load_record(report["replication_uri"])
    original = trained_model.record
    replicates = record.lineage.replicates
    assert replicates is not None and record.lineage.reproduces is None
    assert (replicates.uri, replicates.record_digest) == (report["original_uri"], original.digest)
    assert replicates.uuid == open_dataset(trained_model.uri).uuid
    # The recipe is the original's, the data are not.
    assert {d.uuid for d in record.data} == {report["data_uuid"]} != {d.uuid for d in original.data}
    assert report["original_data_uuids"] == sorted({d.uuid for d in original.data})
    assert [(d.role, d.usetype) for d in record.data] == [(d.role, d.usetype) for d in original.data]
    assert record.data[0].n_items == 718  # about 80% of the 899 odd rows, stratified
    assert record.architecture.initial_weights_sha256 == original.architecture.initial_weights_sha256
    assert record.training.optimizer.param_groups == original.training.optimizer.param_groups
    assert record.training.params == original.training.params
    # Both models' final metrics, side by side.
    rows = {row["metric"]: row for row in report["metrics"]}
    accuracy = rows["valid_accuracy"]
    assert accuracy["original"] == original.results.final["valid_accuracy"]
    assert accuracy["replication"] == record.results.final["valid_accuracy"] > 0.5
    assert accuracy["difference"] == pytest.approx(accuracy["replication"] - accuracy["original"])
    assert report["envelope_uri"] is None and "envelope" not in accuracy
    text = cli("provenance", report["replication_uri"])
    assert f"Replicates: {trained_model.uri}" in text.stdout
    # A replication is an ordinary model: it reproduces from its own record.
    reproduced = cli("reproduce", report["replication_uri"], "-q")
    assert reproduced.exit_code == 0 and "Verdict: identical" in reproduced.stdout


def test_other_shapes_labels_and_the_same_data_are_refused_before_training(trained_model, tmp_path, cli):
    base = tmp_path / "data"
    base.mkdir()
    wide = _digits_subset(base, "digits-wide", np.arange(0, 400), shape=[1, 4, 16])
    _, labels = digits_arrays()
    fewer = _digits_subset(base, "digits-0to4", np.flatnonzero(labels < 5))
    out = tmp_path / "models"
    out.mkdir()
    with pytest.raises(DatasetFormatError, match=r"shape \[1, 4, 16\].*shape \[1, 8, 8\].*same input shape"):
        replicate(trained_model.uri, data=wide, output=str(out))
    with pytest.raises(DatasetFormatError, match=r"label set is \{0, 1, 2, 3, 4\}.*\{0, 1, .*9\}.*same labels"):
        replicate(trained_model.uri, data=fewer, output=str(out))
    with pytest.raises(ReproductionError, match="is the dataset the model was trained on.*reprodl reproduce"):
        replicate(trained_model.uri, data=trained_model.data_uri, output=str(out))
    assert list(out.iterdir()) == []  # nothing was trained
    refused = cli("replicate", trained_model.uri, "--data", wide, "--output", str(out))
    assert refused.exit_code == 2 and "same input shape" in refused.stderr


def test_a_member_of_a_multirun_is_placed_in_its_envelope(digits_split_master, other_digits, tmp_path):
    from reprodl.training.config import load_config
    from reprodl.training.multirun import train_many

    cfg = load_config(digits_config(digits_split_master, tmp_path, name="env"))
    many = train_many(cfg, seeds=2)
    report = replicate(many.model_uris[0], data=other_digits)
    assert report.envelope_uri == many.summary_uri
    assert str(tmp_path) in report.replication_uri  # beside the original, by default
    accuracy = next(row for row in report.metrics if row["metric"] == "valid_accuracy")
    envelope = accuracy["envelope"]
    assert envelope["n"] == 2
    assert envelope["within"] == (envelope["min"] <= accuracy["replication"] <= envelope["max"])


def test_side_by_side_rows():
    envelope = {"final": {"acc": {"mean": 0.5, "std": 0.1, "min": 0.4, "max": 0.6, "n": 3}}}
    rows = side_by_side({"acc": 0.5, "loss": 1.0}, {"acc": 0.7}, envelope)
    assert rows[0]["metric"] == "acc" and rows[0]["difference"] == pytest.approx(0.2)
    assert rows[0]["envelope"]["within"] is False
    assert rows[1] == {"metric": "loss", "original": 1.0, "replication": None, "difference": None}


def test_a_model_of_its_own_training_code_is_refused_with_the_reason(trained_model, other_digits, tmp_path):
    from train_fixtures import rewrite_model

    def as_start_run(raw: dict) -> None:
        raw["code"]["run"] = {"entry_script": "train.py", "python": "3.12.0", "seed": 0, "root": "/src"}

    uri = rewrite_model(trained_model.uri, tmp_path, "own-loop", edit=as_start_run)
    with pytest.raises(ReproductionError, match=r"its own code \(reprodl.start_run\).*Run your script on the new data"):
        replicate(uri, data=other_digits, output=str(tmp_path))
