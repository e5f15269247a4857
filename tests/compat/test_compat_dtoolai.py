"""reprodl.compat.dtoolai: dtoolAI 0.2.0's names, used the way its tests, scripts and notebook use them.

Datasets are built in dtoolAI's layout (plain dtoolcore, dtoolAI's annotation names) or with the
compat creators; a dtoolAI-made model is a ``torch.save`` of a plain state dict in ``model.pt``
beside dtoolAI's annotations (``model_name``, ``model_parameters``, ``category_encoding``,
``source_dataset_*``), as ``dtoolai.training.train_model_with_metadata_capture`` wrote it, read by
reprodl.modeldataset.legacy (weights only, its record made from those annotations).
"""

from __future__ import annotations

import io
import json
import pickle
import subprocess
import sys
from pathlib import Path

import dtoolcore
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from sklearn.datasets import load_digits

from reprodl import keys
from reprodl.errors import ModelLoadError, ReproductionError

ROOT = Path(__file__).resolve().parents[2]


# --- fixtures: data and models in the original package's layout ---------------------------
def _digits16(n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """sklearn's digits upscaled to 16x16 uint8 (SimpleScalingCNN needs 16x16 or more)."""
    d = load_digits()
    images = np.stack([np.kron(im, np.ones((2, 2))) for im in d.images[:n]])
    return (images * 255 / 16).round().astype(np.uint8).reshape(n, -1), d.target[:n]


@pytest.fixture
def digits16(tmp_path: Path) -> str:
    """A TensorDataSet made by compat's create_tensor_dataset_from_arrays (dtoolAI's call)."""
    from reprodl.compat.dtoolai.data import create_tensor_dataset_from_arrays

    data, labels = _digits16()
    readme = "---\ndataset_name: digits\nproject: compat tests\n"
    return create_tensor_dataset_from_arrays(str(tmp_path), "digits16", data, labels, (1, 16, 16), readme)


@pytest.fixture
def dtoolai_tensor_ds(tmp_path: Path) -> str:
    """dtoolAI's tests/data/example_tensor_dataset, made as its create_tensor_dataset_from_arrays made it."""
    with dtoolcore.DataSetCreator("example_tensor_dataset", str(tmp_path)) as qds:
        np.save(qds.prepare_staging_abspath_promise("data.npy"), np.full((100, 81), 51, dtype=np.float32))
        np.save(qds.prepare_staging_abspath_promise("labels.npy"), np.zeros(100, dtype=np.uint8))
    qds.put_annotation("tensor_file_idn", dtoolcore.utils.generate_identifier("data.npy"))
    qds.put_annotation("image_dimensions", [1, 9, 9])
    qds.put_annotation("dtoolAI.inputtype", "TensorDataSet")
    qds.put_readme("---\n\nThis is an example TensorDataSet.\n")
    return qds.uri


@pytest.fixture
def dirtree(tmp_path: Path) -> Path:
    """dtoolAI's tests/data/image_dirtree: car, mug, chair, two images each, of different sizes and modes."""
    root = tmp_path / "image_dirtree"
    for c, cat in enumerate(["car", "mug", "chair"]):
        (root / cat).mkdir(parents=True)
        for i in range(2):
            size, mode = ((40 + 10 * i, 30), "RGB") if c != 1 else ((20, 20), "L")
            Image.new(mode, size, color=(30 * c + i) if mode == "L" else (30 * c, 60 * i, 90)).save(
                root / cat / f"image000{i + 1}.png"
            )
    return root


def _dtoolai_model(tmp_path: Path, source: str, *, payload: bytes | None = None) -> tuple[str, torch.nn.Module]:
    """A model dataset as dtoolAI 0.2.0 wrote it: model.pt (torch.save of a state dict), history.json,
    dtoolAI's annotations and its README; ``payload`` replaces model.pt."""
    from reprodl.compat.dtoolai.models import GenNet
    from reprodl.compat.dtoolai.utils import nested_dict_as_string, readme_dict_from_source_dataset

    src = dtoolcore.DataSet.from_uri(source)
    torch.manual_seed(3)
    model = GenNet(input_channels=1, input_dim=16)
    params = {"batch_size": 128, "learning_rate": 0.01, "n_epochs": 1, "input_dim": 16, "input_channels": 1}
    params.update(init_params={"input_channels": 1, "input_dim": 16}, optimiser_name="SGD", loss_func="NLLLoss")
    (tmp_path / "dtoolai-models").mkdir(exist_ok=True)
    with dtoolcore.DerivedDataSetCreator("mnist_model", str(tmp_path / "dtoolai-models"), src) as out:
        path = out.prepare_staging_abspath_promise("model.pt")
        if payload is None:
            torch.save(model.state_dict(), path)
        else:
            Path(path).write_bytes(payload)
        Path(out.prepare_staging_abspath_promise("history.json")).write_text(json.dumps({"epoch_loss": [2.3]}))
        out.put_annotation("model_parameters", params)
        out.put_annotation("model_name", "dtoolai.simpleScalingCNN")
        out.put_annotation("category_encoding", {str(i): i for i in range(10)})
        readme = readme_dict_from_source_dataset(src)
        readme.update(parameters=params, model_name="simpleScalingCNN")
        out.put_readme(nested_dict_as_string(readme))
    return out.uri, model


class _Marker:
    """Unpickling this would create a file: the proof that no code ran is that it does not exist."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


# --- parameters ----------------------------------------------------------------------------
def test_parameters_update_from_a_comma_separated_string_keep_their_types_and_refuse_unknown_names():
    from reprodl.compat.dtoolai.parameters import Parameters

    p = Parameters(greeting="hello", n_bananas=12, fraction_useful=0.2)
    p.update_from_comma_separated_string("n_bananas=15,fraction_useful=0.3")
    assert (p.n_bananas, p.fraction_useful) == (15, 0.3)
    with pytest.raises(NameError, match="foo not known"):
        p.update_from_comma_separated_string("foo=bar")
    p.update_from_comma_separated_string("foo=bar", strict=False)
    p["init_params"] = {"input_dim": 28}
    assert p.foo == "bar" and p["init_params"] == {"input_dim": 28}
    assert p.parameter_dict == {
        "greeting": "hello",
        "n_bananas": 15,
        "fraction_useful": 0.3,
        "foo": "bar",
        "init_params": {"input_dim": 28},
    }
    assert Parameters.from_comma_separated_string("a=1").parameter_dict == {"a": "1"}
    with pytest.raises(ValueError, match="n_bananas='many' is not a int"):
        p.update_from_comma_separated_string("n_bananas=many")


# --- data ----------------------------------------------------------------------------------
def test_tensor_dataset_of_dtoolais_layout_reads_as_dtoolai_read_it(dtoolai_tensor_ds):
    from reprodl.compat.dtoolai.data import TensorDataSet

    tds = TensorDataSet(dtoolai_tensor_ds)
    assert tds.name == "example_tensor_dataset" and tds.uuid == dtoolcore.DataSet.from_uri(dtoolai_tensor_ds).uuid
    assert len(tds) == 100 and (tds.input_channels, tds.dim) == (1, 9)
    data, label = tds[0]
    assert isinstance(data, np.ndarray) and data.shape == (1, 9, 9) and label == 0
    assert data[0][0][0] == pytest.approx(51 / 255)  # dtoolAI divided float data by 255 too
    assert tds.get_annotation("image_dimensions") == [1, 9, 9]


def test_create_tensor_dataset_from_arrays_then_train_with_dtoolais_loop(digits16):
    from torch.utils.data import DataLoader

    from reprodl.compat.dtoolai.data import TensorDataSet
    from reprodl.compat.dtoolai.models import GenNet
    from reprodl.compat.dtoolai.utils import evaluate_model, train

    tds = TensorDataSet(digits16)
    assert len(tds) == 300 and (tds.input_channels, tds.dim) == (1, 16)
    assert "dataset_name: digits" in tds.get_readme_content()
    dl = DataLoader(tds, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))
    x, y = next(iter(dl))
    assert x.shape == (32, 1, 16, 16) and float(x.max()) <= 1.0
    torch.manual_seed(0)
    model = GenNet(**dict(input_channels=tds.input_channels, input_dim=tds.dim))
    history = train(model, dl, torch.optim.SGD(model.parameters(), lr=0.1), torch.nn.functional.nll_loss, 3, dl_eval=dl)
    assert len(history["epoch_loss"]) == 3 and history["epoch_loss"][-1] < history["epoch_loss"][0]
    assert len(history["valid_loss"]) == 3
    assert 0 <= evaluate_model(model, DataLoader(tds, batch_size=64)) <= 300


def test_image_dataset_from_dirtree_resizes_every_image_to_256_rgb(dirtree, tmp_path):
    from reprodl.compat.dtoolai.data import ImageDataSet
    from reprodl.compat.dtoolai.utils import image_dataset_from_dirtree

    uri = image_dataset_from_dirtree(dirtree, str(tmp_path), "imageds")
    assert str(uri).startswith("file://") and str(uri).endswith("imageds")
    ids = ImageDataSet(uri)  # images of three sizes and two modes: dtoolAI's default resize
    assert len(ids) == 6 and set(ids.cat_encoding) == {"car", "mug", "chair"}
    assert (ids.input_channels, ids.dim) == (3, 256)
    im, label = ids[0]
    assert isinstance(im, np.ndarray) and im.shape == (3, 256, 256) and im.dtype == np.float32
    assert label == ids.cat_encoding[ids.cat_lookup[ids.identifiers[0]]]
    batch, _ = next(iter(torch.utils.data.DataLoader(ids, batch_size=6)))
    assert batch.shape == (6, 3, 256, 256)
    # scripts/utils/set_dataset_train_test.py: a usetype overlay, then ImageDataSet(uri, usetype='test')
    ids.put_overlay("usetype", {idn: ("test" if i < 2 else "train") for i, idn in enumerate(ids.identifiers)})
    assert len(ImageDataSet(uri, usetype="test")) == 2 and len(ImageDataSet(uri)) == 4


def test_image_helpers_convert_as_dtoolais_did():
    from reprodl.compat.dtoolai.data import coerce_to_fixed_size_rgb, scaled_float_array_to_pil_image
    from reprodl.compat.dtoolai.imageutils import coerce_to_target_dim

    gray = scaled_float_array_to_pil_image(np.full((1, 5, 7), 0.5, dtype=np.float32))
    assert gray.mode == "L" and gray.size == (7, 5) and np.asarray(gray)[0, 0] == 127
    assert scaled_float_array_to_pil_image(np.zeros((3, 4, 4))).mode == "RGB"
    with pytest.raises(ValueError, match="Can't handle image with 2 channels"):
        scaled_float_array_to_pil_image(np.zeros((2, 4, 4)))
    out = coerce_to_target_dim(Image.new("RGB", (50, 40)), [1, 28, 28])
    assert (out.mode, out.size) == ("L", (28, 28))
    assert coerce_to_fixed_size_rgb(Image.new("L", (5, 5)), (9, 8)).mode == "RGB"
    with pytest.raises(ValueError, match="Unknown image mode: CMYK"):
        coerce_to_target_dim(Image.new("CMYK", (4, 4)), [3, 4, 4])


# --- training: the paper's call ------------------------------------------------------------
def _files(uri: str) -> set[str]:
    ds = dtoolcore.DataSet.from_uri(uri)
    return {ds.item_properties(i)["relpath"] for i in ds.identifiers}


def test_the_papers_derived_dataset_creator_call_writes_the_record_derived_dataset_writes(digits16, tmp_path):
    from reprodl import DerivedDataSet, GenNet, Parameters, TensorDataSet, TrainedTorchModel
    from reprodl import train_model_with_metadata_capture as train_capture
    from reprodl.modeldataset.read import load_record

    def run(make_output):  # the same training into two kinds of output
        train_ds = TensorDataSet(digits16)
        params = Parameters(batch_size=32, learning_rate=0.05, n_epochs=1, init_params={"input_dim": 16})
        torch.manual_seed(0)
        model = GenNet(**params.init_params)
        optimiser = torch.optim.SGD(model.parameters(), lr=params.learning_rate)
        with make_output(train_ds) as out:
            train_capture(model, train_ds, optimiser, torch.nn.NLLLoss(), params, out, progress=False)
        return out.uri

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    creator = run(lambda ds: dtoolcore.DerivedDataSetCreator("paper", str(tmp_path / "a"), ds))
    derived = run(lambda ds: DerivedDataSet(str(tmp_path / "b"), "paper", ds))
    assert dtoolcore.DataSet.from_uri(creator).admin_metadata["type"] == "dataset"  # frozen by the creator
    assert _files(creator) == _files(derived) >= {keys.WEIGHTS_FILE, keys.PROVENANCE_FILE, keys.HISTORY_FILE}
    a, b = load_record(creator), load_record(derived)
    assert a.results.weights_sha256 == b.results.weights_sha256
    assert a.data[0].uuid == b.data[0].uuid == TensorDataSet(digits16).uuid
    assert a.architecture == b.architecture and a.training.params == b.training.params
    ds = dtoolcore.DataSet.from_uri(creator)
    assert ds.get_annotation("source_dataset_uuid") == a.data[0].uuid
    assert ds.get_annotation(keys.RECORD_DIGEST) == a.digest
    assert TrainedTorchModel(creator).name == "paper"


def test_a_creator_derived_from_other_data_is_refused(digits16, dtoolai_tensor_ds, tmp_path):
    from reprodl import GenNet, Parameters, TensorDataSet, train_model_with_metadata_capture
    from reprodl.errors import ParametersError

    train_ds = TensorDataSet(digits16)
    model = GenNet(input_dim=16)
    other = dtoolcore.DataSet.from_uri(dtoolai_tensor_ds)
    (tmp_path / "out").mkdir()
    with pytest.raises(ParametersError, match="pass the training dataset as DerivedDataSetCreator's source"):
        with dtoolcore.DerivedDataSetCreator("m", str(tmp_path / "out"), other) as out:
            train_model_with_metadata_capture(
                model, train_ds, torch.optim.SGD(model.parameters(), lr=0.1), torch.nn.NLLLoss(), Parameters(), out
            )


def test_compat_training_sets_dtoolais_params_and_the_model_reads_back_and_reproduces(digits16, tmp_path):
    """scripts/train_cnn_classifier_from_tensor_dataset.py, then scripts/apply_model_to_image.py."""
    from reprodl import reproduce
    from reprodl.compat.dtoolai.data import TensorDataSet, scaled_float_array_to_pil_image
    from reprodl.compat.dtoolai.imageutils import coerce_to_target_dim
    from reprodl.compat.dtoolai.models import GenNet
    from reprodl.compat.dtoolai.parameters import Parameters
    from reprodl.compat.dtoolai.trained import TrainedTorchModel
    from reprodl.compat.dtoolai.training import train_model_with_metadata_capture

    tds_train = TensorDataSet(digits16)
    params = Parameters(batch_size=32, learning_rate=0.05, n_epochs=1)
    params.update_from_comma_separated_string("n_epochs=2")
    params["init_params"] = dict(input_channels=tds_train.input_channels, input_dim=tds_train.dim)
    model = GenNet(**params["init_params"])
    optimiser = torch.optim.SGD(model.parameters(), lr=params.learning_rate)
    (tmp_path / "models").mkdir()
    with dtoolcore.DerivedDataSetCreator("digits_model", str(tmp_path / "models"), tds_train) as output_ds:
        train_model_with_metadata_capture(model, tds_train, optimiser, torch.nn.NLLLoss(), params, output_ds)
    assert params.parameter_dict["optimiser_name"] == "SGD" and params.input_dim == 16  # as dtoolAI set them

    net = TrainedTorchModel(output_ds.uri)
    assert net.model_name == "dtoolai.simpleScalingCNN" and net.name == "digits_model"
    assert (net.model_params["input_dim"], net.model_params["input_channels"], net.model_params["n_epochs"]) == (
        16,
        1,
        2,
    )
    assert "digits16" in net.get_readme_content()
    sample = tds_train[7][0]
    expected = net.cat_decoding[int(net.model(torch.as_tensor(sample)[None]).argmax())]
    im = scaled_float_array_to_pil_image(sample)
    dim, channels = net.model_params["input_dim"], net.model_params["input_channels"]
    as_input = torch.as_tensor(np.asarray(coerce_to_target_dim(im, [channels, dim, dim]), dtype=np.float32) / 255)
    assert net.predict(as_input[None, None]) == expected and isinstance(expected, str)
    assert net.convert_and_predict(im) == expected
    assert reproduce(output_ds.uri).verdict == "identical"


# --- models dtoolAI made ---------------------------------------------------------------------
def test_a_dtoolai_made_model_loads_with_weights_only_and_predicts_category_names(digits16, tmp_path, cli):
    from reprodl import TrainedTorchModel as ReprodlModel
    from reprodl.compat.dtoolai.data import TensorDataSet
    from reprodl.compat.dtoolai.trained import TrainedTorchModel

    uri, original = _dtoolai_model(tmp_path, digits16)
    model = TrainedTorchModel(uri)
    assert model.model_name == "dtoolai.simpleScalingCNN" and model.model_params["input_dim"] == 16
    assert "source_dataset_name: digits16" in model.get_readme_content()
    x = torch.as_tensor(TensorDataSet(digits16)[0][0])[None]
    assert model.predict(x) == str(int(original(x).argmax()))
    assert ReprodlModel(uri).predict_categories(x) == [model.predict(x)]  # reprodl's own class loads it too

    shown = cli("provenance", uri)
    assert shown.exit_code == 0, shown.stderr
    assert "Network architecture name: dtoolai.simpleScalingCNN" in shown.stdout
    assert "a plain state dict of 8 tensors" in shown.stdout and "project: compat tests" in shown.stdout

    (tmp_path / "converted").mkdir()
    converted = cli("convert", uri, str(tmp_path / "converted"), "--name", "mnist_reprodl")
    assert converted.exit_code == 0, converted.stderr
    new = str(tmp_path / "converted" / "mnist_reprodl")
    assert _files(new) == {keys.WEIGHTS_FILE, keys.PROVENANCE_FILE}
    record = ReprodlModel(new).provenance
    assert record.architecture.import_path == "reprodl.zoo:SimpleScalingCNN"
    assert record.data[0].uuid == TensorDataSet(digits16).uuid and record.data[0].source == "dtool"
    made_from = record.model_extra[keys.CONVERTED_FROM]
    assert made_from["uri"] == model.uri and any("seeds" in n for n in made_from["not_recorded"])
    assert made_from["history"] == {"epoch_loss": [2.3]}
    state = load_file(str(Path(new) / "data" / keys.WEIGHTS_FILE))
    assert all(torch.equal(state[k], v) for k, v in original.state_dict().items())
    assert ReprodlModel(new).predict_categories(x) == [model.predict(x)]
    with pytest.raises(ReproductionError, match="cannot be reproduced"):
        from reprodl import reproduce

        reproduce(new)


def test_dtoolai_provenance_is_an_installed_command_that_prints_dtoolais_lines(digits16, tmp_path):
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '\ndtoolai-provenance = "reprodl.cli:provenance_main"\n' in pyproject
    uri, _ = _dtoolai_model(tmp_path, digits16)
    code = "import sys; sys.argv = ['dtoolai-provenance', sys.argv[1]]; import reprodl.cli as c; c.provenance_main()"
    done = subprocess.run([sys.executable, "-c", code, uri], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Network architecture name: dtoolai.simpleScalingCNN" in done.stdout
    assert "Source dataset name: digits16" in done.stdout


@pytest.mark.parametrize("kind", ["code", "not-a-state-dict", "non-tensor-values"])
def test_a_model_pt_that_is_not_a_plain_state_dict_is_refused_and_runs_no_code(digits16, tmp_path, cli, kind):
    from reprodl.compat.dtoolai.trained import TrainedTorchModel

    marker = tmp_path / "unpickled.marker"
    payload = {
        "code": pickle.dumps({"conv1.weight": _Marker(marker)}, protocol=2),
        "not-a-state-dict": _torch_bytes([1, 2, 3]),
        "non-tensor-values": _torch_bytes({"conv1.weight": torch.zeros(1), "epoch": 3}),
    }[kind]
    uri, _ = _dtoolai_model(tmp_path, digits16, payload=payload)
    with pytest.raises(ModelLoadError, match=r"model\.pt"):
        TrainedTorchModel(uri)
    for args in (("provenance", uri), ("convert", uri, str(tmp_path / "out")), ("predict", uri, "x.png")):
        result = cli(*args)
        assert result.exit_code == 2 and "model.pt" in result.stderr, (args, result.stdout, result.stderr)
    assert not marker.exists()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def _torch_bytes(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


# --- ResNet18Pretrained ----------------------------------------------------------------------
TORCHVISION_KEYS = {"conv1.weight", "bn1.running_var", "layer1.0.conv2.weight", "layer2.0.downsample.0.weight"}
TORCHVISION_KEYS |= {"layer4.1.bn2.num_batches_tracked", "layer3.0.downsample.1.bias", "fc.weight", "fc.bias"}


def test_resnet18_pretrained_takes_its_weights_from_a_file_or_a_dataset_and_downloads_nothing(tmp_path, monkeypatch):
    from reprodl.compat.dtoolai.models import WEIGHTS_ENV, ResNet18Pretrained
    from reprodl.store import create_dataset
    from reprodl.zoo import ResNet18

    torch.manual_seed(1)
    imagenet = ResNet18().state_dict()  # a stand-in for torchvision's resnet18-f37072fd.pth
    assert TORCHVISION_KEYS <= set(imagenet) and len(imagenet) == 122 and imagenet["fc.weight"].shape == (1000, 512)
    pth, st = tmp_path / "resnet18.pth", tmp_path / "resnet18.safetensors"
    torch.save(imagenet, pth)
    save_file({k: v.contiguous() for k, v in imagenet.items()}, str(st))
    with create_dataset(str(tmp_path), "resnet18-weights") as w:
        w.put_item(st, "resnet18.safetensors")

    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    with pytest.raises(ModelLoadError, match="downloads nothing"):
        ResNet18Pretrained(5)
    for weights in (str(pth), str(st), w.uri):
        model = ResNet18Pretrained(5, weights=weights)
        assert model.model_name == "resnet18pretrained" and model.categorical_output
        assert torch.equal(model.state_dict()["layer4.1.conv2.weight"], imagenet["layer4.1.conv2.weight"])
        assert model.fc.out_features == 5 and model(torch.rand(2, 3, 64, 64)).shape == (2, 5)
    monkeypatch.setenv(WEIGHTS_ENV, str(pth))
    assert ResNet18Pretrained(3).fc.out_features == 3  # dtoolAI's call, weights from the environment


def test_nested_dict_as_string_is_dtoolais_readme_text():
    from reprodl.compat.dtoolai.utils import nested_dict_as_string

    text = nested_dict_as_string({"a": 1, "parameters": {"b": 2, "init": {"c": 3}}, "d": "x"})
    assert text == "a: 1\nparameters:\n  b: 2\n  init:\n    c: 3\nd: x\n"
