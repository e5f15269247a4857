"""Weights compared with NumPy report what torch reports, figure for figure (``reproduction.weightdiff``).

A re-executed run's weights are read with ``safetensors.numpy`` so that ``reprodl reproduce`` needs no torch in
its own process. Each pair of state dicts here is saved as safetensors, read both ways, and compared both
ways: the report (verdicts, max abs and rel differences, NaN and inf included) is the same JSON. A dtype
NumPy lacks (bfloat16) is read with torch, and its digest is the one the record holds either way.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import safetensors.numpy
import safetensors.torch
import torch

from reprodl.errors import IntegrityError
from reprodl.modeldataset.read import load_weight_arrays
from reprodl.modeldataset.weights import arrays_sha256, state_dict_sha256
from reprodl.reproduction import weightdiff
from reprodl.reproduction.compare import Tolerance
from reprodl.reproduction.weightdiff import compare_models, saved_weights

NAN, INF = float("nan"), float("inf")


def _pairs() -> dict[str, tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(3, 4, generator=g)
    ints = torch.randint(-100, 100, (5,), generator=g)
    same = {"w": w, "b": torch.zeros(4), "n": ints, "mask": torch.tensor([True, False]), "h": w.half()}
    noisy = {**same, "w": w + 1e-6 * torch.randn(3, 4, generator=g), "h": (w + 0.01).half()}
    noisy |= {"n": ints + 3, "mask": torch.tensor([False, False]), "u": torch.tensor([255, 0], dtype=torch.uint8)}
    special_a = torch.tensor([NAN, INF, INF, -0.0, 1e-13, 1.0, -INF])
    special_b = torch.tensor([NAN, INF, 1.0, 0.0, 2e-13, NAN, INF])
    return {
        "identical": (same, {k: v.clone() for k, v in same.items()}),
        "differing": ({**same, "u": torch.tensor([0, 255], dtype=torch.uint8)}, noisy),
        "nan, inf, -0.0 and tiny values": (
            {"x": special_a, "y": torch.tensor([NAN])},
            {"x": special_b, "y": torch.tensor([NAN])},
        ),
        "within tolerance": ({"w": w}, {"w": w * (1 + 1e-6)}),
        "float64 and int8": (
            {"d": w.double(), "i": torch.tensor([-128, 127], dtype=torch.int8)},
            {"d": w.double() + 1e-12, "i": torch.tensor([127, -128], dtype=torch.int8)},
        ),
        "shapes, missing, empty and 0-dim": (
            {"w": w, "gone": w.clone(), "e": torch.zeros(0, 3), "s": torch.tensor(1.5)},
            {"w": w.reshape(4, 3), "new": w.clone(), "e": torch.zeros(0, 3), "s": torch.tensor(2.5)},
        ),
    }


def _both_ways(tmp_path: Path, state: dict[str, torch.Tensor], name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``state`` saved as safetensors, read as NumPy arrays and as torch tensors."""
    path = tmp_path / f"{name}.safetensors"
    safetensors.torch.save_file(state, path)
    return safetensors.numpy.load_file(path), safetensors.torch.load_file(path)


def _report(a: dict[str, Any], b: dict[str, Any]) -> str:
    """The comparison as ``reproduce --json`` writes it (NaN and inf spelled out, so two reports compare)."""
    return json.dumps(compare_models({"model": a}, {"model": b}, Tolerance()))


@pytest.mark.parametrize("case", list(_pairs()))
def test_numpy_and_torch_report_the_same_comparison(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    a, b = _pairs()[case]
    (a_np, a_torch), (b_np, b_torch) = _both_ways(tmp_path, a, "a"), _both_ways(tmp_path, b, "b")
    by_torch = _report(a_torch, b_torch)
    monkeypatch.setattr(weightdiff, "_torch_row", lambda *args: pytest.fail("two arrays were compared with torch"))
    assert _report(a_np, b_np) == by_torch
    verdict = json.loads(by_torch)
    assert verdict["identical"] is (case == "identical")
    assert verdict["within_tolerance"] is (case in ("identical", "within tolerance"))


def test_the_nan_figures_are_torchs(tmp_path: Path):
    """A NaN in the original: never identical (as ``torch.equal``), its differences NaN, outside tolerance."""
    a, b = _pairs()["nan, inf, -0.0 and tiny values"]
    arrays, _ = _both_ways(tmp_path, a, "a")
    tensors = {
        t["name"]: t
        for t in compare_models({"m": arrays}, {"m": _both_ways(tmp_path, b, "b")[0]}, Tolerance())["tensors"]
    }
    assert tensors["y"]["identical"] is False and tensors["y"]["within_tolerance"] is False
    assert json.dumps(tensors["y"]["max_abs_diff"]) == "NaN"


def test_two_dtypes_of_one_tensor_are_compared_as_torch_compares_them(tmp_path: Path):
    a = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)}
    b = {"w": torch.arange(6, dtype=torch.float64).reshape(2, 3)}
    (a_np, a_torch), (b_np, b_torch) = _both_ways(tmp_path, a, "a"), _both_ways(tmp_path, b, "b")
    assert _report(a_np, b_np) == _report(a_torch, b_torch)
    assert json.loads(_report(a_np, b_np))["identical"] is True  # torch.equal promotes: the same values


