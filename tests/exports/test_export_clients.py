"""Each export read back by the tool its users use: MLflow's client (and server), the RO-Crate
validator, mlcroissant, onnxruntime given only the ONNX file, and the Hub's model card fields."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from torch import nn
from train_fixtures import TrainedModel, train_digits

from reprodl import keys
from reprodl.exports import export

pytest_plugins = ["train_fixtures"]


def _sample(model: Any, n: int = 16) -> np.ndarray:
    import torch

    return torch.rand(n, *model.input_shape, generator=torch.Generator().manual_seed(1)).numpy()


# --- MLflow ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mlflow_export(trained_model: TrainedModel, tmp_path_factory: pytest.TempPathFactory) -> Any:
    return export(trained_model.uri, "mlflow", tmp_path_factory.mktemp("mlflow") / "mlruns")


@pytest.fixture
def file_store(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps its file store in maintenance mode


def test_mlflow_run_holds_the_model_and_both_load_it_to_the_same_predictions(
    mlflow_export: Any, trained_model: TrainedModel, tmp_path: Path, file_store: None
) -> None:
    import mlflow.artifacts
    import mlflow.pytorch
    import torch
    from mlflow.tracking import MlflowClient

    from reprodl import TrainedTorchModel

    client = MlflowClient(tracking_uri=mlflow_export.output)
    run = client.get_run(mlflow_export.details["run_id"])
    (output,) = run.outputs.model_outputs
    logged = client.get_logged_model(output.model_id)
    assert logged.source_run_id == run.info.run_id and str(logged.status) == "READY"
    assert logged.tags["reprodl.weights_sha256"] == trained_model.record.results.weights_sha256
    got = Path(mlflow.artifacts.download_artifacts(artifact_uri=logged.artifact_location, dst_path=str(tmp_path)))
    original = TrainedTorchModel(trained_model.uri)
    x = _sample(original)
    downloaded = TrainedTorchModel(str(got / keys.MLFLOW_MODEL_DATASET))
    assert downloaded.dataset.uuid == original.dataset.uuid
    assert downloaded.predict(x).tolist() == original.predict(x).tolist()
    with torch.no_grad():
        flavour = mlflow.pytorch.load_model(str(got))(torch.from_numpy(x))
    assert flavour.argmax(1).tolist() == original.predict(x).tolist()
    assert mlflow_export.details["pytorch_flavour"] == "pt2"


def test_mlflow_run_shows_train_and_valid_inputs_apart_with_duration_user_and_source(
    mlflow_export: Any, trained_model: TrainedModel, file_store: None
) -> None:
    from mlflow.tracking import MlflowClient

    record = trained_model.record
    assert record.data[0].uuid == record.data[1].uuid  # the validation data is a split of the training dataset
    run = MlflowClient(tracking_uri=mlflow_export.output).get_run(mlflow_export.details["run_id"])
    inputs = {}
    for item in run.inputs.dataset_inputs:
        tags = {t.key: t.value for t in item.tags}
        inputs[tags["mlflow.data.context"]] = item.dataset
        assert (
            json.loads(item.dataset.profile)["usetype"]
            == {"train": "train", "valid": "test"}[tags["mlflow.data.context"]]
        )
    assert set(inputs) == {"train", "valid"} and inputs["train"].digest != inputs["valid"].digest
    assert run.info.end_time - run.info.start_time > 0
    assert run.info.user_id and run.info.user_id == run.data.tags["mlflow.user"] != "unknown"
    assert run.data.tags["mlflow.source.name"] == Path(record.code.entry_script or "").name != ""
    assert "epochs" not in run.data.params and run.data.params["n_epochs"] == "3"


def test_mlflow_model_without_a_traceable_architecture_still_holds_the_model_dataset(
    digits_split_master: str, tmp_path: Path, file_store: None
) -> None:
    """A class outside the zoo, not allowed: no pytorch flavour (the reason is a tag), the dataset is there."""
    import mlflow.artifacts
    from mlflow.tracking import MlflowClient
    from train_fixtures import TinyNet

    from reprodl import TrainedTorchModel

    uri, _ = train_digits(tmp_path, "tiny", digits_split_master, valid=False, model=TinyNet(), init_params={})
    result = export(uri, "mlflow", tmp_path / "mlruns")
    assert result.details["pytorch_flavour"] is None and "UnsafeImportError" in result.details["why_not"]
    logged = MlflowClient(result.output).get_logged_model(result.details["model_id"])
    assert "UnsafeImportError" in logged.tags["reprodl.pytorch_flavour"]
    got = Path(mlflow.artifacts.download_artifacts(artifact_uri=logged.artifact_location, dst_path=str(tmp_path)))
    model = TrainedTorchModel(str(got / keys.MLFLOW_MODEL_DATASET), allow=["train_fixtures"])
    assert model.name == "tiny"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_mlflow_server_serves_the_exported_run_its_inputs_and_model(mlflow_export: Any, tmp_path: Path) -> None:
    """MLflow's own server (what its UI reads) on the exported store, on 127.0.0.1."""
    if importlib.util.find_spec("flask") is None or importlib.util.find_spec("mlflow.server") is None:
        pytest.skip("MLflow's server needs the full `mlflow` package (mlflow-skinny has no server): pip install mlflow")
    port = _free_port()
    env = {**os.environ, "MLFLOW_ALLOW_FILE_STORE": "true"}
    store = mlflow_export.output
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--backend-store-uri", store, "--default-artifact-root", store, "--workers", "1"]
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{base}/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        run_id = mlflow_export.details["run_id"]
        with urllib.request.urlopen(f"{base}/api/2.0/mlflow/runs/get?run_id={run_id}", timeout=10) as r:
            run = json.load(r)["run"]
        contexts = {
            t["value"] for i in run["inputs"]["dataset_inputs"] for t in i["tags"] if t["key"] == "mlflow.data.context"
        }
        assert contexts == {"train", "valid"}
        assert [m["model_id"] for m in run["outputs"]["model_outputs"]] == [mlflow_export.details["model_id"]]
        assert int(run["info"]["end_time"]) > int(run["info"]["start_time"])
    finally:
        server.terminate()
        server.wait(timeout=30)


