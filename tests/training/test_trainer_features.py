"""The built-in trainer drops nothing silently: clipping, accumulation, per-batch schedulers,
functional losses and schedulers it cannot record are handled, recorded and reproduced, and
a parameter it would not use is refused (issue 9, "The built-in trainer stops dropping things")."""

from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn.functional as F
from train_fixtures import N_TRAIN, digits_config, train_digits

from reprodl.errors import ParametersError
from reprodl.reproduction.rerun import reproduce

pytest_plugins = ["train_fixtures"]


def _norm_recorder() -> tuple[list[float], object]:
    """(the total gradient norms seen before each optimiser step, a scheduler-less optimiser factory)."""
    norms: list[float] = []

    def optimiser(net: torch.nn.Module, params: object) -> torch.optim.Optimizer:
        opt = torch.optim.SGD(net.parameters(), lr=0.05)

        def pre_hook(optimizer: torch.optim.Optimizer, args: object, kwargs: object) -> None:
            grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
            norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))

        opt.register_step_pre_hook(pre_hook)
        return opt

    return norms, optimiser


def test_gradient_clipping_by_norm_bounds_the_norm_each_step_sees(digits_split_master, tmp_path):
    free, optimiser = _norm_recorder()
    train_digits(tmp_path, "free", digits_split_master, valid=False, optimiser=optimiser)
    clipped, optimiser = _norm_recorder()
    _, record = train_digits(
        tmp_path, "clip", digits_split_master, valid=False, optimiser=optimiser, grad_clip_norm=0.1
    )
    assert max(free) > 0.5  # without clipping the norm goes well above the bound
    assert max(clipped) <= 0.1 + 1e-5
    assert record.training.params["grad_clip_norm"] == 0.1


def test_gradient_clipping_by_value_and_accumulation_reproduce_identical(digits_split_master, tmp_path):
    uri, record = train_digits(
        tmp_path, "clipvalue", digits_split_master, valid=False, grad_clip_value=0.01, accumulation_steps=4
    )
    assert (record.training.params["grad_clip_value"], record.training.params["accumulation_steps"]) == (0.01, 4)
    assert reproduce(uri).verdict == "identical"


def test_accumulation_steps_the_optimiser_once_per_k_batches(digits_split_master, tmp_path):
    n_batches = math.ceil(N_TRAIN / 32)
    _, plain = train_digits(tmp_path, "plain", digits_split_master, valid=False, n_epochs=2)
    _, accumulated = train_digits(tmp_path, "acc", digits_split_master, valid=False, n_epochs=2, accumulation_steps=3)
    assert plain.training.optimizer_steps == 2 * n_batches
    assert accumulated.training.optimizer_steps == 2 * math.ceil(n_batches / 3)  # the last, short group steps too


def test_one_cycle_per_batch_trains_is_recorded_and_reproduces_identical(digits_split_master, tmp_path):
    steps = math.ceil(N_TRAIN / 32)
    lrs: list[float] = []

    def scheduler(opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.OneCycleLR:
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, epochs=2, steps_per_epoch=steps)
        opt.register_step_pre_hook(lambda o, a, k: lrs.append(o.param_groups[0]["lr"]))
        return sched

    uri, record = train_digits(
        tmp_path,
        "onecycle",
        digits_split_master,
        valid=False,
        n_epochs=2,
        scheduler=scheduler,
        scheduler_interval="step",
    )
    assert len(set(lrs)) == 2 * steps  # a new learning rate for every batch
    assert max(lrs) == pytest.approx(0.1, rel=1e-3)
    args = record.training.scheduler.args
    assert (args["max_lr"], args["total_steps"]) == (0.1, 2 * steps)
    report = reproduce(uri)
    assert report.verdict == "identical", report.reasons


def test_one_cycle_per_batch_from_a_config_reproduces_identical(digits_split_master, tmp_path):
    from reprodl.training.config import build_and_train, load_config

    cfg = digits_config(digits_split_master, tmp_path, name="onecycle-config")
    cfg["scheduler"] = {"class": "OneCycleLR", "interval": "step", "max_lr": 0.1, "epochs": 1, "steps_per_epoch": 45}
    uri, record = build_and_train(load_config(cfg), progress=False)
    assert record.training.params["scheduler_interval"] == "step"
    assert {"max_lr": 0.1, "epochs": 1, "steps_per_epoch": 45}.items() <= record.training.scheduler.args.items()
    assert reproduce(uri).verdict == "identical"


def test_a_scheduler_whose_arguments_cannot_be_read_back_is_refused_before_training(digits_split_master, tmp_path):
    with pytest.raises(ParametersError, match="lr_lambda"):
        train_digits(
            tmp_path,
            "lambda",
            digits_split_master,
            valid=False,
            scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda=lambda e: 0.9**e),
        )
    assert not (tmp_path / "lambda").exists()


@pytest.mark.parametrize(
    "loss_fn", [F.nll_loss, functools.partial(F.nll_loss, reduction="mean")], ids=["function", "partial"]
)
def test_a_functional_loss_is_recorded_by_its_path_and_reproduces_identical(digits_split_master, tmp_path, loss_fn):
    uri, record = train_digits(tmp_path, "functional", digits_split_master, valid=False, loss_fn=loss_fn)
    assert (record.training.loss.module, record.training.loss.class_name) == ("torch.nn.functional", "nll_loss")
    assert reproduce(uri).verdict == "identical"


