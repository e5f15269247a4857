"""TrainedTorchModel: load safely from any URI, predict, convert images, evaluate."""

from __future__ import annotations

import io
import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save

from reprodl import keys
from reprodl.errors import IntegrityError, ModelLoadError, UnsafeImportError

pytest.register_assert_rewrite("train_fixtures")

from train_fixtures import N_TEST, TinyNet, digit_image, rewrite_model, train_digits

pytest_plugins = ["train_fixtures"]


@pytest.fixture(scope="module")
def model(trained_model):
    from reprodl import TrainedTorchModel

    return TrainedTorchModel(trained_model.uri)


@pytest.fixture(scope="module")
def held_out(trained_model):
    from reprodl import TensorDataSet

    return TensorDataSet(trained_model.data_uri, usetype="test")


def _inputs(ds, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = zip(*(ds[i] for i in range(n)))
    return torch.stack(x), torch.tensor(y)


def _weights_bytes(uri: str) -> bytes:
    from reprodl.store import open_dataset

    ds = open_dataset(uri)
    return Path(ds.item_path(ds.identifier_of(keys.WEIGHTS_FILE))).read_bytes()


@pytest.fixture
def no_unpickling(monkeypatch):
    """Fail the test if anything tries to unpickle."""

    def refuse(*args, **kwargs):
        raise AssertionError("something tried to unpickle the weights")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)


# --- loading -----------------------------------------------------------------------------------


def test_loads_from_a_path_and_from_file_uris(trained_model, held_out):
    from reprodl import TrainedTorchModel

    x, _ = _inputs(held_out, 32)
    by_path = TrainedTorchModel(str(trained_model.path))
    by_uri = TrainedTorchModel(trained_model.uri)
    by_short_uri = TrainedTorchModel("file://" + str(trained_model.path))
    assert by_path.uri == by_uri.uri == by_short_uri.uri == trained_model.uri
    assert torch.equal(by_path.predict(x), by_uri.predict(x))
    assert torch.equal(by_path.predict(x), by_short_uri.predict(x))
    assert by_path.name == "digits-model" and by_path.categories == [str(d) for d in range(10)]
    assert by_path.provenance.digest == trained_model.record.digest
    assert not by_path.model.training


def test_a_training_dataset_is_not_a_model(trained_model):
    from reprodl import TrainedTorchModel

    with pytest.raises(ModelLoadError, match="is not a reprodl model: it has no provenance.json item"):
        TrainedTorchModel(trained_model.data_uri)


@pytest.mark.parametrize("zip_format", [True, False], ids=["torch.save", "legacy-pickle"])
def test_pickled_weights_named_safetensors_are_refused(trained_model, tmp_path, no_unpickling, zip_format):
    from reprodl import TrainedTorchModel
    from reprodl.store import create_dataset, open_dataset

    state = load_file(str(trained_model.path / "data" / keys.WEIGHTS_FILE))
    buf = io.BytesIO()
    torch.save(state, buf, _use_new_zipfile_serialization=zip_format)
    src = open_dataset(trained_model.uri)
    with create_dataset(str(tmp_path), "pickled") as writer:
        writer.put_item(src.item_path(src.identifier_of(keys.PROVENANCE_FILE)), keys.PROVENANCE_FILE)
        writer.put_bytes(buf.getvalue(), keys.WEIGHTS_FILE)
    with pytest.raises(
        ModelLoadError, match=r"model\.safetensors is a pickle/zip \(torch\.save\) file, not safetensors"
    ):
        TrainedTorchModel(writer.uri)


def test_weights_only_as_a_pickle_file_are_refused(trained_model, tmp_path, no_unpickling):
    from reprodl import TrainedTorchModel

    state = load_file(str(trained_model.path / "data" / keys.WEIGHTS_FILE))
    buf = io.BytesIO()
    torch.save(state, buf)
    uri = rewrite_model(
        trained_model.uri, tmp_path, "pt-only", drop=(keys.WEIGHTS_FILE,), replace={"model.pt": buf.getvalue()}
    )
    with pytest.raises(
        ModelLoadError, match=r"holds weights as a pickle \(model\.pt\).*Convert the weights to safetensors"
    ):
        TrainedTorchModel(uri)


