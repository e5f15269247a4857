"""dtoolAI's ``TrainedTorchModel``: a model from a URI whose ``predict`` returns the category name.

It loads reprodl models and models dtoolAI made (``model.pt``, read with
``torch.load(weights_only=True)``: no code runs, anything but named tensors is refused).

Example:
    >>> model = TrainedTorchModel("http://example.org/mnist_model")   # doctest: +SKIP
    >>> model.convert_and_predict(Image.open("three.png"))            # doctest: +SKIP
    '3'
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from reprodl import keys
from reprodl import model as _model
from reprodl.compat.dtoolai import models as _models

__all__ = ["MODEL_NAME_LOOKUP", "TrainedTorchModel"]

#: dtoolAI's model names (``model_name`` class attributes) to their classes.
MODEL_NAME_LOOKUP = {
    v.model_name: v for v in vars(_models).values() if isinstance(v, type) and hasattr(v, "model_name")
}


class TrainedTorchModel(_model.TrainedTorchModel):
    """A trained model at a URI, with dtoolAI's attributes.

    Args:
        uri: the model dataset's URI.
        model_cls: the architecture, for a model whose recorded class reprodl does not rebuild itself.

    Attributes:
        model_name: dtoolAI's ``model_name`` annotation (``dtoolai.simpleScalingCNN``); for a reprodl
            model, ``dtoolai.<model_name>`` of its class when it has one, else its import path.
        model_params: the training parameters with ``init_params`` (dtoolAI's ``model_parameters``).
        cat_decoding: class index -> category name.
    """

    def __init__(self, uri: str, model_cls: type | None = None) -> None:
        super().__init__(uri, model_class=model_cls)
        self.model_params = self._model_params()
        self.model_name = self._model_name()
        self.cat_decoding = {n: cat for cat, n in self.cat_encoding.items()}

    def _model_params(self) -> dict[str, Any]:
        record = self.provenance
        params = dict(record.training.params)
        user = params.pop("user", None) or {}
        out = {**params, **user, "init_params": record.architecture.init_params}
        shape = record.data_by_role("train")[0].input_shape
        if len(shape) == 3:
            out.setdefault("input_channels", shape[0])
            out.setdefault("input_dim", shape[1])
        return out

    def _model_name(self) -> str:
        annotated = self.dataset.get_annotation(keys.MODEL_NAME)
        if keys.CONVERTED_FROM in (self.provenance.model_extra or {}):
            return str(annotated)
        short = getattr(type(self.model), "model_name", None)
        return f"dtoolai.{short}" if isinstance(short, str) else self.provenance.architecture.import_path

    @classmethod
    def from_uri(cls, uri: str) -> TrainedTorchModel:
        return cls(uri)

    @property
    def name(self) -> str:
        """The model dataset's name (dtoolAI's)."""
        return self.dataset.name

    @property
    def uuid(self) -> str:
        return self.dataset.uuid

    def put_overlay(self, overlay_name: str, overlay: dict[str, Any]) -> None:
        self.dataset.put_overlay(overlay_name, overlay)

    def predict(self, model_input: torch.Tensor | np.ndarray) -> Any:
        """The category name for one model input (a batch of one, or one sample); a list of names for a batch."""
        indices = super().predict(model_input).tolist()
        names = [self.cat_decoding[i] for i in indices]
        return names[0] if len(names) == 1 else names

    def convert_and_predict(self, im: Any) -> str:
        """The category name for a PIL image, converted to the model's input format."""
        return str(self.predict(self.convert_image(im)[None]))
