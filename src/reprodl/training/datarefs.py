"""What ``run.use`` and ``run.loader`` record for the data pipelines users have.

- A path (``"data/digits"``) is resolved against the working directory when it is given, and
  refused there and then when nothing is at it; a local dataset is also recorded by its path
  relative to the working directory (``DataRef.path``), so ``reprodl reproduce`` run from the
  same directory finds it again.
- A torch ``Subset`` or ``ConcatDataset`` is followed down to the datasets it is made of; each
  is recorded as itself (a reprodl dataset with its UUID and manifest digest, checked as
  training checks it) with the views that led to it (``DataRef.views``: the subset's indices
  digest, the part of the concatenation).
- An ``IterableDataset`` has no indices: its order is recorded as a digest per pass over the
  samples it yielded, batch by batch (:class:`StreamDigest`; ``DataRef.stream``).
- A custom ``sampler=`` or ``batch_sampler=`` is tapped as it runs (:class:`SamplerTap`,
  :class:`BatchSamplerTap`): a digest per pass of the indices it gave.
- Inside ``reprodl reproduce --data ROLE=URI`` a dataset at a redirected URI is read from the
  copy instead (:func:`redirected`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset, IterableDataset, Sampler, Subset

from reprodl import keys
from reprodl.data.datasets import WrappedDataSet
from reprodl.data.kinds import open_kind
from reprodl.errors import IntegrityError, ParametersError
from reprodl.provenance import DataRef
from reprodl.provenance.record import DataView
from reprodl.store import local_path, normalise_uri
from reprodl.training.describe import class_path
from reprodl.training.order import order_digest

IN_MEMORY = "in-memory"
UNVERIFIED = "unverified"


# --- what was given ------------------------------------------------------------------------
def opened(ds_or_uri: Any, role: str, redirect: Mapping[str, str]) -> Any:
    """The dataset object for what was given to ``run.use``: a path or URI opened (a relative
    path resolved against the working directory, and refused when nothing is there), a reprodl
    dataset whose URI ``redirect`` maps elsewhere read from there."""
    if isinstance(ds_or_uri, (str, os.PathLike)):
        text = os.fspath(ds_or_uri)
        if "://" not in text and not Path(text).exists():
            raise ParametersError(
                f"the {role} data path {text!r} does not exist: it was looked for at {Path(text).absolute()} "
                f"(relative paths are taken from the working directory, {Path.cwd()}). Run from the directory the "
                "path is relative to, or give an absolute path"
            )
        uri = normalise_uri(text)
        return open_wrapped(redirect.get(uri, uri))
    if isinstance(ds_or_uri, WrappedDataSet) and ds_or_uri.uri in redirect:
        return redirected(ds_or_uri, redirect[ds_or_uri.uri])
    return ds_or_uri


def open_wrapped(uri: str | os.PathLike[str]) -> WrappedDataSet:
    """A reprodl dataset at ``uri``, read as the kind its annotation declares."""
    return open_kind(uri)


def redirected(ds: WrappedDataSet, uri: str) -> WrappedDataSet:
    """``ds`` read from the copy at ``uri`` instead: the same kind, selection and transform."""
    return ds.reopened(uri)


def leaves(ds: Any) -> list[tuple[Any, list[DataView]]]:
    """The datasets ``ds`` is made of, each with the views from ``ds`` down to it (outermost first).

    A ``Subset`` and a ``ConcatDataset`` are followed; anything else is a dataset of its own.
    """
    if isinstance(ds, Subset):
        indices = [int(i) for i in ds.indices]
        view = DataView(kind="subset", indices_digest=order_digest(indices), n_indices=len(indices))
        return [(leaf, [view, *views]) for leaf, views in leaves(ds.dataset)]
    if isinstance(ds, ConcatDataset):
        out: list[tuple[Any, list[DataView]]] = []
        for i, part in enumerate(ds.datasets):
            view = DataView(kind="concat", part=i, parts=len(ds.datasets))
            out += [(leaf, [view, *views]) for leaf, views in leaves(part)]
        return out
    return [(ds, [])]


# --- what is recorded ----------------------------------------------------------------------
def describe_wrapped(ds: WrappedDataSet, role: str) -> DataRef:
    """The record of a reprodl dataset: UUID, manifest digest, selection, and its path from here."""
    ref = DataRef.model_validate({"role": role, **ds.provenance_info()})
    ref.manifest_item = f"{keys.MANIFESTS_DIR}/{ds.uuid}.json"
    path = local_path(ds.uri)
    if path is not None:
        try:
            ref.path = Path(os.path.relpath(path, Path.cwd())).as_posix()
        except ValueError:  # another drive: only the URI finds it
            ref.path = None
    return ref


def check_dataset(role: str, ds: WrappedDataSet) -> None:
    """The quick integrity check training runs, and a refusal of an empty train/valid selection."""
    problems = [f"{role} dataset {ds.name} ({ds.uri}): {p}" for p in ds.dataset.verify(deep=False).problems()]
    if problems:
        raise IntegrityError(
            "refusing to train: the data do not match their manifests:\n  " + "\n  ".join(problems), problems=problems
        )
    if role in ("train", "valid") and len(ds) == 0:
        raise ParametersError(f"the {role} dataset {ds.name} ({ds.uri}) has no samples: check its split or usetype")


def _arrays(obj: Any) -> list[Any] | None:
    """The tensors/arrays an in-memory dataset consists of, or None for any other object."""
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        return [obj]
    if isinstance(obj, torch.utils.data.TensorDataset):
        return list(obj.tensors)
    if isinstance(obj, (list, tuple)) and obj and all(isinstance(x, (torch.Tensor, np.ndarray)) for x in obj):
        return list(obj)
    return None


def content_digest(arrays: list[Any]) -> str:
    """sha256 over each array's dtype, shape and bytes, in order."""
    h = hashlib.sha256()
    for a in arrays:
        _hash_array(h, a)
    return "sha256:" + h.hexdigest()


