"""A model as ONNX, checked with onnxruntime against torch on sample inputs.

The architecture is rebuilt through :class:`reprodl.model.TrainedTorchModel`, so only a
trusted class (reprodl's zoo, or one the caller allows) is ever built. The exported graph
carries, as ``metadata_props``, the model's URI, UUID, record digest and weights digest, and
what a user of the ONNX file alone needs: the category of each output index
(``reprodl.categories``), the shape of one input (``reprodl.input_shape``) and how raw data
becomes an input (``reprodl.preprocessing``: image mode and size, value scale, the
normalisation and the rest of the transform). The check runs seeded random inputs through
both and reports the largest absolute difference.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from reprodl import keys
from reprodl.errors import IntegrityError
from reprodl.exports.formats import ExportOptions
from reprodl.exports.source import ExportError, Source, model_identity, require

OPSET = 17
#: Largest absolute difference between onnxruntime's and torch's outputs accepted.
TOLERANCE = 1e-4


def write_onnx(
    source: Source, path: Path, *, allow: Iterable[str] = (), batch: int = 4, seed: int = 0
) -> dict[str, Any]:
    """Export the model to ``path`` and check it; returns ``max_abs_diff`` and what was run."""
    require("onnx", extra="export", feature="the ONNX export")
    require("onnxruntime", extra="export", feature="checking the ONNX export")
    import torch

    from reprodl.model import TrainedTorchModel

    record = source.model_record("onnx")
    model = TrainedTorchModel(source.uri, allow=allow)
    sample = torch.randn(batch, *model.input_shape, generator=torch.Generator().manual_seed(seed))
    _export(model.model, sample, path)
    _stamp(path, {**model_identity(source, record), **usage(model)})
    diff = _check(model.model, sample, path)
    if diff > TOLERANCE:
        raise IntegrityError(
            f"the ONNX export of {source.uri} differs from torch by up to {diff:.3g} on sample inputs "
            f"(tolerance {TOLERANCE}): the model uses an operation ONNX runs differently; do not use {path}",
            problems=["onnx output mismatch"],
        )
    return {
        "max_abs_diff": diff,
        "tolerance": TOLERANCE,
        "opset": OPSET,
        "sample_shape": list(sample.shape),
        "sample_seed": seed,
    }


def _export(module: Any, sample: Any, path: Path) -> None:
    """torch.onnx.export with the TorchScript exporter (dynamo=False), batch axis dynamic."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter is deprecated, not gone
        try:
            torch.onnx.export(
                module,
                (sample,),
                str(path),
                dynamo=False,
                opset_version=OPSET,
                input_names=["input"],
                output_names=["output"],
                dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            )
        except Exception as exc:  # noqa: BLE001 - the exporter raises many kinds; all mean "cannot export"
            raise ExportError(f"torch could not export the model to ONNX: {type(exc).__name__}: {exc}") from None


def usage(model: Any) -> dict[str, str]:
    """What an ONNX-only user needs (``metadata_props``, JSON values): the category of each output
    index, the shape of one input, and the preprocessing from raw data to that input."""
    return {
        keys.ONNX_CATEGORIES: json.dumps(model.categories),
        keys.ONNX_INPUT_SHAPE: json.dumps(list(model.input_shape)),
        keys.ONNX_PREPROCESSING: json.dumps(preprocessing(model)),
    }


def preprocessing(model: Any) -> dict[str, Any]:
    """How reprodl turns raw data into the model's input, as the model's training data read it:
    images converted to a mode, resized, scaled to [0, 1]; arrays divided by their value scale;
    then the transform (its deterministic part: Normalize's mean and std...), as configs."""
    train = model.provenance.data_by_role("train")[0]
    transform = model.transform
    configs = transform.config() if hasattr(transform, "config") else None
    steps = configs.get("transforms", [configs]) if isinstance(configs, dict) else []
    out: dict[str, Any] = {"layout": "float32 (N, " + ", ".join(map(str, model.input_shape)) + ")"}
    if train.input_type == keys.INPUT_TYPE_IMAGE:
        out.update({"input": "image", "image_mode": model.image_mode})
        out["resize_to_hw"] = None if any(c.get("name") == "Resize" for c in steps) else list(model.data_shape[1:])
        out["value_scale"] = 255.0  # 8-bit pixels to [0, 1] (16-bit: 65535), as ToTensor does
    else:
        out.update({"input": "array", "value_scale": train.value_scale or 1.0})
    out["transform"] = steps if configs is not None else None
    if transform is not None and configs is None:
        out["transform_note"] = f"a transform of the user's own, not described: {train.transform}"
    normalize = [c for c in steps if c.get("name") == "Normalize"]
    out["mean"], out["std"] = (normalize[0]["mean"], normalize[0]["std"]) if normalize else (None, None)
    return out


def _stamp(path: Path, props: dict[str, str]) -> None:
    """Write the model's identity, digests and usage into the ONNX file's metadata."""
    import onnx

    proto = onnx.load(str(path))
    onnx.helper.set_model_props(proto, props)
    proto.producer_name = "reprodl"
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def _check(module: Any, sample: Any, path: Path) -> float:
    """The largest absolute difference between torch's and onnxruntime's outputs on ``sample``."""
    import numpy as np
    import onnxruntime
    import torch

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": sample.numpy()})[0]
    with torch.no_grad():
        want = module(sample).detach().cpu().numpy()
    return float(np.max(np.abs(got - want)))


def write(source: Source, path: Path, options: ExportOptions) -> dict[str, Any]:
    """The ``onnx`` format's writer (:mod:`reprodl.exports.formats`): the checked model to ``path``."""
    return write_onnx(source, path, allow=options.allow)
