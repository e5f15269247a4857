"""reprodl.data.transforms: configs that rebuild, seeded augmentation, and transforms carried
through training, reproduction, YAML configs and prediction.

The "must hold" cases: every transform's config rebuilds an equal transform and a config
naming anything else is refused, never imported; a training with normalisation and random
augmentation reproduces `identical`; a transform of the user's own is refused by
reproduction (naming its class) unless passed with `transforms=`; prediction applies the
training's deterministic preprocessing.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from reprodl.data.transforms import (
    CenterCrop,
    Compose,
    GaussianNoise,
    Identity,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    Resize,
    ToTensor,
    eval_view,
    from_config,
    from_description,
)
from reprodl.errors import ModelLoadError, ParametersError, ReproductionError, TransformError

pytest.register_assert_rewrite("train_fixtures")

from train_fixtures import INIT_PARAMS, digit_image, digits_config, small_params

pytest_plugins = ["train_fixtures"]

MEAN, STD = [0.3], [0.4]


class Brighten:
    """A transform of the user's own: reprodl cannot rebuild it from a record."""

    def __init__(self, amount: float) -> None:
        self.amount = amount

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.amount


def _train(base, name, train_ds, *, valid_ds=None, n_epochs=2, init_params=None):
    from reprodl import DerivedDataSet, GenNet, train_model_with_metadata_capture

    params = small_params(n_epochs=n_epochs, init_params=dict(init_params or INIT_PARAMS), batch_size=32)
    torch.manual_seed(params.seed)
    net = GenNet(**params.init_params)
    opt = torch.optim.SGD(net.parameters(), lr=params.learning_rate, momentum=0.9)
    with DerivedDataSet(str(base), name, train_ds, valid=valid_ds) as out:
        record = train_model_with_metadata_capture(net, train_ds, opt, torch.nn.NLLLoss(), params, out, progress=False)
    return out.uri, record


# --- configs ----------------------------------------------------------------------------------

ALL = [
    Identity(),
    Compose([Normalize(MEAN, STD), RandomHorizontalFlip(0.25)]),
    Compose([Resize((12, 10)), ToTensor("L"), Compose([GaussianNoise(0.1)])]),
    Resize(8),
    Resize((6, 4)),
    ToTensor(),
    ToTensor("RGB"),
    Normalize([0.5, 0.4, 0.3], [0.2, 0.2, 0.25]),
    Normalize(0.5, 2),
    CenterCrop(4),
    RandomCrop((6, 5), padding=2),
    RandomHorizontalFlip(),
    GaussianNoise(0.05),
]


@pytest.mark.parametrize("transform", ALL, ids=lambda t: type(t).__name__)
def test_config_round_trips_through_json_to_an_equal_transform(transform):
    config = transform.config()
    assert config["name"] == type(transform).__name__
    rebuilt = from_config(json.loads(json.dumps(config)))
    assert type(rebuilt) is type(transform) and rebuilt == transform and rebuilt.config() == config
    description = {
        "class": f"reprodl.transforms.{type(transform).__name__}",
        "repr": repr(transform),
        "config": json.loads(json.dumps(config)),
    }
    assert from_description(description) == transform


def test_a_list_of_configs_builds_a_compose():
    built = from_config([{"name": "Normalize", "mean": MEAN, "std": STD}, {"name": "GaussianNoise", "std": 0.1}])
    assert built == Compose([Normalize(MEAN, STD), GaussianNoise(0.1)])


@pytest.mark.parametrize(
    "config, match",
    [
        ({"name": "os.system"}, "'os.system' is not one of reprodl's transforms"),
        (
            {"name": "torchvision.transforms.Normalize", "mean": [0.5], "std": [0.5]},
            "never imports what a config names",
        ),
        ({"name": "Normalize", "mean": [0.5], "sd": [0.5]}, r"unknown arguments \['sd'\]; it takes \['mean', 'std'\]"),
        ({"name": "Normalize", "mean": [0.5], "std": [0.0]}, "cannot be zero"),
        ({"name": "RandomHorizontalFlip", "p": 2}, "p should be a probability between 0 and 1, but got p=2"),
        ({"name": "Resize", "size": [8, 8, 8]}, r"Resize size should be a positive integer or a pair of them"),
        ({"name": "Compose", "transforms": {"name": "Identity"}}, "needs 'transforms': a list of configs"),
        ({"mean": [0.5]}, "a mapping with a 'name'"),
    ],
)
def test_bad_configs_are_refused_naming_the_problem(config, match):
    with pytest.raises(TransformError, match=match):
        from_config(config)


