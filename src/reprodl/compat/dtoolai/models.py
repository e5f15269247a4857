"""dtoolAI's models: ``GenNet`` (its simple scaling CNN) and ``ResNet18Pretrained`` (weights from a file or dataset).

Both are reprodl zoo classes (:class:`reprodl.zoo.SimpleScalingCNN`, :class:`reprodl.zoo.ResNet18`),
so a model trained with them is rebuilt from its record without an allow-list. Nothing is
downloaded: ``ResNet18Pretrained`` takes torchvision's ImageNet ``resnet18`` weights from a local
file or a dataset URI.

Example:
    >>> model = ResNet18Pretrained(2, weights="resnet18-f37072fd.pth")   # doctest: +SKIP
"""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from reprodl.errors import ModelLoadError
from reprodl.modeldataset.legacy import load_state_dict_file
from reprodl.store import open_dataset
from reprodl.zoo import ResNet18, SimpleScalingCNN

__all__ = ["WEIGHTS_ENV", "GenNet", "ResNet18Pretrained", "load_resnet18_weights"]

#: The environment variable naming ResNet18Pretrained's weights when ``weights=`` is not given.
WEIGHTS_ENV = "REPRODL_RESNET18_WEIGHTS"

#: dtoolAI's GenNet: ``GenNet(input_channels=1, input_dim=28, n_outputs=10)``, model_name "simpleScalingCNN".
GenNet = SimpleScalingCNN


class ResNet18Pretrained(nn.Module):
    """A ResNet-18 with ImageNet weights and a new ``n_outputs``-way last layer (dtoolAI's, without torchvision).

    ``ResNet18Pretrained(n_outputs)`` returns a :class:`reprodl.zoo.ResNet18` whose weights come
    from ``weights``: a local file (torchvision's ``resnet18-f37072fd.pth``, a state dict read with
    ``torch.load(weights_only=True)``, or a ``.safetensors`` file) or the URI of a dataset holding
    one; without ``weights=``, from the file or URI in ``$REPRODL_RESNET18_WEIGHTS``. Its ``fc`` is
    then replaced by a fresh ``Linear(512, n_outputs)``, as dtoolAI did.

    Raises:
        ModelLoadError: no weights named, or weights that are not a ResNet-18 state dict.
    """

    model_name = "resnet18pretrained"
    categorical_output = True

    def __new__(cls, n_outputs: int, weights: str | os.PathLike[str] | None = None) -> Any:
        model = ResNet18(n_outputs=1000)
        state = load_resnet18_weights(weights)
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise ModelLoadError(
                f"the weights {weights or os.environ.get(WEIGHTS_ENV)} are not ResNet-18's: {exc}"
            ) from None
        model.fc = nn.Linear(model.fc.in_features, n_outputs)
        model.model_name = cls.model_name
        model.categorical_output = cls.categorical_output
        return model


def load_resnet18_weights(weights: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The state dict ``weights`` names (a file or a dataset URI; default ``$REPRODL_RESNET18_WEIGHTS``)."""
    where = os.fspath(weights) if weights is not None else os.environ.get(WEIGHTS_ENV)
    if not where:
        raise ModelLoadError(
            "ResNet18Pretrained needs ImageNet weights and reprodl downloads nothing: pass weights= a local "
            "file (torchvision's resnet18-f37072fd.pth, or .safetensors) or a dataset URI holding one, "
            f"or set {WEIGHTS_ENV}"
        )
    if os.path.isfile(where):
        return _read_weights(where)

    ds = open_dataset(where)
    files = sorted(ds.relpath(i) for i in ds.identifiers if ds.relpath(i).endswith((".safetensors", ".pth", ".pt")))
    if "model.safetensors" in files:
        files = ["model.safetensors"]
    if len(files) != 1:
        raise ModelLoadError(
            f"{ds.uri} should hold one weights file (.safetensors, .pth or .pt), but holds {files or 'none'}"
        )
    return _read_weights(ds.item_path(ds.identifier_of(files[0])))


def _read_weights(path: str) -> dict[str, Any]:
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return dict(load_file(path))
    return load_state_dict_file(path, what=f"the ResNet-18 weights {path}")
