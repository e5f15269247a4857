"""Issue 7, points 8 and 9: silent wrong results become clear refusals, and every user-facing
mistake is a ``reprodl.errors.*`` naming the thing and the fix (on the command line: a message
on stderr, no traceback, exit code 2, or 1 for a training that diverged)."""

from __future__ import annotations

import errno
import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from conftest import snapshot
from torch import nn
from train_fixtures import (
    INIT_PARAMS,
    digits_config,
    item_file,
    path_of,
    rewrite_model,
    train_digits,
)

from reprodl.errors import (
    DatasetFormatError,
    ExitCode,
    InputDataError,
    MetadataError,
    ParametersError,
    ReprodlError,
    ReproductionError,
    StorageError,
    TrainingDivergedError,
)

pytest_plugins = ["train_fixtures"]


def _refused(result: Any, match: str, *, code: int = ExitCode.USAGE) -> None:
    """The command failed cleanly: its exit code, 'Error:' and ``match`` on stderr, no traceback."""
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert "Error:" in result.stderr and match in result.stderr, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception


def _write_config(tmp_path: Path, cfg: dict[str, Any]) -> Path:
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _save(path: Path, array: np.ndarray) -> Path:
    np.save(path, array, allow_pickle=False)
    return path


# ======================================================================================
# Point 8: silent wrong results become clear refusals
# ======================================================================================


def test_a_misspelt_params_key_is_refused_with_the_closest_name(cli, tmp_path, digits_split_uri):
    from reprodl.training.config import load_config

    cfg = digits_config(digits_split_uri, tmp_path / "models", lerning_rate=0.5)
    with pytest.raises(ParametersError, match=r"'lerning_rate' \(did you mean 'learning_rate'\?\).*params\.user"):
        load_config(cfg)
    _refused(cli("train", _write_config(tmp_path, cfg)), "did you mean 'learning_rate'?")
    assert not (tmp_path / "models").exists()


def test_values_for_the_users_code_go_under_params_user_and_are_recorded(tmp_path, digits_split_uri):
    from reprodl.training.config import build_and_train, load_config

    (tmp_path / "models").mkdir()
    cfg = digits_config(digits_split_uri, tmp_path / "models", user={"dropout": 0.1, "note": "baseline"})
    _, record = build_and_train(load_config(cfg), progress=False)
    assert record.training.params["user"] == {"dropout": 0.1, "note": "baseline"}
    assert record.training.params["allow_nonfinite_loss"] is False


@pytest.mark.parametrize("lr", [float("nan"), float("inf"), -0.05, 0.0])
def test_a_learning_rate_that_is_not_finite_and_positive_is_refused(lr):
    from reprodl import Parameters

    with pytest.raises(ParametersError, match="learning_rate"):
        Parameters(learning_rate=lr)


@pytest.mark.parametrize("value", ["-0.1", "0", ".nan", ".inf"])
def test_the_cli_refuses_a_bad_learning_rate_before_training(cli, tmp_path, digits_split_uri, value):
    (tmp_path / "models").mkdir()
    config = _write_config(tmp_path, digits_config(digits_split_uri, tmp_path / "models"))
    _refused(cli("train", config, "--set", f"lr={value}"), "learning_rate")
    assert snapshot(tmp_path / "models") == []


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_data_is_refused_at_creation(base_dir, bad):
    from reprodl.data.creators import create_from_arrays

    data = np.ones((4, 6), dtype=np.float32)
    data[2, 3] = bad
    with pytest.raises(InputDataError, match=r"non-finite value\(s\).*row 2"):
        create_from_arrays(data, np.array([0, 1, 0, 1]), str(base_dir), "bad")
    assert snapshot(base_dir) == []


def test_non_finite_labels_are_refused_at_creation(base_dir):
    from reprodl.data.creators import create_from_arrays

    with pytest.raises(InputDataError, match=r"labels hold 1 non-finite value\(s\).*row 1"):
        create_from_arrays(np.ones((3, 4)), np.array([0.0, np.nan, 1.0]), str(base_dir), "bad")
    assert snapshot(base_dir) == []


def test_fractional_labels_are_refused_and_whole_float_labels_kept(base_dir):
    from reprodl import TensorDataSet
    from reprodl.data.creators import create_from_arrays

    with pytest.raises(InputDataError, match=r"whole numbers.*row 2 has 0\.5"):
        create_from_arrays(np.ones((3, 4)), np.array([0.0, 1.0, 0.5]), str(base_dir), "bad")
    uri = create_from_arrays(np.ones((3, 4)), np.array([0.0, 1.0, 1.0]), str(base_dir), "ok")
    assert TensorDataSet(uri).labels.tolist() == [0, 1, 1]


