"""The model zoo: GenNet from 8x8 up, and the small ResNet (no torchvision) end to end."""

from __future__ import annotations

import pytest
import torch

from reprodl.reproduction.rerun import reproduce
from reprodl.training.config import build_and_train, load_config
from reprodl.zoo import GenNet, SmallResNet

pytest.register_assert_rewrite("train_fixtures")

from train_fixtures import digits_config

pytest_plugins = ["train_fixtures"]


@pytest.mark.parametrize("dim", [4, 8, 13, 28, 64])
def test_gennet_works_from_4x4_up_and_gives_log_probabilities(dim):
    torch.manual_seed(0)
    net = GenNet(input_channels=3, input_dim=dim, n_outputs=7)
    out = net(torch.rand(2, 3, dim, dim))
    assert out.shape == (2, 7)
    assert torch.allclose(out.exp().sum(1), torch.ones(2), atol=1e-5)


def test_gennet_refuses_inputs_below_4x4_naming_the_value():
    with pytest.raises(ValueError, match="input_dim should be at least 4, but got input_dim=3"):
        GenNet(input_dim=3)


def test_small_resnet_handles_any_input_size_and_stage_widths():
    torch.manual_seed(0)
    net = SmallResNet(input_channels=1, n_outputs=4, widths=[8, 16, 32], blocks_per_stage=2)
    for size in (8, 28, 33):
        assert net(torch.rand(3, 1, size, size)).shape == (3, 4)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())


def test_small_resnet_trains_on_digits_and_reproduces_identical(digits_split_master, tmp_path):
    config = digits_config(digits_split_master, tmp_path, name="resnet", n_epochs=2)
    config["model"] = {"class": "SmallResNet", "init_params": {"input_channels": 1, "n_outputs": 10, "widths": [8, 16]}}
    uri, record = build_and_train(load_config(config), progress=False)

    assert record.architecture.import_path == "reprodl.zoo:SmallResNet"
    assert record.results.final["valid_accuracy"] > 0.5  # well above the 10% majority baseline
    report = reproduce(uri)
    assert report.verdict == "identical"
    # BatchNorm's running statistics and counters are part of what must come back.
    names = {t["name"] for t in report.weights["tensors"]}
    assert any(n.endswith("running_mean") for n in names) and any(n.endswith("num_batches_tracked") for n in names)