# --- RO-Crate -----------------------------------------------------------------------------------

_TRAIN_SCRIPT = """\
import sys
sys.path.insert(0, sys.argv[3])
from train_fixtures import train_digits
train_digits(sys.argv[1], "scripted", sys.argv[2], n_epochs=1)
"""


@pytest.fixture(scope="module")
def script_model(digits_split_master: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A model trained by a user's script outside git: the record stores the script as an item."""
    from user_scripts import child_env

    where = tmp_path_factory.mktemp("scripted")
    (where / "train.py").write_text(_TRAIN_SCRIPT)
    tests = str(Path(__file__).resolve().parents[1])
    done = subprocess.run(
        [sys.executable, "train.py", str(where), digits_split_master, tests],
        cwd=where,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    return str(where / "scripted")


def _context_cache(path: Path) -> Path:
    """An HTTP cache for the validator holding the RO-Crate 1.3 context the rocrate package
    bundles, so the validator runs offline (it fetches the crate's @context)."""
    import requests
    import rocrate
    from requests.adapters import HTTPAdapter
    from requests_cache import CachedSession
    from urllib3 import HTTPResponse

    documents = {
        "https://w3id.org/ro/crate/1.3/context": (
            Path(rocrate.__file__).parent / "data" / "ro-crate.jsonld"
        ).read_bytes()
    }

    class Bundled(HTTPAdapter):
        def send(self, request: Any, **_: Any) -> Any:
            raw = HTTPResponse(
                body=io.BytesIO(documents[request.url]),
                headers={"Content-Type": "application/ld+json"},
                status=200,
                preload_content=False,
                request_url=request.url,
            )
            return self.build_response(request, raw)

    session = CachedSession(cache_name=str(path), backend="sqlite", allowable_codes=(200,), expire_after=-1)
    session.mount("https://", Bundled())
    for url in documents:
        assert session.get(url).ok
    session.close()
    assert isinstance(requests.Response(), requests.Response)
    return path


def _validate(crate: Path, profile: str, severity: str, cache: Path) -> list[tuple[str, str]]:
    """(severity, message) of each issue the validator finds at ``severity`` or above, offline."""
    from rocrate_validator import services

    settings = services.ValidationSettings(
        rocrate_uri=str(crate),
        profile_identifier=profile,
        requirement_severity=severity,
        offline=True,
        cache_path=cache,
    )
    result = services.validate(settings)
    return [(i.severity.name, f"{i.check.identifier}: {i.message}") for i in result.get_issues()]


@pytest.mark.parametrize("profile", ["process-run-crate-0.5", "ro-crate-1.3"])
def test_ro_crate_has_no_required_failure_under_the_validator_offline(
    profile: str, script_model: str, trained_model: TrainedModel, tmp_path: Path
) -> None:
    """Both kinds of instrument: the user's script copied in as a File, and reprodl (the script is in git)."""
    pytest.importorskip("rocrate_validator", reason="the RO-Crate validator is the package roc-validator (test extra)")
    cache = _context_cache(tmp_path / "http-cache")
    for i, uri in enumerate((script_model, trained_model.uri)):
        export(uri, "ro-crate", tmp_path / f"crate{i}")
        issues = _validate(tmp_path / f"crate{i}", profile, "REQUIRED", cache)
        assert [m for s, m in issues if s == "REQUIRED"] == [], uri


def test_ro_crate_names_the_code_by_its_item_and_states_a_licence(script_model: str, tmp_path: Path) -> None:
    from rocrate.rocrate import ROCrate

    from reprodl.modeldataset.read import read_record
    from reprodl.store import open_dataset

    record = read_record(open_dataset(script_model))
    export(script_model, "ro-crate", tmp_path / "crate")
    crate = ROCrate(str(tmp_path / "crate"))
    (action,) = [e for e in crate.get_entities() if e.type == "CreateAction"]
    code = action["instrument"]
    script = record.code.entry_script
    assert script and Path(script).is_absolute()  # what the record says of the training machine
    graph = json.loads((tmp_path / "crate" / "ro-crate-metadata.json").read_text())["@graph"]
    assert script not in json.dumps(graph)
    assert "File" in code.type and code.id == "code/entry/train.py" and code["name"] == "train.py"
    assert (tmp_path / "crate" / code.id).read_bytes() == Path(script).read_bytes()
    assert code["url"] and code["version"] == f"sha256:{record.code.entry_script_sha256}"
    assert crate.root_dataset["license"].id == "https://spdx.org/licenses/CC-BY-4.0.html"  # the digits' README
    assert "training data" in crate.root_dataset["license"]["description"]
    (descriptor,) = [e for e in graph if e["@id"] == "ro-crate-metadata.json"]
    assert {c["@id"] for c in descriptor["conformsTo"]} == {
        "https://w3id.org/ro/crate/1.3",
        "https://w3id.org/ro/crate/1.1",
    }


# --- ONNX ---------------------------------------------------------------------------------------


def _prepare(raw: np.ndarray, how: dict[str, Any], shape: list[int]) -> np.ndarray:
    """Raw arrays to model inputs, by the ONNX file's preprocessing alone (a user without reprodl)."""
    x = raw.astype(np.float32) / np.float32(how["value_scale"])
    x = x.reshape(len(raw), *shape)
    if how["mean"] is not None:
        mean = np.asarray(how["mean"], dtype=np.float32).reshape(-1, 1, 1)
        x = (x - mean) / np.asarray(how["std"], dtype=np.float32).reshape(-1, 1, 1)
    return x


def test_onnx_file_alone_gives_category_names_and_reprodls_predictions(
    trained_model: TrainedModel, tmp_path: Path
) -> None:
    import onnx
    import onnxruntime

    from reprodl import TensorDataSet, TrainedTorchModel
    from reprodl.store import open_dataset

    export(trained_model.uri, "onnx", tmp_path / "model.onnx")
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "model.onnx")).metadata_props}
    categories = json.loads(props["reprodl.categories"])
    shape = json.loads(props["reprodl.input_shape"])
    how = json.loads(props["reprodl.preprocessing"])
    assert categories == [str(i) for i in range(10)] and shape == [1, 8, 8]
    assert how["input"] == "array" and how["value_scale"] == 255.0 and how["transform"] is None
    data = open_dataset(trained_model.data_uri)
    raw = np.load(data.item_path(data.identifier_of(keys.TENSOR_DATA_FILE)))[:50]  # the stored uint8 arrays
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_names = [categories[i] for i in session.run(None, {"input": _prepare(raw, how, shape)})[0].argmax(1)]
    model = TrainedTorchModel(trained_model.uri)
    ds = TensorDataSet(trained_model.data_uri)
    import torch

    reprodl_names = model.predict_categories(torch.stack([ds[i][0] for i in range(50)]))
    assert onnx_names == reprodl_names