def test_weights_that_are_not_safetensors_are_refused(trained_model, tmp_path):
    from reprodl import TrainedTorchModel

    uri = rewrite_model(trained_model.uri, tmp_path, "garbage", replace={keys.WEIGHTS_FILE: b"\x10" * 64})
    with pytest.raises(ModelLoadError, match="is not a valid safetensors file"):
        TrainedTorchModel(uri)


def test_weights_that_do_not_match_the_record_are_refused(trained_model, tmp_path):
    from reprodl import TrainedTorchModel

    state = load_file(str(trained_model.path / "data" / keys.WEIGHTS_FILE))
    state["fc1.bias"] = state["fc1.bias"] + 1.0
    uri = rewrite_model(trained_model.uri, tmp_path, "swapped", replace={keys.WEIGHTS_FILE: save(state)})
    with pytest.raises(IntegrityError, match="the weights do not match the provenance record"):
        TrainedTorchModel(uri)


def test_a_class_outside_the_zoo_needs_allow_or_model_class(digits_split_master, tmp_path):
    from reprodl import TrainedTorchModel

    uri, record = train_digits(
        tmp_path, "tiny", digits_split_master, valid=False, model=TinyNet(), init_params={"input_dim": 8}
    )
    assert record.architecture.import_path == "train_fixtures:TinyNet"
    with pytest.raises(UnsafeImportError, match=r"pass allow=\['train_fixtures'\].*or model_class=YourClass"):
        TrainedTorchModel(uri)
    for loaded in (
        TrainedTorchModel(uri, allow=["train_fixtures"]),
        TrainedTorchModel(uri, allow=["train_fixtures:TinyNet"]),
        TrainedTorchModel(uri, model_class=TinyNet),
    ):
        assert type(loaded.model) is TinyNet
        assert loaded.predict(torch.zeros(2, 1, 8, 8)).shape == (2,)


def test_a_record_naming_arbitrary_code_never_imports_it(trained_model, tmp_path):
    from reprodl import TrainedTorchModel

    def point_elsewhere(raw):
        raw["architecture"]["import_path"] = "reprodl_untrusted_payload:Net"
        raw["architecture"]["module"] = "reprodl_untrusted_payload"

    uri = rewrite_model(trained_model.uri, tmp_path, "elsewhere", edit=point_elsewhere)
    with pytest.raises(UnsafeImportError, match="reprodl_untrusted_payload:Net"):
        TrainedTorchModel(uri)
    assert "reprodl_untrusted_payload" not in sys.modules


# --- predicting ---------------------------------------------------------------------------------


def test_predict_batches_single_samples_and_arrays(model, held_out):
    x, _ = _inputs(held_out, 16)
    predictions = model.predict(x)
    assert predictions.dtype == torch.int64 and predictions.shape == (16,)
    assert model.predict_categories(x) == [str(int(p)) for p in predictions]
    assert torch.equal(model.predict(x[0]), predictions[:1])
    assert torch.equal(model.predict(x.numpy()), predictions)
    with pytest.raises(ModelLoadError, match=r"inputs of shape \(16, 1, 4, 4\) do not fit the model's \(N, 1, 8, 8\)"):
        model.predict(torch.zeros(16, 1, 4, 4))


def test_png_of_a_test_digit_is_classified_like_its_tensor(model, held_out, tmp_path):
    """A lossless 8x8 PNG reads back as exactly the values the model was trained on."""
    x, y = _inputs(held_out, 50)
    expected = model.predict_categories(x)
    got = []
    for i in range(50):
        path = tmp_path / f"digit_{i}.png"
        digit_image(held_out.data[held_out.rows[i]]).save(path)
        got.append(model.convert_and_predict(Image.open(path)))
    assert got == expected
    right = [i for i in range(50) if expected[i] == str(int(y[i]))]
    assert len(right) >= 45
    assert model.convert_and_predict(Image.open(tmp_path / f"digit_{right[0]}.png")) == str(int(y[right[0]]))