def test_a_user_transform_in_a_compose_is_recorded_by_class_and_not_rebuilt():
    config = Compose([Normalize(MEAN, STD), Brighten(0.1)]).config()
    assert config["transforms"][1]["name"] == f"{__name__}.Brighten"
    with pytest.raises(TransformError, match=f"'{__name__}.Brighten' is not one of reprodl's transforms"):
        from_config(config)
    with pytest.raises(TransformError, match=f"{__name__}.Brighten is not one of reprodl's transforms"):
        from_description({"class": f"{__name__}.Brighten", "repr": "Brighten", "config": {"name": "Normalize"}})


# --- behaviour ---------------------------------------------------------------------------------


def test_random_transforms_draw_from_the_global_generator_and_pin_exact_outputs():
    x = torch.arange(16, dtype=torch.float32).reshape(1, 4, 4)
    t = Compose([RandomCrop(4, padding=1), RandomHorizontalFlip(), GaussianNoise(0.5)])
    torch.manual_seed(7)
    first = t(x)
    torch.manual_seed(7)
    assert torch.equal(t(x), first)
    # The draws, spelled out: top, left, flip, then noise.
    torch.manual_seed(7)
    top, left = int(torch.randint(0, 3, (1,))), int(torch.randint(0, 3, (1,)))
    flip = float(torch.rand(1)) < 0.5
    expected = torch.nn.functional.pad(x, (1, 1, 1, 1))[..., top : top + 4, left : left + 4]
    expected = expected.flip(-1) if flip else expected
    expected = expected + torch.randn(expected.shape) * 0.5
    assert torch.equal(first, expected)
    assert torch.equal(x, torch.arange(16, dtype=torch.float32).reshape(1, 4, 4))  # input untouched


def test_eval_view_keeps_the_deterministic_part():
    t = Compose(
        [
            Resize(8),
            ToTensor(),
            RandomHorizontalFlip(),
            Normalize(MEAN, STD),
            RandomCrop(6, padding=1),
            GaussianNoise(0.1),
        ]
    )
    assert t.eval_view() == Compose([Resize(8), ToTensor(), Normalize(MEAN, STD), CenterCrop(6)])
    assert eval_view(GaussianNoise(0.1)) == Identity()
    assert eval_view(Brighten(0.1)).__class__ is Brighten  # a user's transform stays as it is
    assert eval_view(None) is None


def test_pil_transforms_match_reprodl_image_reading():
    from reprodl.data.images import resize, to_array

    image = Image.fromarray((np.arange(30, dtype=np.uint8).reshape(5, 6) * 8), "L")
    out = Compose([Resize((4, 3)), ToTensor()])(image)
    assert out.dtype == torch.float32 and out.shape == (1, 3, 4)
    assert torch.equal(out, torch.from_numpy(to_array(resize(image, (4, 3)), "L")))
    flipped = RandomHorizontalFlip(1.0)(image)
    assert np.array_equal(np.asarray(flipped), np.asarray(image)[:, ::-1])


def test_transforms_on_the_wrong_kind_of_input_say_what_to_do():
    image = Image.new("L", (4, 4))
    with pytest.raises(TransformError, match="takes a .C, H, W. tensor, but got a PIL image: put ToTensor"):
        Normalize(MEAN, STD)(image)
    with pytest.raises(TransformError, match="Resize takes a PIL image, but got Tensor"):
        Resize(4)(torch.zeros(1, 4, 4))
    with pytest.raises(TransformError, match="Normalize has 3 channel values but got a sample of shape"):
        Normalize([0.1, 0.2, 0.3], [1, 1, 1])(torch.zeros(1, 4, 4))
    with pytest.raises(TransformError, match=r"CenterCrop of \(height, width\) \(6, 6\) does not fit"):
        CenterCrop(6)(torch.zeros(1, 4, 4))


