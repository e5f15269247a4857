"""torch Datasets over dtool datasets: :class:`ImageDataSet` and :class:`TensorDataSet`.

Both read datasets made by the original dtoolAI 0.2.0 and by reprodl, and implement
``__getitems__`` so a DataLoader fetches a whole batch in one call.

Example:
    >>> ds = TensorDataSet("/data/digits", usetype="train")          # doctest: +SKIP
    >>> loader = torch.utils.data.DataLoader(ds, batch_size=128)      # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torch.utils.data._utils.collate import default_collate

from reprodl import keys
from reprodl.data.images import channels_for_mode, convert, open_image, read_batch, resize, to_array
from reprodl.data.labels import dataset_encoding, integer_labels
from reprodl.data.layout import check_real_dtype, load_npy, tensor_item_ids
from reprodl.data.layout import value_scale as _value_scale
from reprodl.errors import DatasetFormatError, InputDataError, IntegrityError
from reprodl.store import StoredDataSet, open_dataset


class Batch(list):
    """A list of samples that also carries them stacked, so :func:`collate` is free."""

    inputs: torch.Tensor
    labels: torch.Tensor


def collate(samples: Any) -> Any:
    """Collate that passes a pre-stacked :class:`Batch` through and defers otherwise."""
    if isinstance(samples, Batch):
        return samples.inputs, samples.labels
    return default_collate(samples)


def _make_batch(inputs: torch.Tensor, labels: torch.Tensor) -> Batch:
    batch = Batch(zip(inputs, labels.tolist()))
    batch.inputs = inputs
    batch.labels = labels
    return batch


def describe_transform(transform: Any) -> dict[str, Any] | None:
    """A JSON-able description of a transform (its ``config()`` when it has one)."""
    if transform is None:
        return None
    desc: dict[str, Any] = {
        "class": f"{type(transform).__module__}.{type(transform).__qualname__}",
        "repr": repr(transform),
    }
    config = getattr(transform, "config", None)
    if callable(config):
        desc["config"] = config()
    return desc


class WrappedDataSet(Dataset):
    """What both dataset kinds share: the dtool dataset, labels, split and identity."""

    input_type: str = ""
    #: True for a kind that reads any dtool dataset, whatever kind its annotation declares.
    reads_any_dataset: bool = False

    def __len__(self) -> int:
        raise NotImplementedError  # each kind of dataset counts its samples

    def __init__(
        self,
        uri: str | os.PathLike[str] | StoredDataSet,
        usetype: str | None = None,
        split: dict[str, Any] | None = None,
        bootstrap: int | None = None,
    ) -> None:
        if split is not None and usetype is None:
            raise DatasetFormatError("split= selects by usetype: pass usetype='train' (or 'test', 'valid') with it")
        if bootstrap is not None and (isinstance(bootstrap, bool) or not isinstance(bootstrap, int) or bootstrap < 0):
            raise DatasetFormatError(f"bootstrap= is the seed of a resample, an integer >= 0, but got {bootstrap!r}")
        self.split = dict(split) if split is not None else None
        self.bootstrap = bootstrap
        # An already opened dataset is used as it is (its manifest and metadata are read once).
        self.dataset: StoredDataSet = uri if isinstance(uri, StoredDataSet) else open_dataset(uri)
        self.uri = self.dataset.uri
        self.name = self.dataset.name
        self.uuid = self.dataset.uuid
        self.usetype = usetype
        declared = self.dataset.get_annotation(keys.INPUT_TYPE)
        if declared is not None and self.input_type and declared != self.input_type and not self.reads_any_dataset:
            raise DatasetFormatError(
                f"{self.uri} is a {declared}, not a {self.input_type}: open it with {declared}(uri)"
            )

    # --- what each kind does (data/kinds.py's table reaches a kind through these) -------
    @classmethod
    def for_training(
        cls,
        ds: StoredDataSet,
        usetype: str | None = None,
        transform: Callable[[Any], Any] | None = None,
        **options: Any,
    ) -> WrappedDataSet:
        """``ds`` opened as this kind for the built-in trainer (``options``: mode, size, split, bootstrap).

        A kind whose items carry no labels refuses, saying how to read it instead.
        """
        raise DatasetFormatError(
            f"{ds.uri} is a {cls.input_type or cls.__name__}: its files carry no labels the built-in trainer, "
            f"evaluation or class counts can read. Read it with reprodl.{cls.__name__} in your own training "
            "script (reprodl.start_run)"
        )

    def reopened(self, uri: str) -> WrappedDataSet:
        """This dataset read from the copy at ``uri`` instead: the same kind, selection and transform."""
        raise NotImplementedError(f"{type(self).__name__} does not say how to read it from another copy")

    # --- labels ---------------------------------------------------------------------
    @property
    def categories(self) -> list[str]:
        """Category names in label order (label i is ``categories[i]``)."""
        return [name for name, _ in sorted(self.cat_encoding.items(), key=lambda kv: kv[1])]

    @property
    def n_classes(self) -> int:
        """Number of categories."""
        return len(self.cat_encoding)

    def get_readme_content(self) -> str:
        """The dataset's README text."""
        return self.dataset.get_readme_content()

    # --- provenance -------------------------------------------------------------------
    def selection_digest(self) -> str:
        """sha256 of the selected sample keys, in order: pins the split that was used."""
        h = hashlib.sha256()
        for key in self._selection_keys():
            h.update(str(key).encode() + b"\n")
        return "sha256:" + h.hexdigest()

    def _selection_keys(self) -> Sequence[Any]:
        raise NotImplementedError

    def labels_digest(self) -> str:
        """sha256 of the selected samples' stored labels, in order: pins what each sample is."""
        h = hashlib.sha256()
        for label in self._stored_labels():
            h.update(str(label).encode() + b"\n")
        return "sha256:" + h.hexdigest()

    def _stored_labels(self) -> Sequence[Any]:
        raise NotImplementedError

    def provenance_info(self) -> dict[str, Any]:
        """What a provenance record needs to find and check this data again."""
        return {
            "uri": self.uri,
            "uuid": self.uuid,
            "name": self.name,
            "input_type": self.input_type,
            "manifest_digest": self.dataset.manifest_digest(),
            "readme": self.dataset.get_readme_content(),
            "usetype": self.usetype,
            "split": self.split,
            "bootstrap": self.bootstrap,
            "selection_digest": self.selection_digest(),
            "labels_digest": self.labels_digest(),
            "n_items": len(self),
            "n_dataset_items": len(self.dataset),
            "category_encoding": self.cat_encoding,
            "transform": describe_transform(getattr(self, "transform", None)),
            "input_shape": list(self.input_shape),
            "image_dimensions": _int_list(self.dataset.get_annotation(keys.IMAGE_DIMENSIONS)),
            "value_scale": getattr(self, "value_scale", None),
            "image_mode": getattr(self, "mode", None),
        }

    input_shape: tuple[int, ...] = ()
    cat_encoding: dict[str, int] = {}

    def _refuse_if_altered(self, identifiers: list[str]) -> None:
        """Raise :class:`IntegrityError` when these items no longer match the manifest: bad
        content read from them is then reported as the tampering or damage it is."""
        report = self.dataset.verify(identifiers=identifiers, deep=True)
        if not report.ok:
            raise IntegrityError(
                f"{self.uri}: the data do not match their manifest:\n  " + "\n  ".join(report.problems()),
                problems=report.problems(),
            )

    def label_counts(self) -> dict[str, int]:
        raise NotImplementedError

    def _resampled(self, selected: np.ndarray) -> np.ndarray:
        """``selected`` drawn with replacement, as many, in stored order, when ``bootstrap`` seeds a resample."""
        if self.bootstrap is None or not len(selected):
            return selected
        draw = np.random.default_rng(self.bootstrap).integers(0, len(selected), size=len(selected))
        return selected[np.sort(draw)]

    def _split_mask(self, labels: np.ndarray) -> np.ndarray:
        """Samples of ``usetype`` under an in-memory stratified ``split`` (test/valid/seed)."""
        from reprodl.data.ops import stratified_split

        assert self.split is not None
        values = stratified_split(
            labels,
            test=float(self.split.get("test", 0.2)),
            valid=float(self.split.get("valid", 0.0)),
            seed=int(self.split.get("seed", 0)),
        )
        mask = values == self.usetype
        if not mask.any():
            raise DatasetFormatError(
                f"the split {self.split} of {self.uri} ({len(labels)} samples) selects no samples of usetype "
                f"{self.usetype!r}: change its fractions, or use a usetype it produces "
                f"({', '.join(sorted({str(v) for v in values}))})"
            )
        return mask


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


def _int_list(value: Any) -> list[int] | None:
    """An annotation's list of integers as JSON-able ints (None stays None)."""
    if value is None:
        return None
    try:
        return [int(v) for v in value]
    except (TypeError, ValueError):
        raise DatasetFormatError(f"image_dimensions annotation {value!r} is not a list of integers") from None


def _load_npy(path: str, uri: str) -> np.ndarray:
    """Memory-map an .npy item; never unpickles (object arrays are refused)."""
    return load_npy(path, uri=uri)