@pytest.mark.parametrize("mode, size", [("RGB", 32), ("RGBA", 16), ("P", 8), ("I;16", 8), ("L", 24)])
def test_images_of_other_modes_and_sizes_are_converted(model, held_out, tmp_path, mode, size):
    x, y = _inputs(held_out, 40)
    right = 0
    for i in range(40):
        image = digit_image(held_out.data[held_out.rows[i]], size=size, mode="RGB" if mode == "P" else "L")
        if mode == "I;16":
            image = Image.fromarray(np.asarray(image, dtype=np.uint16) * 257)  # 16-bit, same picture
        elif mode != "L":
            image = image.convert(mode)
        path = tmp_path / f"{i}.png"
        image.save(path)
        reopened = Image.open(path)
        converted = model.convert_image(reopened)
        assert converted.shape == (1, 8, 8) and converted.dtype == torch.float32
        assert 0.0 <= float(converted.min()) and float(converted.max()) <= 1.0
        result = model.convert_and_predict(reopened)
        assert result in model.categories
        right += result == str(int(y[i]))
    assert right >= 34  # resampling changes pixels a little; the digits stay readable


# --- evaluating ---------------------------------------------------------------------------------


def test_evaluate_reports_accuracy_per_class_and_the_majority_baseline(model, held_out):
    result = model.evaluate(held_out)
    x, y = _inputs(held_out, len(held_out))
    predictions = model.predict(x)
    assert result["n_samples"] == N_TEST
    assert result["accuracy"] == pytest.approx(float((predictions == y).float().mean()))
    assert result["accuracy"] > 0.9
    cm = np.array(result["confusion_matrix"])
    assert cm.shape == (10, 10) and cm.sum() == N_TEST and np.trace(cm) == int((predictions == y).sum())
    for i, name in enumerate(result["categories"]):
        c = result["per_class"][name]
        assert c["support"] == int((y == i).sum()) == cm[i].sum()
        assert c["recall"] == pytest.approx(cm[i, i] / cm[i].sum())
        assert c["precision"] == pytest.approx(cm[i, i] / cm[:, i].sum() if cm[:, i].sum() else 0.0)
    supports = np.bincount(y.numpy(), minlength=10)
    assert result["majority_baseline_accuracy"] == pytest.approx(supports.max() / N_TEST)
    assert result["majority_class"] == str(int(supports.argmax()))
    assert result["majority_baseline_accuracy"] < 0.15 < result["accuracy"]
    assert result["dataset_name"] == "digits" and result["dataset_uri"] == held_out.uri
    json.dumps(result)  # the CLI prints it as JSON


def test_evaluate_refuses_data_with_other_categories(model, trained_model, tmp_path):
    from reprodl import TensorDataSet
    from reprodl.data.creators import create_from_arrays

    digits = TensorDataSet(trained_model.data_uri)
    uri = create_from_arrays(
        np.asarray(digits.data[:50]),
        digits.labels[:50] % 3,
        str(tmp_path),
        "three",
        image_dimensions=[1, 8, 8],
        categories=["a", "b", "c"],
    )
    with pytest.raises(ModelLoadError, match="evaluate on data with the model's categories"):
        model.evaluate(TensorDataSet(uri))


def test_readme_content_describes_the_training(model, trained_model):
    import yaml

    readme = yaml.safe_load(model.get_readme_content())
    assert readme["name"] == "digits-model" and readme["architecture"] == "reprodl.zoo:GenNet"
    assert readme["training"]["epochs"] == 3 and readme["training"]["learning_rate"] == 0.05
    assert readme["data"][0]["uri"] == trained_model.record.data[0].uri
    assert readme["record_digest"] == trained_model.record.digest