def test_a_functional_loss_in_a_config_trains(digits_split_master, tmp_path):
    from reprodl.training.config import build_and_train, load_config

    cfg = digits_config(digits_split_master, tmp_path, name="functional-config")
    cfg["loss"] = {"class": "torch.nn.functional.nll_loss"}
    _, record = build_and_train(load_config(cfg), progress=False)
    assert record.training.loss.class_name == "nll_loss"


def test_a_loss_function_no_record_could_rebuild_is_refused_before_training(digits_split_master, tmp_path):
    with pytest.raises(ParametersError, match="cannot be rebuilt from a record"):
        train_digits(tmp_path, "mine", digits_split_master, valid=False, loss_fn=lambda out, y: F.nll_loss(out, y))


def test_a_parameter_the_trainer_does_not_use_is_refused_with_the_closest_name(digits_split_master, tmp_path):
    with pytest.raises(ParametersError, match=r"'dry_run'.*user=") as info:
        train_digits(tmp_path, "dry", digits_split_master, valid=False, dry_run=True)
    with pytest.raises(ParametersError, match=r"'grad_clip' \(did you mean 'grad_clip_norm'\?\)"):
        train_digits(tmp_path, "typo", digits_split_master, valid=False, grad_clip=1.0)
    assert "dry_run" in str(info.value)
    _, record = train_digits(tmp_path, "user", digits_split_master, valid=False, user={"dry_run": True})
    assert record.training.params["user"] == {"dry_run": True}


def test_a_taken_name_says_how_to_pick_a_new_one_and_auto_numbers_the_run(cli, digits_split_master, tmp_path):
    import yaml

    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(digits_config(digits_split_master, tmp_path / "models", name="digits-cnn")))
    (tmp_path / "models").mkdir()
    assert cli("train", config, "--quiet").exit_code == 0
    again = cli("train", config, "--quiet")
    assert again.exit_code != 0
    message = " ".join((again.stdout + again.stderr).split())
    assert "'digits-cnn' already exists" in message and "--set name=digits-cnn-2" in message
    assert "--name-suffix auto" in message and "Traceback" not in message
    numbered = cli("train", config, "--quiet", "--name-suffix", "auto")
    assert numbered.exit_code == 0, numbered.stderr
    assert (tmp_path / "models" / "digits-cnn-2").is_dir()


SCRIPT = """
import sys
import torch
from torch import nn
from torch.nn import functional as F
from reprodl import DerivedDataSet, Parameters, TensorDataSet, train_model_with_metadata_capture

WIDTH = 16


class Net(nn.Module):
    def __init__(self, input_dim: int = 8) -> None:
        super().__init__()
        self.fc1 = nn.Linear(input_dim * input_dim, WIDTH)
        self.fc2 = nn.Linear(WIDTH, 10)

    def forward(self, x):
        return F.log_softmax(self.fc2(torch.relu(self.fc1(torch.flatten(x, 1)))), dim=1)


if __name__ == "__main__":
    data, base = sys.argv[1], sys.argv[2]
    params = Parameters(batch_size=64, n_epochs=1, init_params={"input_dim": 8})
    torch.manual_seed(0)
    model = Net(**params.init_params)
    train = TensorDataSet(data, usetype="train")
    with DerivedDataSet(base, "script-net", train) as out:
        train_model_with_metadata_capture(
            model, train, torch.optim.SGD(model.parameters(), lr=0.1), F.nll_loss, params, out, progress=False
        )
    print(out.uri)
"""


def test_a_model_class_of_the_training_script_is_passed_never_imported_from_the_record(digits_split_master, tmp_path):
    import os
    import subprocess
    import sys

    from reprodl import TrainedTorchModel
    from reprodl.errors import UnsafeImportError

    script = tmp_path / "train_script.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    run = subprocess.run(
        [sys.executable, str(script), digits_split_master, str(tmp_path)], capture_output=True, text=True, env=env
    )
    assert run.returncode == 0, run.stderr
    uri = run.stdout.strip().splitlines()[-1]
    for allow in ([], ["__main__"]):  # the stored script is never executed, allowed or not
        with pytest.raises(UnsafeImportError, match=r"'__main__:Net'.*model_class=Net.*--trust-code"):
            TrainedTorchModel(uri, allow=allow)
        with pytest.raises(UnsafeImportError, match=r"'__main__:Net'.*model_class=Net"):
            reproduce(uri, allow=allow)
    namespace: dict[str, object] = {"__name__": "users_copy_of_the_script"}
    exec(compile(SCRIPT, str(script), "exec"), namespace)  # the user's own choice: their copy of the class
    net = namespace["Net"]
    assert isinstance(net, type)
    model = TrainedTorchModel(uri, model_class=net)
    assert type(model.model).__name__ == "Net" and model.model.fc1.out_features == 16
    assert model.predict(torch.zeros(2, 1, 8, 8)).shape == (2,)
    assert reproduce(uri, model_class=net).verdict == "identical"
