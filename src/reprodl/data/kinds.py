"""The dataset kinds reprodl reads: one table from a kind's name (its ``dtoolAI.inputtype``) to
its class and what it can do.

Adding a kind is its own module (its ``WrappedDataSet`` subclass, with ``for_training`` and
``reopened``, and its creator) plus one line in :data:`KINDS`. An unknown kind is an error naming
the kinds there are. Code that opens a dataset by its declared kind goes through this table
(:func:`open_training_data`, :func:`open_kind`), never through an ``if`` on the kind.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from reprodl import keys
from reprodl.data.datasets import ImageDataSet, TensorDataSet, WrappedDataSet
from reprodl.data.files import FileDataSet
from reprodl.errors import DatasetFormatError
from reprodl.store import open_dataset


@dataclass(frozen=True)
class Kind:
    """A dataset kind: its name, the class that reads it, and what it can do.

    ``feeds_trainer``: the built-in trainer (and evaluation) can read its samples as labelled
    tensors; a kind without it is read only by the user's own code (``start_run``).
    """

    name: str
    cls: type[WrappedDataSet]
    feeds_trainer: bool


KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind(keys.INPUT_TYPE_IMAGE, ImageDataSet, feeds_trainer=True),
        Kind(keys.INPUT_TYPE_TENSOR, TensorDataSet, feeds_trainer=True),
        Kind(keys.INPUT_TYPE_FILES, FileDataSet, feeds_trainer=False),
    )
}


def kind(name: str | None, *, what: str) -> Kind:
    """The kind called ``name`` (None: a tensor dataset, as dtoolAI's unannotated ones are).

    Raises:
        DatasetFormatError: for a name no kind has, naming ``what`` had it and the kinds there are.
    """
    # an annotation is anyone's JSON: a list or a mapping is no kind's name (and cannot be looked up)
    found = KINDS.get(keys.INPUT_TYPE_TENSOR if name is None else name) if isinstance(name, str | None) else None
    if found is None:
        raise DatasetFormatError(
            f"{what} has input type {str(name)[:200]!r}, which reprodl cannot read: the kinds there are {sorted(KINDS)}"
        )
    return found


def kind_of(ds: WrappedDataSet) -> Kind:
    """The kind of an opened dataset."""
    return kind(ds.input_type, what=f"the dataset {ds.uri}")


def open_kind(uri: str | os.PathLike[str]) -> WrappedDataSet:
    """A reprodl dataset at ``uri``, read as the kind its annotation declares."""
    ds = open_dataset(os.fspath(uri))
    return kind(ds.get_annotation(keys.INPUT_TYPE), what=f"the dataset {ds.uri}").cls(ds)


def open_training_data(
    uri: str | os.PathLike[str],
    usetype: str | None = None,
    transform: Callable[[Any], Any] | None = None,
    *,
    mode: str | None = None,
    size: tuple[int, int] | None = None,
    split: dict[str, Any] | None = None,
    bootstrap: int | None = None,
) -> WrappedDataSet:
    """Open a dataset for the built-in trainer as the kind its ``dtoolAI.inputtype`` annotation names.

    The dataset is opened once and handed to the kind's ``for_training``. ``mode`` and ``size``
    apply to image datasets only (a tensor dataset's rows already have their shape); a kind
    whose items carry no labels (files) refuses, saying how to read it.
    """
    ds = open_dataset(uri)
    found = kind(ds.get_annotation(keys.INPUT_TYPE), what=f"the dataset {ds.uri}")
    return found.cls.for_training(ds, usetype, transform, mode=mode, size=size, split=split, bootstrap=bootstrap)
