"""reprodl.exports.ro_crate: a model as an RO-Crate, read back with rocrate."""

from __future__ import annotations

import hashlib
from pathlib import Path

from train_fixtures import TrainedModel

from reprodl.exports import export

pytest_plugins = ["train_fixtures"]


def test_ro_crate_reads_back_with_one_create_action_from_code_and_data_to_model(
    trained_model: TrainedModel, tmp_path: Path
) -> None:
    from rocrate.rocrate import ROCrate

    result = export(trained_model.uri, "ro-crate", tmp_path / "crate")
    crate = ROCrate(str(tmp_path / "crate"))
    (action,) = [e for e in crate.get_entities() if e.type == "CreateAction"]
    record = trained_model.record
    assert action["instrument"]["name"] == "reprodl"  # the script (pytest's) is in git, not stored with the model
    assert action["result"]["identifier"] == f"urn:uuid:{_uuid(trained_model)}"
    (data,) = [o for o in action["object"] if o.type == "Dataset"]
    assert data["identifier"] == f"urn:uuid:{record.data[0].uuid}"
    assert data["additionalProperty"]["value"] == record.data[0].manifest_digest
    assert [p["name"] for p in action["result"]["additionalProperty"]] == ["weights_sha256", "record_digest"]
    assert {o["name"] for o in action["object"] if o.type == "PropertyValue"} >= {"lr", "epochs", "seed"}
    assert action["agent"].type == "Person"
    assert action["startTime"] == record.results.started_at and action["endTime"] == record.results.finished_at
    assert crate.root_dataset["conformsTo"]["@id"] == "https://w3id.org/ro/wfrun/process/0.5"
    copied = (tmp_path / "crate" / "provenance.json").read_bytes()
    assert copied == (trained_model.path / "data" / "provenance.json").read_bytes()
    assert crate.get("provenance.json")["sha256"] == hashlib.sha256(copied).hexdigest()
    assert result.bytes == sum(p.stat().st_size for p in (tmp_path / "crate").rglob("*") if p.is_file())


def _uuid(model: TrainedModel) -> str:
    from reprodl.store import open_dataset

    return open_dataset(model.uri).uuid
