"""What every dataset kind shares: :class:`WrappedDataSet`, the pre-stacked :class:`Batch` and :func:`collate`.

A kind (:class:`~reprodl.data.datasets.ImageDataSet`, :class:`~reprodl.data.datasets.TensorDataSet`,
:class:`~reprodl.data.files.FileDataSet`) subclasses :class:`WrappedDataSet`: the dtool dataset, the
split and resample, the digests that pin the selection and its labels, and the provenance a record
keeps. ``reprodl.data.datasets`` re-exports these names (their public import path).
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
from reprodl.errors import DatasetFormatError, IntegrityError
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


def _int_list(value: Any) -> list[int] | None:
    """An annotation's list of integers as JSON-able ints (None stays None)."""
    if value is None:
        return None
    try:
        return [int(v) for v in value]
    except (TypeError, ValueError):
        raise DatasetFormatError(f"image_dimensions annotation {value!r} is not a list of integers") from None
