"""reprodl: reproducible deep learning by construction.

Training data live in dtool datasets with metadata, persistent URIs and content hashes;
training captures everything needed to redo it; the trained model is itself a dataset that
carries that provenance; and one command re-runs the training and says whether the model
came back.

Importing ``reprodl`` changes no global state and does not import torch: each name below is
loaded from its module on first use.

Example:
    >>> from reprodl import TensorDataSet, DerivedDataSet, Parameters   # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "DerivedDataSet": "reprodl.modeldataset.write",
    "FileDataSet": "reprodl.data.files",
    "GenNet": "reprodl.zoo",
    "ImageDataSet": "reprodl.data.datasets",
    "Parameters": "reprodl.training.params",
    "ProvenanceRecord": "reprodl.provenance",
    "ReprodlError": "reprodl.errors",
    "ReproductionReport": "reprodl.reproduction.pipeline",
    "TensorDataSet": "reprodl.data.datasets",
    "TrainedTorchModel": "reprodl.model",
    "compare": "reprodl.reproduction.claims",
    "current_run": "reprodl.training.current",
    "export": "reprodl.exports",
    "open_dataset": "reprodl.store",
    "recorded": "reprodl.training.recorded",
    "replicate": "reprodl.reproduction.replicate",
    "report": "reprodl.reports",
    "reproduce": "reprodl.reproduction.pipeline",
    "start_run": "reprodl.training.run",
    "train_model_with_metadata_capture": "reprodl.training.loop",
}

__all__ = [
    "DerivedDataSet",
    "FileDataSet",
    "GenNet",
    "ImageDataSet",
    "Parameters",
    "ProvenanceRecord",
    "ReprodlError",
    "ReproductionReport",
    "TensorDataSet",
    "TrainedTorchModel",
    "compare",
    "current_run",
    "export",
    "open_dataset",
    "recorded",
    "replicate",
    "report",
    "reproduce",
    "start_run",
    "train_model_with_metadata_capture",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'reprodl' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])


if TYPE_CHECKING:  # pragma: no cover
    from reprodl.data.datasets import ImageDataSet, TensorDataSet
    from reprodl.data.files import FileDataSet
    from reprodl.errors import ReprodlError
    from reprodl.exports import export
    from reprodl.model import TrainedTorchModel
    from reprodl.modeldataset.write import DerivedDataSet
    from reprodl.provenance import ProvenanceRecord
    from reprodl.reports import report
    from reprodl.reproduction.claims import compare
    from reprodl.reproduction.pipeline import ReproductionReport, reproduce
    from reprodl.reproduction.replicate import replicate
    from reprodl.store import open_dataset
    from reprodl.training.current import current_run
    from reprodl.training.loop import train_model_with_metadata_capture
    from reprodl.training.params import Parameters
    from reprodl.training.recorded import recorded
    from reprodl.training.run import start_run
    from reprodl.zoo import GenNet