def test_complex_data_is_refused_at_creation(base_dir):
    from reprodl.data.creators import create_from_arrays

    with pytest.raises(InputDataError, match="complex dtype complex128"):
        create_from_arrays(np.ones((3, 4), dtype=complex), np.array([0, 1, 0]), str(base_dir), "bad")


@pytest.mark.parametrize("scale", [0.0, -255.0, float("nan")])
def test_a_value_scale_that_cannot_divide_is_refused(base_dir, scale):
    from reprodl.data.creators import create_from_arrays

    with pytest.raises(InputDataError, match="value_scale"):
        create_from_arrays(np.ones((3, 4)), np.array([0, 1, 0]), str(base_dir), "bad", value_scale=scale)


@pytest.mark.parametrize("text", ["-1e-5", "atol=1e-5,rtol=-1", "metric=nan", "agreement=1.5"])
def test_a_negative_or_non_finite_tolerance_is_refused(cli, tmp_path, text):
    from reprodl import reproduce
    from reprodl.reproduction.compare import Tolerance

    with pytest.raises(ReproductionError, match="tolerance"):
        Tolerance.parse(text)
    with pytest.raises(ReproductionError, match="tolerance atol should be a finite number >= 0"):
        reproduce(str(tmp_path / "no-model"), tolerance=-1.0)  # refused before the URI is opened
    _refused(cli("reproduce", tmp_path / "no-model", f"--tolerance={text}"), "tolerance")