def _hash_array(h: Any, a: Any) -> None:
    arr = a.detach().cpu().contiguous().numpy() if isinstance(a, torch.Tensor) else np.ascontiguousarray(a)
    h.update(f"{arr.dtype}|{arr.shape}|".encode())
    h.update(arr.data.cast("B") if arr.size else b"")


def describe_other_data(ds: Any, role: str) -> DataRef:
    """The record of data that is not a reprodl dataset: hashed when in memory, else by class, unverified."""
    module, qualname = class_path(ds)
    try:
        n = len(ds) if hasattr(ds, "__len__") else 0
    except TypeError:  # an IterableDataset whose length is not known
        n = 0
    arrays = _arrays(ds)
    if arrays is not None:
        digest = content_digest(arrays)
        return DataRef(
            role=role,
            uri=f"memory:{digest}",
            uuid=digest.removeprefix("sha256:")[:32],
            name=qualname,
            input_type=f"{module}:{qualname}",
            manifest_digest=digest,
            n_items=n,
            n_dataset_items=n,  # in memory, the data given is the whole dataset
            input_shape=[int(s) for s in arrays[0].shape[1:]],
            source=IN_MEMORY,
        )
    return DataRef(
        role=role,
        uri=f"unverified:{module}:{qualname}",
        uuid="",
        name=qualname,
        input_type=f"{module}:{qualname}",
        manifest_digest="",
        n_items=n,
        n_dataset_items=n,
        stream=isinstance(ds, IterableDataset),
        source=UNVERIFIED,
    )


# --- orders the run did not choose ---------------------------------------------------------
class StreamDigest:
    """One pass of an IterableDataset's loader: sha256 over its batches' contents, in order.

    Each tensor or array is hashed by dtype, shape and bytes; other values by their repr. The
    same samples batched alike give the same digest; another sample, or another order, another.
    """

    def __init__(self) -> None:
        self._h = hashlib.sha256()
        self.batches = 0

    def update(self, batch: Any) -> None:
        self.batches += 1
        self._update(batch)

    def _update(self, value: Any) -> None:
        if isinstance(value, (torch.Tensor, np.ndarray)):
            _hash_array(self._h, value)
        elif isinstance(value, (list, tuple)):
            self._h.update(f"[{len(value)}|".encode())
            for v in value:
                self._update(v)
        elif isinstance(value, Mapping):
            self._h.update(f"{{{len(value)}|".encode())
            for k in sorted(value, key=str):
                self._h.update(f"{k!s}=".encode())
                self._update(value[k])
        else:
            self._h.update(f"{value!r}|".encode())

    def digest(self) -> str:
        return "sha256:" + self._h.hexdigest()


class SamplerTap(Sampler[int]):
    """A user's sampler, its indices passed on as drawn; each finished pass's digest goes to ``on_order``."""

    def __init__(self, sampler: Any, on_order: Callable[[str], None]) -> None:
        self.sampler, self.on_order = sampler, on_order

    def __iter__(self) -> Iterator[int]:
        seen: list[int] = []
        for i in self.sampler:
            seen.append(int(i))
            yield i
        self.on_order(order_digest(seen))

    def __len__(self) -> int:
        return len(self.sampler)


class BatchSamplerTap(Sampler[list[int]]):
    """A user's batch sampler, its batches passed on as drawn; each finished pass's digest (over
    the indices of all its batches, in order) goes to ``on_order``."""

    def __init__(self, batch_sampler: Any, on_order: Callable[[str], None]) -> None:
        self.batch_sampler, self.on_order = batch_sampler, on_order
        self.batch_size = getattr(batch_sampler, "batch_size", None)

    def __iter__(self) -> Iterator[list[int]]:
        seen: list[int] = []
        for batch in self.batch_sampler:
            seen.extend(int(i) for i in batch)
            yield batch
        self.on_order(order_digest(seen))

    def __len__(self) -> int:
        return len(self.batch_sampler)


def custom_order(ds: Any, kw: dict[str, Any], *, shuffle: bool, on_order: Callable[[str], None]) -> str | None:
    """For ``run.loader``: put a tap on a user's ``sampler=``/``batch_sampler=`` in ``kw``.

    Returns what kind of order the loader has: "sampler", "batch_sampler", "stream" (an
    IterableDataset, its samples digested by the loader) or None (the run chooses the order).
    """
    kind = next((k for k in ("batch_sampler", "sampler") if kw.get(k) is not None), None)
    if isinstance(ds, IterableDataset):
        if kind is not None or shuffle:
            raise ParametersError(
                f"the dataset is an IterableDataset ({type(ds).__qualname__}): its samples come in its own order, "
                "so run.loader takes no shuffle=True, sampler= or batch_sampler= for it (shuffle inside the dataset, "
                "from a seeded generator; reprodl records the samples it yields)"
            )
        return "stream"
    if kind is None:
        return None
    if shuffle:
        raise ParametersError(f"run.loader: {kind}= chooses the order, so leave out shuffle=True")
    tap = BatchSamplerTap if kind == "batch_sampler" else SamplerTap
    kw[kind] = tap(kw[kind], on_order)
    return kind
