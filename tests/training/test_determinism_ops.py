"""Operations torch cannot run deterministically, met at training time.

No CPU operation of torch 2.x lacks a deterministic implementation, so the models here call
``torch._prims_common.alert_not_deterministic`` in their forward: the function torch's own
Python operations call, which raises (``deterministic=True``) or warns (warn-only mode) with
the same text as its C++ operations.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, cast

import pytest
import torch
from torch import nn
from torch._prims_common import alert_not_deterministic
from torch.nn import functional as F
from train_fixtures import train_digits

pytest_plugins = ["train_fixtures"]

OP = "my_scatter_op"


class ScatterNet(nn.Module):
    """A linear model whose forward runs an operation without a deterministic implementation."""

    def __init__(self, input_dim: int = 8) -> None:
        super().__init__()
        self.fc = nn.Linear(input_dim * input_dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alert_not_deterministic(OP)
        return F.log_softmax(self.fc(torch.flatten(x, 1)), dim=1)


def _arrays() -> torch.utils.data.TensorDataset:
    g = torch.Generator().manual_seed(0)
    return torch.utils.data.TensorDataset(torch.randn(32, 64, generator=g), torch.randint(0, 10, (32,), generator=g))


def _own_loop(run: Any, data: Any) -> nn.Module:
    torch.manual_seed(0)
    model = ScatterNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    run.watch(model, optimizer)
    for x, y in run.loader(data, batch_size=8, shuffle=True):
        optimizer.zero_grad()
        F.nll_loss(model(x), y).backward()
        optimizer.step()
    return model


def _settings_now() -> tuple[bool, bool]:
    return torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()


def test_torchs_error_becomes_one_naming_the_operation() -> None:
    from reprodl.errors import NondeterministicOperationError
    from reprodl.training.capture import DeterminismSettings, nondeterministic_operation

    with pytest.raises(NondeterministicOperationError, match="the operation index_add_cuda_ has no") as info:
        with DeterminismSettings(True, "cpu"):
            alert_not_deterministic("index_add_cuda_")
    torch_error = info.value.__cause__
    assert isinstance(torch_error, RuntimeError) and "does not have a deterministic" in str(torch_error)
    assert nondeterministic_operation(str(torch_error)) == "index_add_cuda_"
    assert nondeterministic_operation("some other failure") is None
    with pytest.raises(RuntimeError, match="^boom$"):  # any other error passes through as it is
        with DeterminismSettings(True, "cpu"):
            raise RuntimeError("boom")


def test_the_builtin_loop_refuses_the_operation_and_names_the_setting_that_allows_it(
    digits_split_uri: str, tmp_path: Path
) -> None:
    from reprodl.errors import NondeterministicOperationError

    before = _settings_now()
    base = tmp_path / "models"
    base.mkdir()
    with pytest.raises(
        NondeterministicOperationError, match=rf"{OP} has no deterministic.*deterministic='warn'"
    ) as info:
        train_digits(base, "scatter", digits_split_uri, model=ScatterNet(), valid=False)
    assert isinstance(info.value, RuntimeError) and info.value.operation == OP
    assert "deterministic: warn" in str(info.value)
    assert list(base.iterdir()) == []
    assert _settings_now() == before


def test_warn_mode_trains_and_lists_the_operation_in_the_record(digits_split_uri: str, tmp_path: Path) -> None:
    from reprodl.modeldataset.read import load_record

    before, show = _settings_now(), warnings.showwarning
    with pytest.warns(UserWarning, match=f"{OP} does not have a deterministic implementation") as caught:
        uri, record = train_digits(tmp_path, "scatter", digits_split_uri, model=ScatterNet(), deterministic="warn")
    determinism = record.training.determinism
    assert determinism.nondeterministic_ops == [OP]
    assert (determinism.mode, determinism.warn_only, determinism.use_deterministic_algorithms) == (
        "bitwise",
        True,
        True,
    )
    assert record.training.params["deterministic"] == "warn"
    assert load_record(uri).training.determinism.nondeterministic_ops == [OP]  # stored, under the digest
    (use,) = determinism.nondeterministic_usage
    assert use.operation == OP and use.count > record.training.optimizer_steps  # every training and validation batch
    assert use.first_frame.startswith("test_determinism_ops.py:") and use.first_frame.endswith(" in forward")
    assert load_record(uri).training.determinism.nondeterministic_usage == [use]
    assert len([w for w in caught if OP in str(w.message)]) == 1  # shown once, though run every batch
    assert _settings_now() == before and warnings.showwarning is show


def test_a_deterministic_builtin_training_lists_no_operation(trained_model: Any) -> None:
    determinism = trained_model.record.training.determinism
    assert determinism.nondeterministic_ops == [] and determinism.warn_only is False


def test_start_run_refuses_the_operation_at_the_context_exit(tmp_path: Path) -> None:
    import reprodl
    from reprodl.errors import NondeterministicOperationError

    before = _settings_now()
    with pytest.raises(NondeterministicOperationError, match=rf"the operation {OP} .*deterministic=False"):
        with reprodl.start_run(str(tmp_path), "scatter") as run:
            run.save(_own_loop(run, _arrays()))
    assert list(tmp_path.iterdir()) == []
    assert _settings_now() == before


def test_start_run_in_warn_mode_records_the_operation(tmp_path: Path) -> None:
    import reprodl
    from reprodl.modeldataset.read import load_record

    with pytest.warns(UserWarning, match=OP):
        with reprodl.start_run(str(tmp_path), "scatter", deterministic="warn") as run:
            run.save(_own_loop(run, _arrays()))
    assert run.uri is not None and run.record is not None
    assert run.record.training.determinism.nondeterministic_ops == [OP]
    assert load_record(run.uri).training.determinism.nondeterministic_ops == [OP]
    (use,) = run.record.training.determinism.nondeterministic_usage
    assert (use.operation, use.count) == (OP, 4) and use.first_frame.endswith(" in forward")  # 32 rows, batches of 8


def test_the_expectation_names_each_nondeterministic_operation_with_its_count_and_frame(tmp_path: Path) -> None:
    import reprodl
    from reprodl.reproduction.environment import expect

    with pytest.warns(UserWarning, match=OP):
        with reprodl.start_run(str(tmp_path), "scatter", deterministic="warn") as run:
            run.save(_own_loop(run, _arrays()))
    assert run.record is not None
    expectation = expect(run.record, run.record.environment, [])
    assert any(f"{OP} (4x, first at test_determinism_ops.py:" in line for line in expectation.because)


def test_an_unknown_deterministic_setting_is_refused(tmp_path: Path) -> None:
    import reprodl
    from reprodl.errors import ParametersError

    with pytest.raises(
        ParametersError, match=r"deterministic should be True, False or 'warn', but got deterministic='maybe'"
    ):
        with reprodl.start_run(str(tmp_path), "x", deterministic=cast(Any, "maybe")):
            pass
    assert list(tmp_path.iterdir()) == []


def test_a_config_can_ask_for_warn_mode() -> None:
    from reprodl import Parameters

    assert Parameters(deterministic="warn").deterministic == "warn"
    assert Parameters(deterministic=False).deterministic is False
