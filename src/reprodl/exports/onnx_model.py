"""A model as ONNX, checked with onnxruntime against torch on sample inputs.

The architecture is rebuilt through :class:`reprodl.model.TrainedTorchModel`, so only a
trusted class (reprodl's zoo, or one the caller allows) is ever built. The exported graph
carries the model's URI, UUID, record digest and weights digest as metadata, and the check
runs seeded random inputs through both and reports the largest absolute difference.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from reprodl.errors import IntegrityError
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
    _stamp(path, source, record)
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


def _stamp(path: Path, source: Source, record: Any) -> None:
    """Write the model's identity and digests into the ONNX file's metadata."""
    import onnx

    proto = onnx.load(str(path))
    onnx.helper.set_model_props(proto, model_identity(source, record))
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
