"""Fixtures and helpers shared by the training, model, reproduction and model-CLI tests.

Loaded by those test files with ``pytest_plugins = ["train_fixtures"]`` (``tests`` is on
``pythonpath``). Everything trains on real data: scikit-learn's 1,797 handwritten digits,
split 80/20 (stratified, seed 0), with the paper's small CNN (``GenNet``) at 8x8.

Session-scoped models and datasets are shared read-only; a test that edits one first takes
its own copy (``model_copy``, ``digits_split_uri``).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import dataclasses
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

torch.set_num_threads(1)

INIT_PARAMS = {"input_channels": 1, "input_dim": 8}
N_TRAIN, N_TEST = 1438, 359  # the stratified 80/20 split of the 1,797 digits, seed 0


class TinyNet(nn.Module):
    """A model class outside reprodl's zoo: loading it from a record needs ``allow=``."""

    def __init__(self, input_dim: int = 8, n_outputs: int = 10) -> None:
        super().__init__()
        self.fc = nn.Linear(input_dim * input_dim, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.fc(torch.flatten(x, 1)), dim=1)


def small_params(**overrides: Any) -> Any:
    """The small digits settings: batch 32, lr 0.05, one epoch, GenNet at 8x8."""
    from reprodl import Parameters

    values: dict[str, Any] = {"batch_size": 32, "learning_rate": 0.05, "n_epochs": 1, "init_params": dict(INIT_PARAMS)}
    values.update(overrides)
    return Parameters(**values)


def train_digits(
    base: str | Path,
    name: str,
    data_uri: str,
    *,
    valid: bool = True,
    model: nn.Module | None = None,
    loss_fn: Any = None,
    optimiser: Callable[[nn.Module, Any], torch.optim.Optimizer] | None = None,
    scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
    **param_overrides: Any,
) -> tuple[str, Any]:
    """Train on the train split (validating on the test split); returns (model URI, record)."""
    from reprodl import DerivedDataSet, GenNet, TensorDataSet, train_model_with_metadata_capture

    params = small_params(**param_overrides)
    train_ds = TensorDataSet(data_uri, usetype="train")
    valid_ds = TensorDataSet(data_uri, usetype="test") if valid else None
    torch.manual_seed(params.seed)
    net = model if model is not None else GenNet(**params.init_params)
    opt = (
        optimiser(net, params)
        if optimiser is not None
        else torch.optim.SGD(net.parameters(), lr=params.learning_rate, momentum=0.9)
    )
    sched = scheduler(opt) if scheduler is not None else None
    with DerivedDataSet(str(base), name, train_ds, valid=valid_ds) as out:
        record = train_model_with_metadata_capture(
            net, train_ds, opt, loss_fn or nn.NLLLoss(), params, out, scheduler=sched, progress=False
        )
    assert out.uri is not None
    return out.uri, record


def digits_config(data_uri: str, output: str | Path, *, name: str = "digits-cnn", **params: Any) -> dict[str, Any]:
    """A `reprodl train` config (as a dict) for the digits split."""
    return {
        "name": name,
        "output": str(output),
        "data": {"train": {"uri": data_uri, "usetype": "train"}, "valid": {"uri": data_uri, "usetype": "test"}},
        "model": {"class": "GenNet", "init_params": dict(INIT_PARAMS)},
        "optimizer": {"class": "SGD", "momentum": 0.9},
        "loss": {"class": "NLLLoss"},
        "params": {"batch_size": 32, "learning_rate": 0.05, "n_epochs": 1, "seed": 0, **params},
    }


def path_of(uri: str) -> Path:
    from reprodl.store import local_path

    path = local_path(uri)
    assert path is not None, uri
    return path


def item_file(uri: str, relpath: str) -> Path:
    """The file of a local dataset's item."""
    return path_of(uri) / "data" / relpath


