"""reprodl export: each format round-trips through the library that reads it."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from train_fixtures import TrainedModel, rewrite_model

from reprodl.errors import DatasetFormatError, UnsafeImportError
from reprodl.exports import ExportError, export

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


def test_prov_json_reads_back_with_ml_schema_types(trained_model: TrainedModel, tmp_path: Path) -> None:
    import prov
    from prov.model import ProvDocument

    export(trained_model.uri, "prov", tmp_path / "run.json")
    doc = prov.read(str(tmp_path / "run.json"), format="json")
    again = ProvDocument.deserialize(str(tmp_path / "run.json"), format="json")
    assert doc == again
    types = {str(t) for r in doc.get_records() if r.is_element() for t in r.get_asserted_types()}
    assert {"mls:Run", "mls:Data", "mls:Model", "mls:HyperParameterSetting", "mls:ModelEvaluation"} <= types
    ns = {n.prefix: n.uri for n in doc.get_registered_namespaces()}
    assert ns["mls"] == "http://www.w3.org/ns/mls#"
    (model,) = [r for r in doc.get_records() if r.is_element() and "mls:Model" in map(str, r.get_asserted_types())]
    assert str(model.identifier) == f"uuid:{_uuid(trained_model)}"
    assert trained_model.record.digest in {str(v) for _, v in model.attributes}
    export(trained_model.uri, "prov-n", tmp_path / "run.provn")
    text = (tmp_path / "run.provn").read_text()
    assert text.startswith("document") and "prov:type='mls:Run'" in text and "wasGeneratedBy(" in text


def test_croissant_of_an_image_dataset_loads_and_yields_its_images_and_labels(image_uri: str) -> None:
    import mlcroissant

    from reprodl.store import local_path

    root = local_path(image_uri)
    assert root is not None
    out = root / "croissant.json"  # paths in the file are relative to the dataset's root
    export(image_uri, "croissant", out)
    doc = json.loads(out.read_text())
    assert doc["conformsTo"] == "http://mlcommons.org/croissant/1.1"
    (manifest,) = [d for d in doc["distribution"] if d["@type"] == "cr:FileObject"]
    assert len(manifest["sha256"]) == 64
    dataset = mlcroissant.Dataset(jsonld=str(out))
    assert [r.name for r in dataset.metadata.record_sets] == ["categories", "samples"]
    records = list(dataset.records("samples"))
    labels = sorted(r["samples/label"].decode() for r in records)  # mlcroissant yields text as bytes
    assert labels == ["ant"] * 3 + ["bee"] * 2 + ["cat"] * 4
    assert records[0]["samples/image"].size == (6, 5)
    categories = [(r["categories/name"], r["categories/index"]) for r in dataset.records("categories")]
    assert categories == [("ant", 0), ("bee", 1), ("cat", 2)]


def test_croissant_of_a_tensor_dataset_hashes_its_arrays(digits_split_master: str, tmp_path: Path) -> None:
    import mlcroissant
    from train_fixtures import item_file

    out = tmp_path / "digits.json"
    export(digits_split_master, "croissant", out)
    dataset = mlcroissant.Dataset(jsonld=str(out))
    assert [r.name for r in dataset.metadata.record_sets] == ["categories", "images", "labels"]
    files = {f.name: f for f in dataset.metadata.distribution}
    want = hashlib.sha256(item_file(digits_split_master, "data.npy").read_bytes()).hexdigest()
    assert files["data.npy"].sha256 == want
    image = json.loads(out.read_text())["recordSet"][1]["field"][0]
    assert image["isArray"] is True and image["arrayShape"] == "8,8" and image["dataType"] == "cr:UInt8"


def test_croissant_refuses_a_model(trained_model: TrainedModel, tmp_path: Path) -> None:
    with pytest.raises(DatasetFormatError, match="is a reprodl model, not training data"):
        export(trained_model.uri, "croissant", tmp_path / "c.json")
    assert list(tmp_path.iterdir()) == []


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


def test_onnx_export_matches_torch_under_onnxruntime(trained_model: TrainedModel, tmp_path: Path) -> None:
    import numpy as np
    import onnx
    import onnxruntime
    import torch

    from reprodl import TrainedTorchModel

    result = export(trained_model.uri, "onnx", tmp_path / "model.onnx")
    assert result.details["max_abs_diff"] < 1e-4
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "model.onnx")).metadata_props}
    assert props["reprodl.record_digest"] == trained_model.record.digest
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    batch = torch.rand(7, 1, 8, 8, generator=torch.Generator().manual_seed(1))  # another batch size
    with torch.no_grad():
        want = TrainedTorchModel(trained_model.uri).model(batch).numpy()
    np.testing.assert_allclose(session.run(None, {"input": batch.numpy()})[0], want, atol=1e-4)


def test_onnx_export_builds_only_a_trusted_architecture(
    trained_model: TrainedModel, digits_split_master: str, tmp_path: Path
) -> None:
    from train_fixtures import TinyNet, train_digits

    uri, _ = train_digits(tmp_path, "tiny", digits_split_master, valid=False, model=TinyNet(), init_params={})
    with pytest.raises(UnsafeImportError, match="train_fixtures"):
        export(uri, "onnx", tmp_path / "tiny.onnx")
    assert not (tmp_path / "tiny.onnx").exists() and not list(tmp_path.glob(".tiny.onnx*"))  # no temporary left
    result = export(uri, "onnx", tmp_path / "tiny.onnx", allow=["train_fixtures"])
    assert result.details["max_abs_diff"] < 1e-4


def test_mlflow_run_reads_back_with_mlflows_client(
    trained_model: TrainedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    result = export(trained_model.uri, "mlflow", tmp_path / "mlruns")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps its file store in maintenance mode
    client = MlflowClient(tracking_uri=result.output)
    run = client.get_run(result.details["run_id"])
    record = trained_model.record
    assert run.info.status == "FINISHED"
    assert run.data.tags["reprodl.model_uri"] == trained_model.uri
    assert run.data.params["optimizer.lr"] == "0.05" and run.data.params["batch_size"] == "32"
    history = client.get_metric_history(run.info.run_id, "valid_accuracy")
    assert [(m.step, m.value) for m in history] == [(m.epoch, m.valid_accuracy) for m in record.results.history]
    contexts = {}
    for item in run.inputs.dataset_inputs:
        tags = {t.key: t.value for t in item.tags}
        contexts[tags["mlflow.data.context"]] = tags["reprodl.manifest_digest"]
        assert json.loads(item.dataset.source)["uuid"] == record.data[0].uuid
    assert set(contexts.values()) == {record.data[0].manifest_digest}


def test_cli_export_prints_json_and_refuses_what_it_cannot_do(cli, trained_model: TrainedModel, tmp_path: Path) -> None:
    res = cli("export", trained_model.uri, "--format", "model-card", "-o", tmp_path / "card.md", "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["format"] == "model-card" and data["bytes"] == (tmp_path / "card.md").stat().st_size
    again = cli("export", trained_model.uri, "--format", "model-card", "-o", tmp_path / "card.md")
    assert again.exit_code == 2 and "already exists" in again.stderr
    assert (
        cli("export", trained_model.uri, "--format", "model-card", "-o", tmp_path / "card.md", "--overwrite").exit_code
        == 0
    )
    bad = cli("export", trained_model.uri, "--format", "pickle", "-o", tmp_path / "x")
    assert bad.exit_code == 2 and "unknown format 'pickle'" in bad.stderr
    no_uri = cli("export", trained_model.uri, "--format", "mlflow")
    assert no_uri.exit_code == 2 and "--tracking-uri" in no_uri.stderr
    with pytest.raises(ExportError, match="not an RO-Crate"):
        export(trained_model.uri, "ro-crate", tmp_path, overwrite=True)


def test_importing_reprodl_and_its_export_imports_no_format_package() -> None:
    code = (
        "import sys, reprodl; from reprodl import export; import reprodl.exports; "
        "print(sorted(m for m in ('mlflow', 'rocrate', 'prov', 'onnx', 'mlcroissant', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_mlflow_logs_what_run_log_recorded_for_a_run_api_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch
    from mlflow.tracking import MlflowClient
    from torch import nn

    import reprodl

    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(16, 4, generator=g), torch.randint(0, 2, (16,), generator=g))
    with reprodl.start_run(str(tmp_path), "own-loop") as run:
        model = nn.Linear(4, 2)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        run.watch(model, optimizer)
        for step, (x, y) in enumerate(run.loader(data, batch_size=8), start=1):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            run.log(step=step, batch_loss=loss.item())
        run.save(model)
    assert run.uri is not None
    result = export(run.uri, "mlflow", tmp_path / "mlruns")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    history = MlflowClient(result.output).get_metric_history(result.details["run_id"], "batch_loss")
    assert [m.step for m in history] == [1, 2]


def test_exports_are_readable_as_the_umask_says(trained_model: TrainedModel, tmp_path: Path) -> None:
    """mkstemp/mkdtemp make 0600/0700; a shared export follows the umask like any file the user makes."""
    import os

    old = os.umask(0o022)
    try:
        export(trained_model.uri, "model-card", tmp_path / "card.md")
        export(trained_model.uri, "ro-crate", tmp_path / "crate")
    finally:
        os.umask(old)
    assert (tmp_path / "card.md").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "crate").stat().st_mode & 0o777 == 0o755
    assert {p.stat().st_mode & 0o777 for p in (tmp_path / "crate").iterdir()} == {0o644}
