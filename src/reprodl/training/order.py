"""The sample order of a DataLoader built elsewhere (a Lightning DataModule's): a digest per pass.

:func:`tap_order` puts an :class:`OrderTap` between a loader's ``BatchSampler`` and its sampler.
Each pass, the tap draws the sampler's whole order at the moment the loader would have drawn
its first index (so the generators are used exactly as without it), reports the order's digest
(:func:`order_digest`, as ``run.loader`` and the built-in trainer record it), then yields it.

Only samplers whose pass is a finite list of indices drawn at once are tapped: torch's
``RandomSampler``, ``SequentialSampler``, ``SubsetRandomSampler`` and ``WeightedRandomSampler``
under torch's own ``BatchSampler``. For any other loader :func:`tap_order` says why not.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    IterableDataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
    SubsetRandomSampler,
    WeightedRandomSampler,
)

TAPPABLE = (RandomSampler, SequentialSampler, SubsetRandomSampler, WeightedRandomSampler)


def order_digest(order: Sequence[int] | torch.Tensor) -> str:
    """``sha256:`` and the hex sha256 of the indices as little-endian int64: one pass's order."""
    data = np.asarray(order.tolist() if isinstance(order, torch.Tensor) else list(order), dtype="<i8")
    return "sha256:" + hashlib.sha256(data.tobytes()).hexdigest()


class OrderTap(Sampler[int]):
    """A sampler yielding ``sampler``'s indices unchanged, reporting each pass's digest to ``on_order``."""

    def __init__(self, sampler: Sampler[int], on_order: Callable[[str], None]) -> None:
        self.sampler, self.on_order = sampler, on_order

    def __iter__(self) -> Iterator[int]:
        order = list(self.sampler)  # runs at the first index asked for, as the sampler's own pass would
        self.on_order(order_digest(order))
        yield from order

    def __len__(self) -> int:
        return len(self.sampler)  # type: ignore[arg-type]  # every tappable sampler has a length


def tap_order(loader: DataLoader, on_order: Callable[[str], None]) -> str | None:
    """Report each pass's order of ``loader`` to ``on_order``; None when tapped, else why it cannot be.

    Tapping twice is harmless: a loader already tapped is left as it is.
    """
    name = type(loader.sampler).__qualname__
    if isinstance(loader.dataset, IterableDataset):
        return f"the loader reads an IterableDataset ({type(loader.dataset).__qualname__}), whose order is its own"
    batches = loader.batch_sampler
    if batches is None:
        return "the loader has batch_size=None, so its sampler cannot be reached"
    if type(batches) is not BatchSampler:
        return f"the loader has a custom batch_sampler ({type(batches).__qualname__})"
    if isinstance(batches.sampler, OrderTap):
        return None
    if not isinstance(batches.sampler, TAPPABLE):
        return (
            f"the loader's sampler is a {name}; reprodl reads the order of "
            f"{', '.join(c.__name__ for c in TAPPABLE)} only"
        )
    batches.sampler = OrderTap(batches.sampler, on_order)
    return None


def untap(loader: Any) -> None:
    """Give ``loader`` its own sampler back (no-op when it was not tapped)."""
    batches = getattr(loader, "batch_sampler", None)
    if isinstance(batches, BatchSampler) and isinstance(batches.sampler, OrderTap):
        batches.sampler = batches.sampler.sampler