class _NaNAfter(nn.Module):
    """NLLLoss, except that call ``n`` (1-based) and later return NaN."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n, self.calls = n, 0
        self.loss = nn.NLLLoss()

    def forward(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        loss = self.loss(out, y)
        return loss * float("nan") if self.calls >= self.n else loss


def test_a_training_whose_loss_becomes_nan_stops_and_writes_no_model(tmp_path, digits_split_uri):
    base = tmp_path / "models"
    base.mkdir()
    with pytest.raises(TrainingDivergedError, match=r"loss became nan at batch 3/45 of epoch 1.*no model was written"):
        train_digits(base, "nan", digits_split_uri, loss_fn=_NaNAfter(3), valid=False)
    assert snapshot(base) == []
    assert issubclass(TrainingDivergedError, ArithmeticError)


def test_a_nan_loss_is_kept_when_asked_and_recorded(tmp_path, digits_split_uri):
    base = tmp_path / "models"
    base.mkdir()
    uri, record = train_digits(
        base, "nan-kept", digits_split_uri, loss_fn=_NaNAfter(3), valid=False, allow_nonfinite_loss=True
    )
    assert path_of(uri).is_dir()
    assert record.training.params["allow_nonfinite_loss"] is True


def test_the_cli_reports_a_diverged_training_without_a_traceback(cli, tmp_path, digits_split_uri):
    (tmp_path / "models").mkdir()
    config = _write_config(tmp_path, digits_config(digits_split_uri, tmp_path / "models"))
    result = cli("train", config, "--set", "lr=1e30", "--quiet")
    _refused(result, "diverged", code=ExitCode.FAILED)
    assert "allow_nonfinite_loss" in result.stderr
    assert snapshot(tmp_path / "models") == []


# ======================================================================================
# Point 9: clear errors, not tracebacks
# ======================================================================================


@pytest.mark.parametrize(
    "optimizer, match",
    [
        ({"class": "SGD", "mommentum": 0.9}, "'mommentum' (did you mean 'momentum'?)"),
        ({"class": "SGD", "momentum": "x"}, "the config's optimizer cannot build torch.optim.sgd.SGD"),
        ({"class": "SGD", "lr": -1.0}, "Invalid learning rate"),
    ],
)
def test_a_wrong_optimiser_keyword_is_a_clear_error(cli, tmp_path, digits_split_uri, optimizer, match):
    (tmp_path / "models").mkdir()
    cfg = digits_config(digits_split_uri, tmp_path / "models")
    cfg["optimizer"] = optimizer
    _refused(cli("train", _write_config(tmp_path, cfg), "--quiet"), match)
    assert snapshot(tmp_path / "models") == []


def test_a_wrong_loss_keyword_is_a_clear_error(cli, tmp_path, digits_split_uri):
    (tmp_path / "models").mkdir()
    cfg = digits_config(digits_split_uri, tmp_path / "models")
    cfg["loss"] = {"class": "NLLLoss", "reducton": "sum"}
    _refused(cli("train", _write_config(tmp_path, cfg), "--quiet"), "'reducton' (did you mean 'reduction'?)")


def _enospc(*args: Any, **kwargs: Any) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/full/disk/item")


def test_a_full_disk_while_creating_a_dataset_is_a_clear_error(cli, tmp_path, base_dir, monkeypatch):
    from reprodl.store.create import DatasetWriter

    _save(tmp_path / "x.npy", np.ones((4, 6), dtype=np.uint8))
    _save(tmp_path / "y.npy", np.array([0, 1, 0, 1]))
    monkeypatch.setattr(DatasetWriter, "put_item", _enospc)
    result = cli("dataset", "create-from-arrays", tmp_path / "x.npy", tmp_path / "y.npy", base_dir, "arr")
    _refused(result, "No space left on device (/full/disk/item). Nothing was kept; free some space")
    assert snapshot(base_dir) == []
    assert issubclass(StorageError, OSError)


def test_a_full_disk_while_training_is_a_clear_error(tmp_path, digits_split_uri, monkeypatch):
    import safetensors.torch

    base = tmp_path / "models"
    base.mkdir()
    monkeypatch.setattr(safetensors.torch, "save_file", _enospc)
    with pytest.raises(StorageError, match="could not write the dataset 'full'.*No space left on device"):
        train_digits(base, "full", digits_split_uri, valid=False)
    assert snapshot(base) == []


def test_a_read_only_filesystem_for_the_output_is_a_clear_error(cli, tmp_path, base_dir, monkeypatch):
    from reprodl.store import staging

    def read_only(*args: Any, **kwargs: Any) -> str:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(base_dir))

    monkeypatch.setattr(staging.tempfile, "mkdtemp", read_only)
    _refused(cli("dataset", "create-digits", base_dir, "digits"), "Read-only file system")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes to read-only directories")
def test_a_read_only_output_directory_is_a_clear_error(cli, base_dir):
    base_dir.chmod(0o555)
    try:
        _refused(cli("dataset", "create-digits", base_dir, "digits"), "permission denied")
    finally:
        base_dir.chmod(0o755)


def test_a_read_only_dataset_is_a_clear_error(cli, digits_uri, monkeypatch):
    from reprodl.store.brokers import _dtoolcore

    def denied(self: Any, name: str, value: Any) -> None:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), f"{digits_uri}/.dtool/annotations/{name}.json")

    monkeypatch.setattr(_dtoolcore().DataSet, "put_annotation", denied)
    _refused(
        cli("dataset", "split", digits_uri, "--test", "0.2"),
        "could not write the annotation 'reprodl.usetype' of dataset 'digits'",
    )


@pytest.fixture(scope="module")
def stored_init_model(digits_split_master, tmp_path_factory) -> str:
    """A model whose starting weights are stored (they come from no seeded constructor)."""
    from reprodl import GenNet

    torch.manual_seed(5)
    net = GenNet(**INIT_PARAMS)
    with torch.no_grad():
        next(net.parameters()).add_(0.01)
    uri, record = train_digits(
        tmp_path_factory.mktemp("stored"), "stored-init", digits_split_master, model=net, valid=False
    )
    assert record.architecture.initialisation == "stored"
    return uri


@pytest.mark.parametrize(
    "damage, match",
    [
        ("drop", "has no initial.safetensors item"),
        ("garbage", "initial.safetensors is not a valid safetensors file"),
    ],
)
def test_a_missing_or_corrupt_initial_weights_file_is_a_clear_error(cli, tmp_path, stored_init_model, damage, match):
    from reprodl import reproduce

    if damage == "drop":
        uri = rewrite_model(stored_init_model, tmp_path, "damaged", drop=("initial.safetensors",))
    else:
        uri = rewrite_model(stored_init_model, tmp_path, "damaged", replace={"initial.safetensors": b"garbage!" * 4})
    with pytest.raises(ReproductionError, match=match):
        reproduce(uri)
    _refused(cli("reproduce", uri, "--quiet"), match)


def test_an_initial_weights_file_deleted_on_disk_is_a_clear_error(tmp_path, stored_init_model):
    from reprodl import reproduce

    uri = rewrite_model(stored_init_model, tmp_path, "deleted")
    item_file(uri, "initial.safetensors").unlink()
    with pytest.raises(ReproductionError, match="initial.safetensors is missing on disk"):
        reproduce(uri)


def test_a_negative_label_is_a_clear_error(cli, tmp_path, base_dir):
    _save(tmp_path / "x.npy", np.ones((4, 6), dtype=np.uint8))
    _save(tmp_path / "y.npy", np.array([0, 1, -1, 1]))
    _refused(
        cli("dataset", "create-from-arrays", tmp_path / "x.npy", tmp_path / "y.npy", base_dir, "neg"),
        "labels must be >= 0 (class indices 0..K-1), but row 2 has -1",
    )
    assert snapshot(base_dir) == []


def test_a_missing_image_file_is_called_missing(cli, image_uri, tmp_path):
    from reprodl.data.images import open_image

    with pytest.raises(InputDataError, match="no such image file"):
        open_image(tmp_path / "nowhere.png")
    item_file(image_uri, "bee/0.png").unlink()
    result = cli("dataset", "stats", image_uri, "--quiet")
    _refused(result, "no such image file")
    assert "corrupt" not in result.stderr


@pytest.mark.parametrize(
    "header",
    [
        struct.pack(">HBB", 0, 0x08, 3) + struct.pack(">3I", 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF),  # 2^96 bytes
        struct.pack(">HBB", 0, 0x08, 3) + struct.pack(">3I", 2**21, 2**21, 2**22),  # 2^64: wraps to 0 in int64
        struct.pack(">HBB", 0, 0x08, 200) + b"\x00\x00",  # 200 dimensions in a 6-byte file
    ],
)
def test_an_idx_header_whose_size_overflows_is_a_clear_error(cli, tmp_path, base_dir, header):
    from reprodl.data.creators import read_idx

    path = tmp_path / "images.idx"
    path.write_bytes(header)
    with pytest.raises(InputDataError, match="truncated"):
        read_idx(path)
    _refused(cli("dataset", "create-from-idx", path, path, base_dir, "idx"), "truncated")


def test_an_empty_split_is_a_clear_error(cli, tmp_path, base_dir):
    from reprodl import TensorDataSet
    from reprodl.data.creators import create_from_arrays
    from reprodl.data.ops import split_dataset

    uri = create_from_arrays(np.ones((3, 4), dtype=np.uint8), np.array([0, 1, 2]), str(base_dir), "three")
    with pytest.raises(ParametersError, match="would leave test with no samples"):
        split_dataset(uri, test=0.2)  # round(1 * 0.2) == 0 per class
    _refused(cli("dataset", "split", uri, "--test", "0.9"), "would leave train with no samples")
    with pytest.raises(DatasetFormatError, match="selects no samples of usetype 'train'"):
        TensorDataSet(uri, "train", split={"test": 0.9})
    cfg = {
        "name": "m",
        "output": str(base_dir),
        "data": {"train": {"uri": uri, "usetype": "train", "split": {"test": 0.9}}},
        "model": {"class": "GenNet", "init_params": {"input_channels": 1, "input_dim": 2}},
    }
    _refused(cli("train", _write_config(tmp_path, cfg), "--quiet"), "selects no samples")


def test_training_on_a_dataset_with_no_samples_is_refused(tmp_path, base_dir):
    from reprodl import (
        DerivedDataSet,
        GenNet,
        Parameters,
        TensorDataSet,
        train_model_with_metadata_capture,
    )
    from reprodl.data.creators import create_from_arrays

    uri = create_from_arrays(
        np.ones((0, 64), dtype=np.uint8),
        np.zeros(0, dtype=np.int64),
        str(base_dir),
        "empty",
        image_dimensions=[1, 8, 8],
    )
    ds = TensorDataSet(uri)
    net = GenNet(**INIT_PARAMS)
    with (
        pytest.raises(ParametersError, match="the train dataset empty .* has no samples"),
        DerivedDataSet(str(tmp_path), "m", ds) as out,
    ):
        train_model_with_metadata_capture(
            net,
            ds,
            torch.optim.SGD(net.parameters(), lr=0.1),
            nn.NLLLoss(),
            Parameters(init_params=INIT_PARAMS),
            out,
            progress=False,
        )
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(
    "text, match", [("name: [unclosed\n", "is not valid YAML"), ("- just\n- a list\n", "is a list, not a YAML mapping")]
)
def test_an_invalid_stored_readme_is_a_metadata_error_naming_the_dataset(cli, digits_uri, text, match):
    from reprodl import TensorDataSet
    from reprodl.store import open_dataset

    (Path(digits_uri) / "README.yml").write_text(text)
    with pytest.raises(MetadataError, match=f"README.yml of dataset 'digits' .*{match}"):
        open_dataset(digits_uri).readme()
    with pytest.raises(MetadataError, match="dtool readme edit"):
        TensorDataSet(digits_uri, usetype="train")  # no split: the README's usetype is read
    _refused(cli("dataset", "info", digits_uri), "README.yml of dataset 'digits'")


def test_every_error_here_is_a_reprodl_error_with_its_builtin():
    for cls, builtin in [
        (TrainingDivergedError, ArithmeticError),
        (StorageError, OSError),
        (MetadataError, ValueError),
        (ParametersError, ValueError),
    ]:
        assert issubclass(cls, ReprodlError) and issubclass(cls, builtin)
    assert json.dumps(int(TrainingDivergedError.exit_code)) == "1"
