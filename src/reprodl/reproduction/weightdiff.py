"""Comparing two models' weights, tensor by tensor: with NumPy where both sides were read as arrays, with torch
where either is a tensor.

A re-executed run is compared in the parent of the process that trained (``reprodl reproduce``), which then
needs no torch: both models' weights are read with ``safetensors.numpy`` (:func:`saved_weights`) and compared
here with the same verdicts and the same figures as the torch comparison (``np.array_equal`` is
``torch.equal``: values, NaN never equal to itself; the differences are taken in float64 or int64 by the same
IEEE operations). A dtype NumPy has no equal of (bfloat16, float8) is read with torch, and a pair of tensors of
two dtypes is compared with torch (its type promotion is the verdict's).

Example:
    >>> compare_weights({"w": np.zeros(2)}, {"w": np.ones(2)}, Tolerance())["max_abs_diff"]
    1.0
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from reprodl.modeldataset.read import load_weight_arrays, load_weights
from reprodl.provenance import ProvenanceRecord
from reprodl.reproduction.compare import Tolerance
from reprodl.store import StoredDataSet


def compare_weights(a: Mapping[str, Any], b: Mapping[str, Any], tol: Tolerance) -> dict[str, Any]:
    """Per tensor: identical, max absolute and relative difference, within ``tol``; and overall.

    A tensor is a NumPy array or a torch tensor on either side."""
    tensors: list[dict[str, Any]] = []
    identical = set(a) == set(b)
    within = identical
    for name in sorted(set(a) | set(b)):
        if name not in a or name not in b:
            tensors.append({"name": name, "missing_in": "original" if name not in a else "reproduction"})
            continue
        x, y = a[name], b[name]
        if tuple(x.shape) != tuple(y.shape):
            tensors.append({"name": name, "shape": [list(x.shape), list(y.shape)]})
            identical = within = False
            continue
        both_arrays = isinstance(x, np.ndarray) and isinstance(y, np.ndarray) and x.dtype == y.dtype
        row = _numpy_row(x, y, tol) if both_arrays else _torch_row(x, y, tol)
        identical &= row["identical"]
        within &= row["within_tolerance"]
        tensors.append({"name": name, **row})
    return {
        "identical": identical,
        "within_tolerance": within,
        "n_tensors": len(tensors),
        "n_identical": sum(1 for t in tensors if t.get("identical")),
        "max_abs_diff": max((t.get("max_abs_diff", 0.0) for t in tensors), default=0.0),
        "tensors": tensors,
    }


def _numpy_row(x: np.ndarray, y: np.ndarray, tol: Tolerance) -> dict[str, Any]:
    """:func:`_torch_row` of two arrays of one dtype, in NumPy (NaN and inf propagate as they do there)."""
    same = bool(np.array_equal(x, y))
    if np.issubdtype(x.dtype, np.floating):
        with np.errstate(all="ignore"):  # inf - inf, a NaN: the figures say so, as torch's do
            xd = x.astype(np.float64)
            diff = np.abs(xd - y.astype(np.float64))
            max_abs = float(diff.max()) if diff.size else 0.0
            max_rel = float((diff / np.maximum(np.abs(xd), 1e-12)).max()) if diff.size else 0.0
            ok = bool((diff <= tol.atol + tol.rtol * np.abs(xd)).all())
    else:
        max_abs = float(np.abs(x.astype(np.int64) - y.astype(np.int64)).max()) if x.size else 0.0
        max_rel = max_abs
        ok = same
    return {"identical": same, "max_abs_diff": max_abs, "max_rel_diff": max_rel, "within_tolerance": ok}


def _torch_row(x: Any, y: Any, tol: Tolerance) -> dict[str, Any]:
    """One tensor's comparison in torch (an array on either side made a tensor)."""
    import torch

    x, y = (torch.from_numpy(np.array(t)) if isinstance(t, np.ndarray) else t for t in (x, y))
    same = torch.equal(x, y)
    if x.is_floating_point():
        diff = (x.double() - y.double()).abs()
        max_abs = float(diff.max()) if diff.numel() else 0.0
        denom = x.double().abs().clamp_min(1e-12)
        max_rel = float((diff / denom).max()) if diff.numel() else 0.0
        ok = bool((diff <= tol.atol + tol.rtol * x.double().abs()).all())
    else:
        max_abs = float((x.long() - y.long()).abs().max()) if x.numel() else 0.0
        max_rel = max_abs
        ok = same
    return {"identical": same, "max_abs_diff": max_abs, "max_rel_diff": max_rel, "within_tolerance": ok}


def saved_weights(ds: StoredDataSet, record: ProvenanceRecord) -> dict[str, dict[str, Any]]:
    """Every saved model's weights by model name, the default first (each checked against the record): NumPy
    arrays, torch tensors for a model with a dtype NumPy lacks (:func:`load_weight_arrays`)."""
    if not record.models:  # a record before schema 1.2: its one model
        return {record.model_components()[0].name: _arrays_else_tensors(ds, record, None)}
    return {c.name: _arrays_else_tensors(ds, record, c.name) for c in record.models if c.weights_file is not None}


def _arrays_else_tensors(ds: StoredDataSet, record: ProvenanceRecord, model: str | None) -> dict[str, Any]:
    arrays = load_weight_arrays(ds, record, model=model)
    return arrays if arrays is not None else load_weights(ds, record, model=model)


def compare_models(
    original: Mapping[str, Mapping[str, Any]], new: Mapping[str, Mapping[str, Any]], tol: Tolerance
) -> dict[str, Any]:
    """:func:`compare_weights` for every saved model (by name): identical only when every model's weights are.

    ``models`` holds each model's summary (``missing_in`` for a model one side did not save),
    ``differing_models`` the names of those not bit-equal; with several models the tensors are
    named ``model/tensor``.
    """
    names = list(original) + [n for n in new if n not in original]
    several = len(names) > 1
    out: dict[str, Any] = {"identical": True, "within_tolerance": True, "n_tensors": 0, "n_identical": 0}
    out.update(max_abs_diff=0.0, tensors=[], models=[], differing_models=[])
    for name in names:
        if name not in original or name not in new:
            side = "original" if name not in original else "reproduction"
            out["models"].append({"name": name, "identical": False, "missing_in": side})
            out["differing_models"].append(name)
            out["identical"] = out["within_tolerance"] = False
            continue
        w = compare_weights(original[name], new[name], tol)
        out["models"].append({"name": name, **{k: w[k] for k in w if k != "tensors"}})
        if not w["identical"]:
            out["differing_models"].append(name)
        out["identical"] &= w["identical"]
        out["within_tolerance"] &= w["within_tolerance"]
        out["n_tensors"] += w["n_tensors"]
        out["n_identical"] += w["n_identical"]
        out["max_abs_diff"] = max(out["max_abs_diff"], w["max_abs_diff"])
        out["tensors"] += [{**t, "name": f"{name}/{t['name']}"} if several else t for t in w["tensors"]]
    return out
