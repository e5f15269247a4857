"""Steps' state digests staged on the host and finished together (the step tracer's cheap path).

A CPU-only training's step keeps the per-tensor digests it found (:class:`Found`); they are put in
order and the optimisers' mixed (:class:`Order`) when the tracer flushes, in a few calls for many
steps (:func:`resolve`). Also here: the fixed odd multipliers that combine several digests into
one (the optimisers' state digest), on the host and on a device, the same numbers either way.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import NamedTuple, Union

import numpy as np
import torch

MIX_SEED = 20_250_118

Digest = Union[np.ndarray, torch.Tensor]  # uint64: NumPy on the host, or a tensor on the model's device
_MIX: dict[tuple[int, torch.device], torch.Tensor] = {}
_MIX_NP: dict[int, np.ndarray] = {}


def mixed_multipliers(n: int, device: torch.device) -> torch.Tensor:
    """The fixed odd multiplier of each of ``n`` positions (int64)."""
    mix = _MIX.get((n, device))
    if mix is None:
        g = torch.Generator().manual_seed(MIX_SEED)
        mix = _MIX[(n, device)] = (torch.randint(-(2**62), 2**62, (n,), generator=g) * 2 + 1).to(device)
    return mix


def mixed_np(digests: np.ndarray) -> np.ndarray:
    """:func:`~reprodl.training.statedigest.mixed` on the host: the same multipliers, the product wrapping as
    int64, XORed."""
    return np.bitwise_xor.reduce((digests.view(np.int64) * multipliers_np(digests.size)).view(np.uint64))


def multipliers_np(n: int) -> np.ndarray:
    mix = _MIX_NP.get(n)
    if mix is None:
        mix = _MIX_NP[n] = mixed_multipliers(n, torch.device("cpu")).numpy()
    return mix


class Order(NamedTuple):
    """Where a host layout's digests go (``_Layout.order_of``): kept by the steps staged with it, not
    the layout and its buffers."""

    model: np.ndarray  # the columns of the model's tensors
    optimizer: np.ndarray  # those of the optimiser state entries
    n_parts: int
    last: int

    def finish(self, steps: Sequence[list[np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
        """(each step's model digests, each step's optimiser state digest) from steps' ``_Layout.found``
        digests: ``_Layout.digests`` of many steps in a few calls."""
        zeros = np.zeros((len(steps), 1), dtype=np.uint64)
        every = np.concatenate([*(np.stack(piece) for piece in zip(*steps)), zeros], axis=1)
        model = every.take(self.model, axis=1)
        if self.n_parts == 0:
            return model, np.zeros(len(every), dtype=np.uint64)
        if self.n_parts == 1:
            return model, every[:, self.last]
        parts = every.take(self.optimizer, axis=1)
        mix = multipliers_np(parts.shape[1])
        return model, np.bitwise_xor.reduce((parts.view(np.int64) * mix).view(np.uint64), axis=1)


class Found(NamedTuple):
    """A step's digests on a host layout as found (``_Layout.found``), put in order at :func:`resolve`."""

    order: Order
    pieces: list[np.ndarray]


Staged = Union[tuple[Digest, Digest], Found]  # what StateDigests.stage gives a step


def resolve(staged: Sequence[Staged]) -> tuple[list[Digest], list[Digest]]:
    """(each step's model digests, each step's optimiser state digest) of ``StateDigests.stage``'s
    values, in order: the digests found in consecutive steps of one layout finished together."""
    models: list[Digest] = []
    optimizers: list[Digest] = []
    for _, run in itertools.groupby(staged, key=lambda e: id(e.order) if isinstance(e, Found) else 0):
        entries = list(run)
        first = entries[0]
        if isinstance(first, Found):
            model, optimizer = first.order.finish([e.pieces for e in entries if isinstance(e, Found)])
            models += list(model)
            optimizers += list(optimizer)
        else:
            pairs = [e for e in entries if not isinstance(e, Found)]
            models += [m for m, _ in pairs]
            optimizers += [o for _, o in pairs]
    return models, optimizers