class _Items:
    """The few methods of a StoredDataSet that reading weights calls, over files in a folder."""

    def __init__(self, folder: Path) -> None:
        self.uri, self.folder = f"file://{folder}", folder
        self.identifiers = sorted(p.name for p in folder.iterdir())

    def relpath(self, identifier: str) -> str:
        return identifier

    def identifier_of(self, relpath: str) -> str:
        return relpath

    def item_path(self, identifier: str) -> str:
        return str(self.folder / identifier)


def _record(weights: dict[str, str]) -> Any:
    """A record's models: name -> digest of its weights in ``<name>.safetensors``."""
    models = [SimpleNamespace(name=n, weights_file=f"{n}.safetensors", weights_sha256=d) for n, d in weights.items()]
    results = SimpleNamespace(weights_sha256=None)
    return SimpleNamespace(
        models=models, results=results, model_component=lambda name: next(m for m in models if m.name == name)
    )


def test_a_bfloat16_model_is_read_with_torch_and_compared_the_same(tmp_path: Path):
    g = torch.Generator().manual_seed(1)
    w = torch.randn(4, 3, generator=g)
    original = {"w": w, "emb": w.bfloat16()}
    new = {"w": w + 1e-3, "emb": (w + 1e-2).bfloat16()}
    head = {"w": w[0]}  # a second model, all float32: read as arrays
    for folder, state in (("original", original), ("new", new)):
        (tmp_path / folder).mkdir()
        safetensors.torch.save_file(state, tmp_path / folder / "model.safetensors")
        safetensors.torch.save_file(head, tmp_path / folder / "head.safetensors")
    digests = {"model": state_dict_sha256(original), "head": state_dict_sha256(head)}
    ds = _Items(tmp_path / "original")
    assert load_weight_arrays(ds, _record(digests), model="model") is None  # no bfloat16 in NumPy

    loaded = saved_weights(ds, _record(digests))
    assert isinstance(loaded["model"]["emb"], torch.Tensor) and not isinstance(loaded["head"]["w"], torch.Tensor)
    reread = saved_weights(
        _Items(tmp_path / "new"), _record({"model": state_dict_sha256(new), "head": digests["head"]})
    )
    torch_only = {"model": original, "head": head}, {"model": new, "head": head}
    by_torch = json.dumps(compare_models(*torch_only, Tolerance()))
    assert json.dumps(compare_models(loaded, reread, Tolerance())) == by_torch
    assert json.loads(by_torch)["differing_models"] == ["model"]


def test_arrays_are_digested_as_torch_digests_their_tensors(tmp_path: Path):
    """The record's weights digest is checked on the NumPy arrays too, every dtype NumPy reads."""
    state = {
        "f64": torch.randn(2, 3, dtype=torch.float64),
        "f32": torch.randn(3),
        "f16": torch.randn(2).half(),
        "i64": torch.tensor([-(2**40), 1]),
        "i32": torch.tensor([7], dtype=torch.int32),
        "i16": torch.tensor([-3], dtype=torch.int16),
        "i8": torch.tensor([-1], dtype=torch.int8),
        "u8": torch.tensor([200], dtype=torch.uint8),
        "bool": torch.tensor([[True], [False]]),
        "empty": torch.zeros(0),
        "scalar": torch.tensor(3.0),
    }
    arrays, _ = _both_ways(tmp_path, state, "w")
    assert arrays_sha256(arrays) == state_dict_sha256(state)

    (tmp_path / "ds").mkdir()
    safetensors.torch.save_file(state, tmp_path / "ds" / "model.safetensors")
    ds = _Items(tmp_path / "ds")
    assert load_weight_arrays(ds, _record({"model": state_dict_sha256(state)}), model="model") is not None
    with pytest.raises(IntegrityError, match="the weights do not match the provenance record"):
        load_weight_arrays(ds, _record({"model": "sha256:" + "0" * 64}), model="model")
