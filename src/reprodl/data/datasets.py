"""torch Datasets over dtool datasets: :class:`ImageDataSet` and :class:`TensorDataSet`.

Both read datasets made by the original dtoolAI 0.2.0 and by reprodl, and implement
``__getitems__`` so a DataLoader fetches a whole batch in one call. What every kind shares
(:class:`WrappedDataSet`, :class:`Batch`, :func:`collate`, :func:`describe_transform`) is in
:mod:`reprodl.data.wrapped`, re-exported here.

Example:
    >>> ds = TensorDataSet("/data/digits", usetype="train")          # doctest: +SKIP
    >>> loader = torch.utils.data.DataLoader(ds, batch_size=128)      # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from reprodl import keys
from reprodl.data.images import channels_for_mode, convert, open_image, read_batch, resize, to_array
from reprodl.data.labels import dataset_encoding, integer_labels
from reprodl.data.layout import check_real_dtype, load_npy, tensor_item_ids
from reprodl.data.layout import value_scale as _value_scale
from reprodl.data.wrapped import Batch, WrappedDataSet, _make_batch, collate, describe_transform
from reprodl.errors import DatasetFormatError, InputDataError
from reprodl.store import StoredDataSet

__all__ = ["Batch", "ImageDataSet", "TensorDataSet", "WrappedDataSet", "collate", "describe_transform"]


class ImageDataSet(WrappedDataSet):
    """Images as items (``<category>/<file>``), labels in the ``category`` overlay.

    Args:
        uri: the dataset's URI or path (or a :class:`~reprodl.store.StoredDataSet` already open).
        usetype: keep only items whose ``usetype`` overlay has this value (train/test/...).
        transform: a callable taking a PIL image (already converted to ``mode``) and
            returning a (C, H, W) tensor or array; without one images become float tensors
            in [0, 1] of the dataset's recorded size.
        mode: Pillow mode to convert to ("L", "RGB", "RGBA"); default from the dataset's
            metadata, else "RGB" (dtoolAI's behaviour).
        size: (width, height) to resize to; default the dataset's recorded image size.
        split: an in-memory stratified split (test, valid, seed) selecting ``usetype``.
        bootstrap: seed of a bootstrap resample of the selected items (as many, with replacement).
    """

    input_type = keys.INPUT_TYPE_IMAGE

    @classmethod
    def for_training(
        cls,
        ds: StoredDataSet,
        usetype: str | None = None,
        transform: Callable[[Any], Any] | None = None,
        **options: Any,
    ) -> WrappedDataSet:
        """``ds`` as images, converted to ``mode`` and resized to ``size`` when given."""
        return cls(ds, usetype, transform, **options)

    def reopened(self, uri: str) -> WrappedDataSet:
        """These images read from the copy at ``uri``: the same selection, mode, size and transform."""
        return type(self)(
            uri,
            self.usetype,
            self.transform,
            mode=self.mode,
            size=self.size,
            split=self.split,
            bootstrap=self.bootstrap,
        )

    def __init__(
        self,
        uri: str | os.PathLike[str] | StoredDataSet,
        usetype: str | None = None,
        transform: Callable[[Any], Any] | None = None,
        *,
        mode: str | None = None,
        size: tuple[int, int] | None = None,
        split: dict[str, Any] | None = None,
        bootstrap: int | None = None,
    ) -> None:
        super().__init__(uri, usetype, split, bootstrap)
        categories = self.dataset.get_overlay(keys.CATEGORY_OVERLAY)
        if categories is None:
            raise DatasetFormatError(
                f"{self.uri} has no 'category' overlay: it is not an image dataset. "
                "Create one with `reprodl dataset create-from-dirtree`"
            )
        idns = [i for i in self.dataset.identifiers if categories.get(i) is not None]
        names = [str(categories[i]) for i in idns]
        # The encoding of every labelled item, not of the selection: train and test agree.
        annotation = self.dataset.get_annotation(keys.CATEGORY_ENCODING)
        self.cat_encoding = dataset_encoding(annotation, uri=self.uri, names=names)
        all_labels = np.array([self.cat_encoding[n] for n in names], dtype=np.int64)
        keep = self._resampled(self._selected(idns, all_labels))
        self.identifiers: list[str] = [idns[k] for k in keep]
        self._label_names = [names[k] for k in keep]
        self.labels = all_labels[keep]
        self.transform = transform
        self._set_shape(mode, size)

    def _selected(self, idns: list[str], labels: np.ndarray) -> np.ndarray:
        """Indices into ``idns`` of the items the split, or the ``usetype`` overlay, selects."""
        if self.split is not None:
            return np.flatnonzero(self._split_mask(labels))
        overlay = None if self.usetype is None else self.dataset.get_overlay(keys.USETYPE_OVERLAY)
        if overlay is None:
            return np.arange(len(idns))
        keep = np.flatnonzero(np.array([overlay.get(i) == self.usetype for i in idns], dtype=bool))
        if not len(keep):
            values = sorted({str(v) for v in overlay.values()})
            raise DatasetFormatError(f"no items of usetype {self.usetype!r} in {self.uri}; it has {values}")
        return keep

    def _set_shape(self, mode: str | None, size: tuple[int, int] | None) -> None:
        """The mode, size and input shape: as given, else the dataset's recorded ones."""
        self.mode = mode or self.dataset.get_annotation(keys.IMAGE_MODE) or "RGB"
        channels = channels_for_mode(self.mode)
        dims = self.dataset.get_annotation(keys.IMAGE_DIMENSIONS)
        if size is not None:
            self.size: tuple[int, int] | None = (int(size[0]), int(size[1]))
        elif dims is not None and len(dims) == 3:
            self.size = (int(dims[2]), int(dims[1]))  # stored as (C, H, W)
        else:
            self.size = None
        self.input_shape = (channels, self.size[1], self.size[0]) if self.size else ()
        self.value_scale = 1.0

    def __len__(self) -> int:
        return len(self.identifiers)

    def _selection_keys(self) -> Sequence[Any]:
        return [self.dataset.relpath(i) for i in self.identifiers]

    @property
    def cat_lookup(self) -> dict[str, str]:
        """identifier -> category name of the selected items (dtoolAI's attribute)."""
        return dict(zip(self.identifiers, self._label_names))

    def _stored_labels(self) -> Sequence[Any]:
        return self._label_names

    def _path(self, index: int) -> str:
        # One lookup per read, nothing built per dataset: at 10^6 items a list of every
        # path would cost seconds before the first sample. Remote items are fetched on
        # first use and remembered by the store.
        return self.dataset.item_path(self.identifiers[index])

    def load_image(self, index: int) -> Any:
        """The PIL image of sample ``index``, converted to the dataset's mode."""
        return convert(open_image(self._path(index)), self.mode)

    def _tensor(self, index: int) -> torch.Tensor:
        if self.transform is not None:
            out = self.transform(self.load_image(index))
            return out if isinstance(out, torch.Tensor) else torch.as_tensor(np.asarray(out))
        # Without a transform, read the source image directly: 16-bit values keep their precision.
        image = resize(open_image(self._path(index)), self.size)
        return torch.from_numpy(to_array(image, self.mode))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if index < 0:
            index += len(self)
        return self._tensor(index), int(self.labels[index])

    def __getitems__(self, indices: Sequence[int]) -> Batch:
        if not self.dataset.is_local:  # the batch's items not yet cached, fetched in parallel
            self.dataset.item_paths([self.identifiers[i] for i in indices])
        inputs = self._read_batch(indices) if self.transform is None else None
        if inputs is None:
            inputs = self._stack([self._tensor(i) for i in indices])
        return _make_batch(inputs, torch.from_numpy(self.labels[np.asarray(indices)]))

    def _read_batch(self, indices: Sequence[int]) -> torch.Tensor | None:
        """Without a transform: the whole batch decoded into one float32 array.

        The same values as stacking :meth:`_tensor` per item (see
        :func:`reprodl.data.images.read_batch`), without a tensor per item. None when the
        images' sizes differ (or there are none): the caller then takes the per-item path,
        which reports it.
        """
        path = self._path
        out = read_batch((path(i) for i in indices), self.mode, self.size)
        return None if out is None else torch.from_numpy(out)

    def _stack(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        try:
            return torch.stack(tensors)
        except RuntimeError:
            shapes = sorted({tuple(t.shape) for t in tensors})
            raise InputDataError(
                f"images in {self.uri} have different shapes {shapes[:4]}: pass size=(W, H) or a transform that resizes"
            ) from None

    def label_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=self.n_classes)
        return {name: int(counts[i]) for name, i in self.cat_encoding.items()}


class TensorDataSet(WrappedDataSet):
    """Arrays as ``.npy`` items, memory-mapped: any dtype and shape, with labels.

    The data item (``tensor_file_idn`` annotation, else ``data.npy``) holds one row per
    sample; rows are reshaped to the ``image_dimensions`` annotation when it is there and
    divided by the value scale: ``value_scale=`` when given, else the dataset's recorded one, else
    255 for uint8 (as dtoolAI did) and 1 for floats.
    """

    input_type = keys.INPUT_TYPE_TENSOR

    @classmethod
    def for_training(
        cls,
        ds: StoredDataSet,
        usetype: str | None = None,
        transform: Callable[[Any], Any] | None = None,
        **options: Any,
    ) -> WrappedDataSet:
        """``ds`` as tensors (``mode`` and ``size`` are for images: a row already has its shape)."""
        return cls(ds, usetype, transform, split=options.get("split"), bootstrap=options.get("bootstrap"))

    def reopened(self, uri: str) -> WrappedDataSet:
        """These rows read from the copy at ``uri``: the same selection and transform."""
        return type(self)(uri, self.usetype, self.transform, split=self.split, bootstrap=self.bootstrap)

    def __init__(
        self,
        uri: str | os.PathLike[str] | StoredDataSet,
        usetype: str | None = None,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        *,
        split: dict[str, Any] | None = None,
        bootstrap: int | None = None,
        value_scale: float | None = None,
    ) -> None:
        super().__init__(uri, usetype, split, bootstrap)
        ds = self.dataset
        data_idn, labels_idn = tensor_item_ids(ds)
        self._data_path = ds.item_path(data_idn)
        self._labels_path = ds.item_path(labels_idn)
        self.data = _load_npy(self._data_path, self.uri)
        # Refused, not cast: complex data would lose its imaginary part, 0.5 would become class 0.
        try:
            check_real_dtype(self.data.dtype, what=f"the data ({ds.relpath(data_idn)}) of the dataset {self.uri}")
            stored = np.asarray(_load_npy(self._labels_path, self.uri)).reshape(-1)
            all_labels = integer_labels(stored, what=f"the labels ({ds.relpath(labels_idn)}) of the dataset {self.uri}")
        except DatasetFormatError:
            self._refuse_if_altered([data_idn, labels_idn])  # tampering is named as tampering
            raise
        if len(all_labels) != len(self.data):
            raise DatasetFormatError(f"{self.uri}: {len(self.data)} data rows but {len(all_labels)} labels")
        self.rows = rows = self._resampled(self._selected_rows(all_labels))
        self._contiguous = bool(len(rows)) and bool(np.all(np.diff(rows) == 1))
        self.labels = all_labels[rows]
        try:
            annotation = ds.get_annotation(keys.CATEGORY_ENCODING)
            self.cat_encoding = dataset_encoding(annotation, uri=self.uri, labels=all_labels)
        except DatasetFormatError:
            self._refuse_if_altered([labels_idn])
            raise
        self.input_shape = self._row_shape()
        self.value_scale = float(value_scale) if value_scale is not None else _value_scale(ds, self.data.dtype)
        self.transform = transform
        self.tensor = self.data  # dtoolAI's attribute names
        self.image_dim = list(self.input_shape)

    def _selected_rows(self, labels: np.ndarray) -> np.ndarray:
        """The rows the split, or the per-row ``usetype`` annotation, selects."""
        if self.split is not None:
            return np.flatnonzero(self._split_mask(labels))
        usetype = self.usetype
        if usetype is None:
            return np.arange(len(labels))
        split = self.dataset.get_annotation(keys.TENSOR_USETYPE)
        if split is None:
            declared = self.dataset.readme().get("usetype")
            if declared is not None and declared != usetype:
                raise DatasetFormatError(f"{self.uri} is a {declared!r} dataset with no per-row split, not {usetype!r}")
            return np.arange(len(labels))
        rows = np.flatnonzero(np.asarray(split) == usetype)
        if len(rows) == 0:
            raise DatasetFormatError(f"no rows of usetype {usetype!r} in {self.uri}; it has {sorted(set(split))}")
        return rows

    def _row_shape(self) -> tuple[int, ...]:
        """The shape a row takes: the ``image_dimensions`` annotation, else the stored row shape."""
        dims = self.dataset.get_annotation(keys.IMAGE_DIMENSIONS)
        row_shape = tuple(self.data.shape[1:])
        if dims is None:
            return row_shape
        dims = tuple(int(d) for d in dims)
        if int(np.prod(dims)) != int(np.prod(row_shape)):
            raise DatasetFormatError(
                f"{self.uri}: image_dimensions {list(dims)} do not fit rows of shape {list(row_shape)}"
            )
        return dims

    def __len__(self) -> int:
        return len(self.rows)

    def _selection_keys(self) -> Sequence[Any]:
        return self.rows.tolist()

    def _stored_labels(self) -> Sequence[Any]:
        return self.labels.tolist()

    def _convert(self, raw: np.ndarray) -> torch.Tensor:
        arr = np.asarray(raw)
        # astype always copies: the result is writable even when ``raw`` is a memmap view.
        t = torch.from_numpy(arr.astype(np.float32))
        if self.value_scale != 1.0:
            t.mul_(float(np.float32(1.0 / self.value_scale)))
        return t.reshape(len(arr), *self.input_shape)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if index < 0:
            index += len(self)
        x = self._convert(self.data[self.rows[index]][None])[0]
        if self.transform is not None:
            x = self.transform(x)
        return x, int(self.labels[index])

    def __getitems__(self, indices: Sequence[int]) -> Batch:
        idx = np.asarray(indices, dtype=np.int64)
        if self._contiguous:
            rows = idx + self.rows[0]
        else:
            rows = self.rows[idx]
        raw = self.data[rows]
        inputs = self._convert(raw)
        if self.transform is not None:
            inputs = torch.stack([self.transform(x) for x in inputs])
        return _make_batch(inputs, torch.from_numpy(self.labels[idx]))

    def label_counts(self) -> dict[str, int]:
        counts = {name: 0 for name in self.cat_encoding}
        inverse = {v: k for k, v in self.cat_encoding.items()}
        values, n = np.unique(self.labels, return_counts=True)
        for v, c in zip(values.tolist(), n.tolist()):
            counts[inverse.get(v, str(v))] = c
        return counts


def _load_npy(path: str, uri: str) -> np.ndarray:
    """Memory-map an .npy item; never unpickles (object arrays are refused)."""
    return load_npy(path, uri=uri)
