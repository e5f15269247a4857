"""The dataset kinds reprodl reads: one table from a kind's name (its ``dtoolAI.inputtype``) to
its class and what it can do.

Adding a kind is its own module (its ``WrappedDataSet`` subclass and creator) plus one line in
:data:`KINDS`. An unknown kind is an error naming the kinds there are.
"""

from __future__ import annotations

from dataclasses import dataclass

from reprodl import keys
from reprodl.data.datasets import ImageDataSet, TensorDataSet, WrappedDataSet
from reprodl.data.files import FileDataSet
from reprodl.errors import DatasetFormatError


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
    found = KINDS.get(keys.INPUT_TYPE_TENSOR if name is None else name)
    if found is None:
        raise DatasetFormatError(
            f"{what} has input type {name!r}, which reprodl cannot read: the kinds there are {sorted(KINDS)}"
        )
    return found


def kind_of(ds: WrappedDataSet) -> Kind:
    """The kind of an opened dataset."""
    return kind(ds.input_type, what=f"the dataset {ds.uri}")
