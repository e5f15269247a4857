"""dtoolAI's datasets: ``ImageDataSet`` (256x256 RGB by default), ``TensorDataSet`` (/255), their creators.

They are reprodl's :class:`~reprodl.data.datasets.ImageDataSet` and
:class:`~reprodl.data.datasets.TensorDataSet` with dtoolAI's defaults and attributes
(``input_channels``, ``dim``, ``get_annotation``, ``put_overlay``...), so
``train_model_with_metadata_capture`` records them as it records reprodl's own. A sample is a
float32 NumPy array and an int label, as in dtoolAI; batches (``DataLoader``) are tensors.

Example:
    >>> ids = ImageDataSet("http://example.org/images")    # doctest: +SKIP
    >>> ids.input_channels, ids.dim                        # doctest: +SKIP
    (3, 256)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from reprodl import keys
from reprodl.data import datasets as _datasets
from reprodl.data.creators import create_from_arrays
from reprodl.errors import InputDataError
from reprodl.store import open_dataset

__all__ = [
    "ImageDataSet",
    "TensorDataSet",
    "WrappedDataSet",
    "coerce_to_fixed_size_rgb",
    "create_tensor_dataset_from_arrays",
    "scaled_float_array_to_pil_image",
]


class _DtoolAIMethods:
    """What dtoolAI's WrappedDataSet passed on to its dtool dataset."""

    dataset: Any

    def get_annotation(self, annotation_name: str) -> Any:
        return self.dataset.get_annotation(annotation_name)

    def put_overlay(self, overlay_name: str, overlay: dict[str, Any]) -> None:
        self.dataset.put_overlay(overlay_name, overlay)


class WrappedDataSet(_DtoolAIMethods, torch.utils.data.Dataset):
    """A dtool dataset by URI, as a torch Dataset with dtool's name, URI, UUID and metadata."""

    def __init__(self, uri: str) -> None:
        self.dataset = open_dataset(uri)

    @property
    def name(self) -> str:
        return self.dataset.name

    @property
    def uri(self) -> str:
        return self.dataset.uri

    @property
    def uuid(self) -> str:
        return self.dataset.uuid


class ImageDataSet(_DtoolAIMethods, _datasets.ImageDataSet):
    """Images annotated with categories: every image read as RGB and resized to 256x256 (dtoolAI's).

    Args:
        uri: the dataset's URI or path.
        usetype: items of this ``usetype`` overlay value (all items when there is no overlay).
    """

    def __init__(self, uri: str, usetype: str = "train") -> None:
        super().__init__(uri, usetype, mode="RGB", size=(256, 256))
        self.image_dim = 256, 256
        self.idn_lookup = dict(enumerate(self.identifiers))
        self.loaded_images: dict[str, np.ndarray] = {}

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:  # type: ignore[override]  # dtoolAI returns numpy, not tensors
        x, label = super().__getitem__(index)
        return x.numpy(), label

    @property
    def input_channels(self) -> int:
        return 3

    @property
    def dim(self) -> int:
        return self.image_dim[0]


class TensorDataSet(_DtoolAIMethods, _datasets.TensorDataSet):
    """numpy arrays as a torch Dataset: each row reshaped to ``image_dimensions`` and divided by 255.

    dtoolAI divided every dataset's values by 255; a dataset that records its own value scale
    (``reprodl.value_scale``, written by reprodl's creators and by :func:`create_tensor_dataset_from_arrays`)
    is divided by that.
    """

    def __init__(self, uri: str) -> None:
        ds = open_dataset(uri)
        scale = ds.get_annotation(keys.VALUE_SCALE)
        super().__init__(ds, value_scale=255.0 if scale is None else float(scale))
        self.X = self.data
        self.y = self.labels

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:  # type: ignore[override]  # dtoolAI returns numpy, not tensors
        x, label = super().__getitem__(index)
        return x.numpy(), label

    @property
    def input_channels(self) -> int:
        """The number of channels each tensor provides."""
        return int(self.image_dim[0])

    @property
    def dim(self) -> int:
        """The linear dimension of the tensor (it is dim x dim)."""
        return int(self.image_dim[1])


def scaled_float_array_to_pil_image(array: np.ndarray) -> Any:
    """A PIL image from a float array in [0, 1]: (H, W), or channels first (1 or 3, H, W)."""
    from PIL import Image

    array = np.asarray(array)
    if array.ndim not in (2, 3):
        raise InputDataError(f"Can't handle array of shape {array.shape}: give (H, W) or (C, H, W)")
    intarray = (255 * array).astype(np.uint8)
    if array.ndim == 2:
        return Image.fromarray(intarray)
    intarray = np.transpose(intarray, (1, 2, 0))
    channels = intarray.shape[2]
    if channels == 1:
        return Image.fromarray(intarray.squeeze(axis=2))
    if channels == 3:
        return Image.fromarray(intarray)
    raise InputDataError(f"Can't handle image with {channels} channels (give 1 or 3)")


def coerce_to_fixed_size_rgb(im: Any, target_dim: Sequence[int]) -> Any:
    """A PIL image (RGB or L) resized to ``target_dim`` (W, H) and converted to RGB."""
    if im.mode not in ("RGB", "L"):
        raise InputDataError(f"Unknown image mode: {im.mode} (give an RGB or L image)")
    resized = im.resize(tuple(target_dim))
    return resized if im.mode == "RGB" else resized.convert("RGB")


def create_tensor_dataset_from_arrays(
    output_base_uri: str,
    output_name: str,
    data_array: Any,
    label_array: Any,
    image_dim: Sequence[int],
    readme_content: str,
) -> str:
    """Create a TensorDataSet (``data.npy``, ``labels.npy`` and dtoolAI's annotations); its URI.

    Made by reprodl's :func:`~reprodl.data.creators.create_from_arrays` (labels checked to be
    integers, no pickled arrays) with a value scale of 255, as dtoolAI read it, and
    ``readme_content`` as the README.
    """
    data = np.asarray(data_array)
    labels = label_array.numpy() if isinstance(label_array, torch.Tensor) else np.asarray(label_array)
    return create_from_arrays(
        data,
        labels,
        os.fspath(output_base_uri),
        output_name,
        image_dimensions=[int(d) for d in image_dim],
        value_scale=255.0,
        readme_text=readme_content,
    )