def flip_byte(path: Path, *, offset: int = -1, keep_mtime: bool = False) -> None:
    """Change one byte of a file in place (same size); optionally put its mtime back."""
    st = path.stat()
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0xFF
    path.write_bytes(bytes(raw))
    if keep_mtime:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def rewrite_model(
    src_uri: str,
    base: str | Path,
    name: str,
    *,
    edit: Callable[[dict[str, Any]], None] | None = None,
    reseal: bool = True,
    replace: dict[str, bytes] | None = None,
    drop: tuple[str, ...] = (),
) -> str:
    """A new model dataset with the items of ``src_uri``, its record edited (and resealed).

    This is what someone who edits a copy *and* re-freezes it can make: a consistent dtool
    manifest around an edited record.
    """
    from reprodl import keys
    from reprodl.provenance import parse_record
    from reprodl.store import create_dataset, open_dataset

    src = open_dataset(src_uri)
    replace = dict(replace or {})
    if edit is not None:
        raw = json.loads(Path(src.item_path(src.identifier_of(keys.PROVENANCE_FILE))).read_text())
        edit(raw)
        record = parse_record(json.dumps(raw))
        if reseal:
            record = record.sealed()
            text = record.to_json()
        else:
            text = json.dumps(raw, indent=2)
        replace[keys.PROVENANCE_FILE] = text.encode()
    with create_dataset(str(base), name, readme=src.get_readme_content()) as writer:
        for idn in src.identifiers:
            rel = src.relpath(idn)
            if rel in drop:
                continue
            if rel in replace:
                writer.put_bytes(replace.pop(rel), rel)
            else:
                writer.put_item(src.item_path(idn), rel)
        for rel, data in replace.items():
            writer.put_bytes(data, rel)
        for ann in src.annotation_names():
            if ann != keys.RECORD_DIGEST:
                writer.put_annotation(ann, src.get_annotation(ann))
    assert writer.uri is not None
    return writer.uri


def digit_image(array: np.ndarray, *, size: int = 8, mode: str = "L") -> Any:
    """A PIL image of one 8x8 uint8 digit, scaled up (nearest) and converted to ``mode``."""
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(array.reshape(8, 8)).astype(np.uint8), "L")
    if size != 8:
        image = image.resize((size, size), Image.Resampling.NEAREST)
    return image.convert(mode)


@dataclasses.dataclass
class TrainedModel:
    uri: str
    data_uri: str
    record: Any

    @property
    def path(self) -> Path:
        return path_of(self.uri)


# --- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def digits_split_master(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The digits TensorDataSet with its stratified 80/20 split (read-only: never edit)."""
    from reprodl.data.creators import create_digits
    from reprodl.data.ops import split_dataset

    base = tmp_path_factory.mktemp("digits-split")
    uri = create_digits(str(base), "digits")
    assert split_dataset(uri, test=0.2, seed=0) == {"test": N_TEST, "train": N_TRAIN}
    return uri


@pytest.fixture
def digits_split_uri(digits_split_master: str, tmp_path: Path) -> str:
    """A private copy of the split digits dataset, safe to tamper with."""
    dest = tmp_path / "data" / "digits"
    shutil.copytree(path_of(digits_split_master), dest)  # copy2 keeps mtimes: quick verify passes
    return str(dest)


@pytest.fixture(scope="session")
def trained_model(digits_split_master: str, tmp_path_factory: pytest.TempPathFactory) -> TrainedModel:
    """GenNet trained 3 epochs (SGD lr 0.05, momentum 0.9) on the digits; read-only."""
    base = tmp_path_factory.mktemp("models")
    uri, record = train_digits(base, "digits-model", digits_split_master, n_epochs=3)
    return TrainedModel(uri=uri, data_uri=digits_split_master, record=record)


@pytest.fixture
def model_copy(trained_model: TrainedModel, tmp_path: Path) -> Path:
    """A byte-for-byte copy of the trained model's directory (same UUID), safe to edit."""
    dest = tmp_path / "copies" / "digits-model"
    shutil.copytree(trained_model.path, dest)
    return dest


@pytest.fixture
def count_host_syncs(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Count reads of floating-point tensor values into Python (``item``, ``float()``, ``tolist``...).

    On a GPU each of these waits for the device; index and label tensors (integers built
    on the host by the sampler and the dataset) are not counted.
    """
    counts = {"n": 0}
    for name in ("item", "tolist", "__float__", "__int__", "__bool__", "numpy"):
        original = getattr(torch.Tensor, name)

        def counting(self: torch.Tensor, *args: Any, _orig: Any = original, **kwargs: Any) -> Any:
            if self.is_floating_point():
                counts["n"] += 1
            return _orig(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)
    return counts
