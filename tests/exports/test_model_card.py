"""reprodl.exports.model_card: a Hub model card's front matter."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from train_fixtures import TrainedModel, rewrite_model

from reprodl.exports import export

pytest_plugins = ["train_fixtures"]


def test_model_card_front_matter_names_data_lineage_and_metrics(trained_model: TrainedModel, tmp_path: Path) -> None:
    parent = {"uri": "file://host/models/base", "uuid": "0" * 8 + "-0000-0000-0000-" + "0" * 12}
    child = rewrite_model(
        trained_model.uri, tmp_path, "fine-tuned", edit=lambda raw: raw["lineage"].update(parent=parent)
    )
    export(child, "model-card", tmp_path / "README.md")
    text = (tmp_path / "README.md").read_text()
    _, front, body = text.split("---\n", 2)
    meta = yaml.safe_load(front)
    record = trained_model.record
    assert meta["library_name"] == "pytorch"
    assert "datasets" not in meta and "base_model" not in meta  # the Hub's ids, which a dtool URI is not
    assert meta["reprodl"]["base_model"]["uri"] == parent["uri"]
    ref = meta["reprodl"]["datasets"][0]
    assert (ref["uuid"], ref["manifest_digest"]) == (record.data[0].uuid, record.data[0].manifest_digest)
    metrics = {m["name"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert metrics["valid_accuracy"] == pytest.approx(record.results.final["valid_accuracy"])
    assert "Network architecture name: reprodl.zoo:GenNet" in body
