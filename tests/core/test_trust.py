"""The trust policy (reprodl.trust): every recorded name that becomes an object goes through it.

The attacks are those of someone who edits a model's record and reseals it (the record digest
is a self-digest anyone can recompute): names that walk attributes out of a trusted module
into ``os.system``, called with recorded keyword arguments. Each vector goes through every
entry point: the Python API, each CLI command, a model served over http://, and a config's
``parent:``. A marker file shows whether the payload ran.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

pytest.register_assert_rewrite("train_fixtures")

from remote_servers import *  # noqa: F403 - the server fixtures
from remote_servers import HTTPServer
from train_fixtures import *  # noqa: F403 - fixtures
from train_fixtures import TinyNet, TrainedModel, digits_config, rewrite_model

from reprodl import TrainedTorchModel, reproduce, trust
from reprodl.errors import ModelLoadError, UnsafeImportError
from reprodl.modeldataset.verify import verify_model

# Paths that walk from a trusted module to os.system (reprodl.zoo imports torch, torch imports os).
ARCH_WALK = "reprodl.zoo:torch.os.system"
OPTIMIZER_WALK = ("torch.optim.sgd", "torch.os.system")
LOSS_WALK = ("torch.nn.modules.loss", "F.torch.os.system")
SCHEDULER_WALK = ("torch.optim", "swa_utils.torch.os.system")


def _payload(mark: Path) -> str:
    return f"touch {mark}"


def _hostile(trained: TrainedModel, base: Path, name: str, mark: Path, vector: str) -> str:
    """A resealed copy of the trained model whose record names ``os.system`` through ``vector``."""

    def edit(raw: dict[str, Any]) -> None:
        if vector == "architecture":
            raw["architecture"]["import_path"] = ARCH_WALK
            raw["architecture"]["init_params"] = {"command": _payload(mark)}
        elif vector == "optimizer":
            raw["training"]["optimizer"]["module"], raw["training"]["optimizer"]["class_name"] = OPTIMIZER_WALK
        elif vector == "loss":
            module, cls = LOSS_WALK
            raw["training"]["loss"] = {"module": module, "class_name": cls, "args": {"command": _payload(mark)}}
        elif vector == "scheduler":
            module, cls = SCHEDULER_WALK
            raw["training"]["scheduler"] = {"module": module, "class_name": cls, "args": {"command": _payload(mark)}}
        else:  # pragma: no cover - a typo in a test
            raise ValueError(vector)

    return rewrite_model(trained.uri, base, name, edit=edit)


VECTORS = ["architecture", "optimizer", "loss", "scheduler"]


# --- the policy itself ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "path,kind",
    [
        (ARCH_WALK, trust.Kind.ARCHITECTURE),
        ("reprodl.zoo:torch.nn.Module", trust.Kind.ARCHITECTURE),
        ("reprodl:zoo.GenNet", trust.Kind.ARCHITECTURE),
        ("torch.optim:swa_utils.torch.os.system", trust.Kind.OPTIMIZER),
        ("torch.optim.sgd:Tensor", trust.Kind.OPTIMIZER),
        ("torch.optim:Optimizer.__init__.__globals__", trust.Kind.OPTIMIZER),
        ("torch.nn.modules.loss:F.nll_loss", trust.Kind.LOSS),
        ("torch.nn:Module", trust.Kind.LOSS),
        ("torch.nn:Linear", trust.Kind.LOSS),
        ("torch.optim:SGD", trust.Kind.SCHEDULER),
        ("torch.optim.lr_scheduler:StepLR", trust.Kind.OPTIMIZER),
        ("os:system", trust.Kind.OPTIMIZER),
        ("subprocess:Popen", trust.Kind.ARCHITECTURE),
        ("torch.utils.cpp_extension:load_inline", trust.Kind.ARCHITECTURE),
        ("reprodl.data.transforms:inspect.os.system", trust.Kind.TRANSFORM),
        ("reprodl.zoo:GenNet", trust.Kind.OPTIMIZER),
        ("", trust.Kind.ARCHITECTURE),
        ("reprodl.zoo:Gen Net", trust.Kind.ARCHITECTURE),
        ("reprodl.zoo:" + "A" * 400, trust.Kind.ARCHITECTURE),
    ],
)
def test_names_that_walk_out_or_are_the_wrong_kind_are_refused(path: str, kind: trust.Kind) -> None:
    with pytest.raises(UnsafeImportError):
        trust.resolve(path, kind)
    assert trust.refusal(path, kind) is not None


@pytest.mark.parametrize(
    "path,kind,name",
    [
        ("reprodl.zoo:GenNet", trust.Kind.ARCHITECTURE, "GenNet"),
        ("torch.optim:SGD", trust.Kind.OPTIMIZER, "SGD"),
        ("torch.optim.sgd:SGD", trust.Kind.OPTIMIZER, "SGD"),
        ("torch.optim.SGD", trust.Kind.OPTIMIZER, "SGD"),
        ("torch.optim.lr_scheduler:ReduceLROnPlateau", trust.Kind.SCHEDULER, "ReduceLROnPlateau"),
        ("torch.nn:CrossEntropyLoss", trust.Kind.LOSS, "CrossEntropyLoss"),
        ("torch.nn.modules.loss:NLLLoss", trust.Kind.LOSS, "NLLLoss"),
        ("torch.nn.functional:nll_loss", trust.Kind.LOSS, "nll_loss"),
        ("reprodl.data.transforms:Normalize", trust.Kind.TRANSFORM, "Normalize"),
    ],
)
def test_trusted_names_resolve(path: str, kind: trust.Kind, name: str) -> None:
    assert trust.resolve(path, kind).__name__ == name


def test_user_allow_lists_follow_the_same_rules() -> None:
    path = f"{TinyNet.__module__}:TinyNet"
    with pytest.raises(UnsafeImportError, match="allow="):
        trust.resolve(path, trust.Kind.ARCHITECTURE)
    assert trust.resolve(path, trust.Kind.ARCHITECTURE, allow=[TinyNet.__module__]) is TinyNet
    assert trust.resolve(path, trust.Kind.ARCHITECTURE, allow=[path]) is TinyNet
    # Allowing the test module does not open what it imported (torch, os...).
    with pytest.raises(UnsafeImportError, match="walks through the module"):
        trust.resolve(f"{TinyNet.__module__}:torch.os.system", trust.Kind.ARCHITECTURE, allow=[TinyNet.__module__])
    with pytest.raises(UnsafeImportError, match="defined outside"):
        trust.resolve(f"{TinyNet.__module__}:Path", trust.Kind.ARCHITECTURE, allow=[TinyNet.__module__])
    # An exact allow entry trusts that class only.
    with pytest.raises(UnsafeImportError):
        trust.resolve(f"{TinyNet.__module__}:TrainedModel", trust.Kind.ARCHITECTURE, allow=[path])


def test_a_module_outside_the_policy_is_never_imported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mark = tmp_path / "imported"
    (tmp_path / "evil_module_for_trust_test.py").write_text(f"open({str(mark)!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UnsafeImportError, match="not from a trusted module"):
        trust.resolve("evil_module_for_trust_test:Net", trust.Kind.ARCHITECTURE)
    assert not mark.exists()


def test_a_trusted_module_that_is_missing_names_it() -> None:
    with pytest.raises(ModelLoadError, match="has no"):
        trust.resolve("reprodl.zoo:NoSuchNet", trust.Kind.ARCHITECTURE)


# --- every entry point refuses every vector ---------------------------------------------------
@pytest.mark.parametrize("vector", VECTORS)
def test_reproduce_refuses_each_vector(vector: str, trained_model: TrainedModel, tmp_path: Path) -> None:
    mark = tmp_path / "pwned"
    uri = _hostile(trained_model, tmp_path, f"hostile-{vector}", mark, vector)
    with pytest.raises(UnsafeImportError):
        reproduce(uri, output=str(tmp_path / "out"))
    assert not mark.exists()


def test_loading_refuses_an_architecture_walk(trained_model: TrainedModel, tmp_path: Path) -> None:
    mark = tmp_path / "pwned"
    uri = _hostile(trained_model, tmp_path, "hostile", mark, "architecture")
    with pytest.raises(UnsafeImportError, match="walks through the module"):
        TrainedTorchModel(uri)
    # Even allowing the zoo explicitly does not let the walk out of it.
    with pytest.raises(UnsafeImportError):
        TrainedTorchModel(uri, allow=["reprodl.zoo"])
    assert not mark.exists()


@pytest.mark.parametrize("command", ["predict", "evaluate", "reproduce"])
def test_cli_refuses_the_architecture_walk(command: str, trained_model: TrainedModel, tmp_path: Path, cli: Any) -> None:
    mark = tmp_path / "pwned"
    uri = _hostile(trained_model, tmp_path, "hostile", mark, "architecture")
    image = tmp_path / "digit.png"
    from PIL import Image

    Image.new("L", (8, 8)).save(image)
    args = {
        "predict": [uri, str(image)],
        "evaluate": [uri, trained_model.data_uri],
        "reproduce": [uri, "--output", str(tmp_path / "out")],
    }[command]
    result = cli(command, *args)
    assert result.exit_code == 2, result.output
    assert "will not import" in result.stderr or "walks through" in result.stderr
    assert "Traceback" not in result.output + result.stderr
    assert not mark.exists()


@pytest.mark.parametrize("vector", VECTORS)
def test_cli_reproduce_refuses_each_vector(vector: str, trained_model: TrainedModel, tmp_path: Path, cli: Any) -> None:
    mark = tmp_path / "pwned"
    uri = _hostile(trained_model, tmp_path, f"hostile-{vector}", mark, vector)
    result = cli("reproduce", uri, "--output", str(tmp_path / "out"))
    assert result.exit_code == 2, result.output
    assert not mark.exists()


@pytest.mark.parametrize("vector", VECTORS)
def test_verify_reports_what_will_not_be_imported(
    vector: str, trained_model: TrainedModel, tmp_path: Path, cli: Any
) -> None:
    mark = tmp_path / "pwned"
    uri = _hostile(trained_model, tmp_path, f"hostile-{vector}", mark, vector)
    result = verify_model(uri)
    assert not result.ok
    failed = [c for c in result.checks if not c.ok]
    trust_check = [c for c in failed if c.name == "recorded names pass the trust policy"]
    assert len(trust_check) == 1 and "will not be imported" in trust_check[0].detail
    out = cli("verify", uri)
    assert out.exit_code == 1
    assert "All checks passed" not in out.stdout
    assert "will not be imported" in out.stdout
    as_json = json.loads(cli("verify", uri, "--json").stdout)
    assert as_json["ok"] is False
    assert not mark.exists()


def test_verify_passes_an_honest_model_and_needs_allow_for_a_user_class(
    trained_model: TrainedModel, digits_split_uri: str, tmp_path: Path, cli: Any
) -> None:
    assert verify_model(trained_model.uri).ok
    from train_fixtures import train_digits

    uri, _ = train_digits(tmp_path, "tiny", digits_split_uri, model=TinyNet())
    result = cli("verify", uri)
    assert result.exit_code == 1 and "will not be imported" in result.stdout
    assert cli("verify", uri, "--allow", TinyNet.__module__).exit_code == 0


def test_a_served_model_with_a_walk_is_refused_over_http(
    http_server: HTTPServer, dtool_cache: Path, trained_model: TrainedModel, tmp_path: Path
) -> None:
    mark = tmp_path / "pwned"
    _hostile(trained_model, http_server.root, "hostile-served", mark, "architecture")
    with pytest.raises(UnsafeImportError):
        TrainedTorchModel(http_server.uri("hostile-served"))
    assert not verify_model(http_server.uri("hostile-served")).ok
    assert not mark.exists()


def test_fine_tuning_from_a_hostile_parent_is_refused(trained_model: TrainedModel, tmp_path: Path, cli: Any) -> None:
    mark = tmp_path / "pwned"
    (tmp_path / "models").mkdir()
    parent = _hostile(trained_model, tmp_path / "models", "hostile-parent", mark, "architecture")
    config = digits_config(trained_model.data_uri, tmp_path / "out", name="child")
    config.pop("model", None)
    config["parent"] = parent
    path = tmp_path / "child.yaml"
    path.write_text(yaml.safe_dump(config))
    result = cli("train", str(path))
    assert result.exit_code == 2, result.output
    assert "walks through" in result.stderr
    assert not mark.exists()
    assert not (tmp_path / "out" / "child").exists()


@pytest.mark.parametrize(
    "section,cls",
    [
        ("model", "torch.nn:parameter.torch.os.system"),
        ("optimizer", "torch.optim:swa_utils.torch.os.system"),
        ("loss", "torch.nn:modules.loss.torch.os.system"),
        ("scheduler", "torch.optim:swa_utils.torch.os.system"),
    ],
)
def test_a_config_cannot_name_a_walk(
    section: str, cls: str, trained_model: TrainedModel, tmp_path: Path, cli: Any
) -> None:
    mark = tmp_path / "pwned"
    config = digits_config(trained_model.data_uri, tmp_path / "out", name="walk")
    entry = dict(config.get(section) or {})
    entry["class"] = cls
    if section == "model":
        entry["init_params"] = {"command": _payload(mark)}
    config[section] = entry
    path = tmp_path / "walk.yaml"
    path.write_text(yaml.safe_dump(config))
    result = cli("train", str(path))
    assert result.exit_code == 2, result.output
    assert not mark.exists()


def test_the_zoo_still_loads_and_user_classes_need_allow(trained_model: TrainedModel) -> None:
    model = TrainedTorchModel(trained_model.uri)
    assert isinstance(model.model, torch.nn.Module)


def test_recorded_arguments_that_build_a_huge_model_are_refused_before_allocating(
    trained_model: TrainedModel, tmp_path: Path
) -> None:
    def huge(raw: dict[str, Any]) -> None:
        raw["architecture"]["init_params"]["input_dim"] = 200_000

    uri = rewrite_model(trained_model.uri, tmp_path, "huge", edit=huge)
    with pytest.raises(ModelLoadError, match="parameters"):
        TrainedTorchModel(uri)
    with pytest.raises(ModelLoadError, match="parameters"):
        reproduce(uri, output=str(tmp_path / "out"))


def test_a_record_whose_size_disagrees_with_its_arguments_is_refused(
    trained_model: TrainedModel, tmp_path: Path
) -> None:
    def bigger(raw: dict[str, Any]) -> None:
        raw["architecture"]["init_params"]["input_dim"] = 16

    uri = rewrite_model(trained_model.uri, tmp_path, "bigger", edit=bigger)
    with pytest.raises(ModelLoadError, match="the record says"):
        TrainedTorchModel(uri)


def test_unknown_recorded_arguments_are_a_clear_error(trained_model: TrainedModel, tmp_path: Path) -> None:
    def extra(raw: dict[str, Any]) -> None:
        raw["architecture"]["init_params"]["command"] = "true"

    uri = rewrite_model(trained_model.uri, tmp_path, "extra", edit=extra)
    with pytest.raises(ModelLoadError, match="cannot build"):
        TrainedTorchModel(uri)
