"""reprodl.training.params: Parameters read by attribute and key, typed, refused by name, overridden
without mutation."""

from __future__ import annotations

import pytest

from reprodl.errors import ParametersError


def test_parameters_are_read_by_attribute_and_by_key():
    from reprodl import Parameters

    params = Parameters(batch_size=128, learning_rate=0.01, n_epochs=1, init_params={"input_channels": 1})
    assert params.batch_size == 128 and params["learning_rate"] == 0.01
    assert params.init_params == {"input_channels": 1}
    assert "n_epochs" in params and "nothing" not in params
    assert {"learning_rate": 0.3, "n_epochs": 4, "batch_size": 8}.items() <= Parameters(
        lr=0.3, epochs=4, bs=8
    ).to_dict().items()


@pytest.mark.parametrize(
    "bad, name",
    [
        ({"batch_size": 0}, "batch_size"),
        ({"learning_rate": -1}, "learning_rate"),
        ({"n_epochs": "many"}, "n_epochs"),
        ({"verify_data": "sometimes"}, "verify_data"),
    ],
)
def test_parameters_refuse_bad_values_naming_them(bad, name):
    from reprodl import Parameters

    with pytest.raises(ParametersError, match=rf"{name}=") as info:
        Parameters(**bad)
    assert repr(next(iter(bad.values()))) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_parameters_read_strings_as_their_types():
    from reprodl import Parameters

    params = Parameters(shuffle="False", deterministic="true", batch_size="64", learning_rate="0.5")
    assert params.shuffle is False and params.deterministic is True
    assert params.batch_size == 64 and params.learning_rate == 0.5


def test_parameters_keep_extras_and_updated_never_mutates():
    from reprodl import Parameters

    params = Parameters(momentum=0.9, optimiser_name="SGD")
    assert params.momentum == 0.9 and params.to_dict()["optimiser_name"] == "SGD"
    changed = params.updated(lr=0.2, momentum=0.5)
    assert (changed.learning_rate, changed.momentum) == (0.2, 0.5)
    assert (params.learning_rate, params.momentum) == (0.01, 0.9)
    with pytest.raises(ParametersError, match="batch_size=-3"):
        params.batch_size = -3
    params.lr = 0.7
    assert params.learning_rate == 0.7


def test_parameters_overrides_nest_and_are_typed():
    from reprodl.training.params import apply_overrides, parse_override

    assert parse_override("lr=0.05") == ("learning_rate", 0.05)
    assert parse_override("shuffle=false") == ("shuffle", False)
    config = {"params": {"seed": 0}}
    assert apply_overrides(config, ["params.seed=3", "optimizer.momentum=0.9"]) == {
        "params": {"seed": 3},
        "optimizer": {"momentum": 0.9},
    }
    assert config == {"params": {"seed": 0}}
    with pytest.raises(ParametersError, match="key=value"):
        parse_override("lr")