class FlatNet(nn.Module):
    """A linear classifier of 6x5 gray images (outside the zoo: exported with allow=)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(30, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def test_onnx_of_an_image_model_says_mode_size_and_normalisation(image_uri: str, tmp_path: Path) -> None:
    import onnx
    import onnxruntime
    import torch
    from PIL import Image
    from train_fixtures import small_params

    from reprodl import DerivedDataSet, ImageDataSet, TrainedTorchModel, train_model_with_metadata_capture
    from reprodl.data.transforms import Compose, Normalize, ToTensor
    from reprodl.store import open_dataset

    train = ImageDataSet(image_uri, transform=Compose([ToTensor(), Normalize([0.5], [0.25])]))
    params = small_params(init_params={}, batch_size=4)
    torch.manual_seed(0)
    net = FlatNet()
    with DerivedDataSet(str(tmp_path), "flat", train) as out:
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        train_model_with_metadata_capture(net, train, opt, torch.nn.CrossEntropyLoss(), params, out, progress=False)
    export(str(tmp_path / "flat"), "onnx", tmp_path / "flat.onnx", allow=["test_export_clients"])
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "flat.onnx")).metadata_props}
    how = json.loads(props["reprodl.preprocessing"])
    assert (how["input"], how["image_mode"], how["resize_to_hw"]) == ("image", "L", [5, 6])
    assert (how["mean"], how["std"], how["value_scale"]) == ([0.5], [0.25], 255.0)
    categories = json.loads(props["reprodl.categories"])
    data = open_dataset(image_uri)
    paths = [data.item_path(i) for i in sorted(data.identifiers, key=data.relpath)]
    images = [Image.open(p).convert(how["image_mode"]).resize(how["resize_to_hw"][::-1]) for p in paths]
    raw = np.stack([np.asarray(im) for im in images])
    x = _prepare(raw, how, json.loads(props["reprodl.input_shape"]))
    session = onnxruntime.InferenceSession(str(tmp_path / "flat.onnx"), providers=["CPUExecutionProvider"])
    onnx_names = [categories[i] for i in session.run(None, {"input": x})[0].argmax(1)]
    model = TrainedTorchModel(str(tmp_path / "flat"), allow=["test_export_clients"])
    assert onnx_names == [model.convert_and_predict(Image.open(p)) for p in paths]


# --- model card ---------------------------------------------------------------------------------


def test_model_card_puts_each_metric_on_its_data_and_states_the_licence(
    trained_model: TrainedModel, tmp_path: Path
) -> None:
    export(trained_model.uri, "model-card", tmp_path / "README.md")
    meta = yaml.safe_load((tmp_path / "README.md").read_text().split("---\n", 2)[1])
    assert meta["license"] == "cc-by-4.0"  # the training data's README (the Hub's id)
    results = {r["dataset"]["split"]: {m["name"] for m in r["metrics"]} for r in meta["model-index"][0]["results"]}
    assert results == {"train": {"train_loss"}, "test": {"valid_loss", "valid_accuracy"}}  # valid = the "test" usetype
    hub_fields = json.dumps({k: v for k, v in meta.items() if k != "reprodl"})
    assert "file://" not in hub_fields and trained_model.data_uri not in hub_fields


def test_model_card_licence_is_the_models_own_or_unknown(digits_split_master: str, tmp_path: Path) -> None:
    from train_fixtures import INIT_PARAMS, small_params

    from reprodl import DerivedDataSet, TensorDataSet, train_model_with_metadata_capture
    from reprodl.zoo import GenNet

    train = TensorDataSet(digits_split_master, usetype="train")
    params = small_params()
    net = GenNet(**INIT_PARAMS)
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    with DerivedDataSet(str(tmp_path), "own", train, readme={"license": "Our Custom Terms 2"}) as out:
        train_model_with_metadata_capture(net, train, opt, nn.NLLLoss(), params, out, progress=False)
    export(str(tmp_path / "own"), "model-card", tmp_path / "card.md")
    meta = yaml.safe_load((tmp_path / "card.md").read_text().split("---\n", 2)[1])
    assert (meta["license"], meta["license_name"]) == ("other", "our-custom-terms-2")


# --- Croissant ----------------------------------------------------------------------------------


def _croissant_warnings(path: Path) -> list[str]:
    import mlcroissant

    dataset = mlcroissant.Dataset(jsonld=str(path))
    return sorted(dataset.metadata.ctx.issues.warnings)


def test_croissant_states_the_readmes_licence_and_mlcroissant_has_no_warning(
    digits_split_master: str, image_uri: str, tmp_path: Path
) -> None:
    export(digits_split_master, "croissant", tmp_path / "digits.json")
    assert json.loads((tmp_path / "digits.json").read_text())["license"] == "https://spdx.org/licenses/CC-BY-4.0.html"
    assert _croissant_warnings(tmp_path / "digits.json") == []
    export(image_uri, "croissant", tmp_path / "images.json")  # its README states no licence
    licence = json.loads((tmp_path / "images.json").read_text())["license"]
    assert licence["name"] == "unspecified" and "states no licence" in licence["description"]
    assert _croissant_warnings(tmp_path / "images.json") == []


# --- identifiers the project keeps ----------------------------------------------------------------


def test_exports_name_only_identifiers_under_the_projects_url(trained_model: TrainedModel, tmp_path: Path) -> None:
    import prov

    from reprodl.provenance import record_json_schema

    export(trained_model.uri, "prov", tmp_path / "run.json")
    namespaces = {
        n.prefix: n.uri for n in prov.read(str(tmp_path / "run.json"), format="json").get_registered_namespaces()
    }
    assert namespaces["reprodl"] == "https://github.com/reprodl/reprodl/blob/main/docs/terms.md#"
    export(trained_model.uri, "ro-crate", tmp_path / "crate")
    graph = json.loads((tmp_path / "crate" / "ro-crate-metadata.json").read_text())["@graph"]
    (record,) = [e for e in graph if e["@id"] == "provenance.json"]
    assert record["conformsTo"]["@id"] == keys.PROVENANCE_SCHEMA_ID == record_json_schema()["$id"]
    for path in (tmp_path / "run.json", tmp_path / "crate" / "ro-crate-metadata.json"):
        assert "reprodl.dev" not in path.read_text()
    # the schema's $id names a file of the repository: this one, kept current
    docs = Path(__file__).resolve().parents[2] / "docs"
    assert keys.PROVENANCE_SCHEMA_ID.endswith("/blob/main/docs/schemas/provenance-1.3.json")
    assert json.loads((docs / "schemas" / "provenance-1.3.json").read_text()) == record_json_schema()
    assert (docs / "terms.md").is_file()