# --- training and reproduction -----------------------------------------------------------------


def test_training_with_normalisation_and_augmentation_reproduces_identical(digits_split_master, tmp_path):
    from reprodl import TensorDataSet
    from reprodl.reproduction.rerun import reproduce

    augment = Compose([Normalize(MEAN, STD), RandomHorizontalFlip(), GaussianNoise(0.1)])
    train_ds = TensorDataSet(digits_split_master, "train", augment)
    valid_ds = TensorDataSet(digits_split_master, "test", augment.eval_view())
    uri, record = _train(tmp_path, "augmented", train_ds, valid_ds=valid_ds)
    assert record.data[0].transform["class"] == "reprodl.data.transforms.Compose"
    assert from_config(record.data[0].transform["config"]) == augment
    assert record.data[1].transform["config"] == {"name": "Compose", "transforms": [Normalize(MEAN, STD).config()]}

    report = reproduce(uri, output=str(tmp_path))
    assert report.verdict == "identical", report.reasons
    assert report.weights["max_abs_diff"] == 0.0 and report.data_order_matches

    # The augmentation is not a no-op: without the noise the same seed trains other weights.
    plain = TensorDataSet(digits_split_master, "train", Compose([Normalize(MEAN, STD), RandomHorizontalFlip()]))
    _, other = _train(tmp_path, "less-augmented", plain)
    assert other.results.weights_sha256 != record.results.weights_sha256


def test_user_transform_is_refused_by_reproduce_unless_passed(digits_split_master, tmp_path):
    from reprodl import TensorDataSet
    from reprodl.reproduction.rerun import reproduce

    uri, _ = _train(tmp_path, "brightened", TensorDataSet(digits_split_master, "train", Brighten(0.1)), n_epochs=1)
    out = tmp_path / "again"
    out.mkdir()
    with pytest.raises(
        ReproductionError,
        match=rf"read through a transform that reprodl cannot rebuild .*"
        rf"{__name__}\.Brighten is not one of reprodl's transforms.*"
        r"transforms=\{'train': your_transform\}",
    ):
        reproduce(uri, output=str(out))
    assert list(out.iterdir()) == []  # refused before any training
    with pytest.raises(
        ReproductionError, match=r"names roles \['valid'\], but the record has datasets for \['train'\]"
    ):
        reproduce(uri, transforms={"valid": Brighten(0.1)})

    report = reproduce(uri, transforms={"train": Brighten(0.1)})
    assert report.verdict == "identical" and report.reasons == []
    differing = reproduce(uri, transforms={"train": Normalize(MEAN, STD)})
    assert differing.verdict == "differs"
    assert any("transform passed is a reprodl.data.transforms.Normalize" in r for r in differing.reasons)


def test_yaml_config_transform_builds_a_compose_that_is_recorded(digits_split_master, tmp_path):
    from reprodl.reproduction.rerun import reproduce
    from reprodl.training.config import build_and_train, load_config

    cfg = digits_config(digits_split_master, tmp_path, name="configured")
    cfg["data"]["train"]["transform"] = [
        {"name": "Normalize", "mean": MEAN, "std": STD},
        {"name": "RandomHorizontalFlip", "p": 0.5},
    ]
    uri, record = build_and_train(load_config(cfg), progress=False)
    assert from_config(record.data[0].transform["config"]) == Compose([Normalize(MEAN, STD), RandomHorizontalFlip()])
    assert record.data[1].transform is None
    assert reproduce(uri).verdict == "identical"

    cfg["data"]["train"]["transform"] = [{"name": "mypkg.Augment"}]
    with pytest.raises(ParametersError, match="transform for .* cannot be built: 'mypkg.Augment' is not one of"):
        load_config(cfg)


# --- prediction --------------------------------------------------------------------------------


