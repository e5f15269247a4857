"""reprodl.exports.onnx_model: a model as ONNX, run by onnxruntime."""

from __future__ import annotations

from pathlib import Path

import pytest
from train_fixtures import TrainedModel

from reprodl.errors import UnsafeImportError
from reprodl.exports import export

pytest_plugins = ["train_fixtures"]


def test_onnx_export_matches_torch_under_onnxruntime(trained_model: TrainedModel, tmp_path: Path) -> None:
    import numpy as np
    import onnx
    import onnxruntime
    import torch

    from reprodl import TrainedTorchModel

    result = export(trained_model.uri, "onnx", tmp_path / "model.onnx")
    assert result.details["max_abs_diff"] < 1e-4
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "model.onnx")).metadata_props}
    assert props["reprodl.record_digest"] == trained_model.record.digest
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    batch = torch.rand(7, 1, 8, 8, generator=torch.Generator().manual_seed(1))  # another batch size
    with torch.no_grad():
        want = TrainedTorchModel(trained_model.uri).model(batch).numpy()
    np.testing.assert_allclose(session.run(None, {"input": batch.numpy()})[0], want, atol=1e-4)


def test_onnx_export_builds_only_a_trusted_architecture(
    trained_model: TrainedModel, digits_split_master: str, tmp_path: Path
) -> None:
    from train_fixtures import TinyNet, train_digits

    uri, _ = train_digits(tmp_path, "tiny", digits_split_master, valid=False, model=TinyNet(), init_params={})
    with pytest.raises(UnsafeImportError, match="train_fixtures"):
        export(uri, "onnx", tmp_path / "tiny.onnx")
    assert not (tmp_path / "tiny.onnx").exists() and not list(tmp_path.glob(".tiny.onnx*"))  # no temporary left
    result = export(uri, "onnx", tmp_path / "tiny.onnx", allow=["train_fixtures"])
    assert result.details["max_abs_diff"] < 1e-4