def test_convert_and_predict_applies_the_recorded_normalisation(digits_split_master, tmp_path):
    from reprodl import TensorDataSet, TrainedTorchModel

    train_ds = TensorDataSet(digits_split_master, "train", Compose([Normalize(MEAN, STD), GaussianNoise(0.1)]))
    uri, _ = _train(tmp_path, "normalised", train_ds, n_epochs=1)
    model = TrainedTorchModel(uri)
    assert model.transform == Compose([Normalize(MEAN, STD)]) and model.input_shape == (1, 8, 8)

    held_out = TensorDataSet(digits_split_master, "test")
    agree = 0
    for i in range(20):
        image = digit_image(held_out.data[held_out.rows[i]])
        raw, _ = held_out[i]
        normalised = (raw - torch.tensor(MEAN).reshape(-1, 1, 1)) / torch.tensor(STD).reshape(-1, 1, 1)
        converted = model.convert_image(image)
        assert torch.allclose(converted, normalised, atol=1e-6)
        with torch.no_grad():
            expected = model.model(converted[None]).argmax(1).item()
            agree += expected == model.model(normalised[None]).argmax(1).item()
        assert model.convert_and_predict(image) == model.categories[expected]
    assert agree == 20

    # evaluate() takes the dataset as given: with the model's preprocessing, it sees what training saw.
    assert model.evaluate(TensorDataSet(digits_split_master, "test", transform=model.transform))["accuracy"] > 0.5


def test_image_model_resizes_and_normalises_as_its_training_did(image_uri, tmp_path):
    from reprodl import ImageDataSet, TrainedTorchModel
    from reprodl.data.images import resize, to_array
    from reprodl.reproduction.rerun import reproduce

    transform = Compose([Resize(8), ToTensor(), Normalize([0.5], [0.5]), RandomHorizontalFlip()])
    train_ds = ImageDataSet(image_uri, transform=transform)
    assert train_ds[0][0].shape == (1, 8, 8)
    uri, _ = _train(tmp_path, "images", train_ds, n_epochs=2, init_params={**INIT_PARAMS, "n_outputs": 3})
    assert reproduce(uri).verdict == "identical"

    model = TrainedTorchModel(uri)
    assert model.data_shape == (1, 5, 6) and model.input_shape == (1, 8, 8)
    image = Image.fromarray((np.arange(12 * 10, dtype=np.uint8).reshape(10, 12) * 2), "L").convert("RGB")
    expected = (torch.from_numpy(to_array(resize(image.convert("L"), (8, 8)), "L")) - 0.5) / 0.5
    assert torch.equal(model.convert_image(image), expected)
    assert model.convert_and_predict(image) in model.categories


def test_a_model_trained_through_a_user_transform_needs_one_to_convert_images(digits_split_master, tmp_path):
    from reprodl import TensorDataSet, TrainedTorchModel

    uri, _ = _train(tmp_path, "brightened", TensorDataSet(digits_split_master, "train", Brighten(0.1)), n_epochs=1)
    image = Image.new("L", (8, 8))
    with pytest.raises(
        ModelLoadError, match=rf"{__name__}\.Brighten is not one of .*TrainedTorchModel\(uri, transform="
    ):
        TrainedTorchModel(uri).convert_image(image)
    converted = TrainedTorchModel(uri, transform=Brighten(0.1)).convert_image(image)
    assert torch.equal(converted, torch.full((1, 8, 8), 0.1))


def test_augmentation_in_dataloader_workers_reproduces_identical(digits_split_master, tmp_path):
    from reprodl import DerivedDataSet, GenNet, TensorDataSet, train_model_with_metadata_capture
    from reprodl.reproduction.rerun import reproduce

    train_ds = TensorDataSet(digits_split_master, "train", Compose([RandomCrop(8, padding=1), GaussianNoise(0.1)]))
    params = small_params(n_epochs=2, num_workers=2)
    torch.manual_seed(params.seed)
    net = GenNet(**params.init_params)
    opt = torch.optim.SGD(net.parameters(), lr=params.learning_rate, momentum=0.9)
    with DerivedDataSet(str(tmp_path), "workers", train_ds) as out:
        record = train_model_with_metadata_capture(net, train_ds, opt, torch.nn.NLLLoss(), params, out, progress=False)
    assert record.training.num_workers == 2 and record.training.determinism.mode == "bitwise"
    assert reproduce(out.uri).verdict == "identical"
