"""Every seed of a training, from one place: what is applied is what is recorded.

A :class:`SeedPlan` is built from the run's base seed and its number of DataLoader workers;
the training applies its seeds (Python's, NumPy's and torch's global generators, the
DataLoader's generator, the batch-order sampler, each worker's generators through
``worker_init_fn``) and records :meth:`SeedPlan.record`, computed by the same properties.

The derivation (unchanged from earlier versions, so older models train again the same way):

=====================  =========================================
python, numpy          ``seed & 0xFFFFFFFF``
torch                  ``seed``
sampler                ``seed + 1`` (epoch e's order: ``randperm`` seeded ``(sampler * 1_000_003 + e) mod 2^64``)
dataloader generator   ``seed + 1``
worker i               ``(seed + 1001 + i) & 0xFFFFFFFF`` (Python, NumPy and torch in the worker)
=====================  =========================================

Records written before this module existed named the workers ``seed + 1000 + i``: the
seeds applied were ``seed + 1001 + i`` all along, and are recorded so now.

Example:
    >>> plan = SeedPlan(7, num_workers=2)
    >>> plan.record().worker_seeds
    [1008, 1009]
    >>> plan.sampler, plan.dataloader_generator
    (8, 8)
"""

from __future__ import annotations

import dataclasses
import random
from typing import TYPE_CHECKING

from reprodl.provenance import Seeds

if TYPE_CHECKING:
    from torch import Generator  # a class attribute below is named ``torch``

MASK_32 = 0xFFFFFFFF  # Python's and NumPy's legacy seeders take 32-bit seeds
MASK_64 = 0xFFFFFFFFFFFFFFFF  # torch's generators take 64-bit seeds
SAMPLER_OFFSET = 1
GENERATOR_OFFSET = 1
WORKER_OFFSET = 1001
EPOCH_STRIDE = 1_000_003  # the sampler's generator for epoch e: sampler * EPOCH_STRIDE + e


def order_seed(base: int, epoch: int) -> int:
    """The generator seed of pass ``epoch`` (from 0) of an order seeded ``base``: ``(base * 1_000_003 + epoch)
    mod 2^64``, for the built-in trainer's sampler and ``run.loader``'s alike."""
    return (base * EPOCH_STRIDE + epoch) & MASK_64  # the same seed for torch wherever it fitted


@dataclasses.dataclass(frozen=True)
class SeedPlan:
    """The seeds of one training, derived from its base ``seed``.

    Args:
        seed: the run's base seed (``Parameters.seed``).
        num_workers: the DataLoader's worker processes (one seed each).
    """

    seed: int
    num_workers: int = 0

    @property
    def python(self) -> int:
        """Seed of Python's ``random`` in the main process."""
        return self.seed & MASK_32

    @property
    def numpy(self) -> int:
        """Seed of NumPy's global generator in the main process."""
        return self.seed & MASK_32

    @property
    def torch(self) -> int:
        """Seed of torch's global generator in the main process."""
        return self.seed

    @property
    def sampler(self) -> int:
        """Seed of the batch-order sampler (see :meth:`epoch_order_seed`)."""
        return self.seed + SAMPLER_OFFSET

    @property
    def dataloader_generator(self) -> int:
        """Seed of the DataLoader's own ``generator`` (its workers' base seed)."""
        return self.seed + GENERATOR_OFFSET

    def epoch_order_seed(self, epoch: int) -> int:
        """Seed of the generator whose ``randperm`` is epoch ``epoch``'s data order (0-based)."""
        return order_seed(self.sampler, epoch)

    def worker(self, worker_id: int) -> int:
        """Seed of Python's, NumPy's and torch's generators in DataLoader worker ``worker_id``."""
        return (self.seed + WORKER_OFFSET + worker_id) & MASK_32

    @property
    def worker_seeds(self) -> list[int]:
        """:meth:`worker` of each worker, in order."""
        return [self.worker(i) for i in range(self.num_workers)]

    def record(self) -> Seeds:
        """The record's ``training.seeds``: the seeds this plan applies."""
        return Seeds(
            seed=self.seed,
            python=self.python,
            numpy=self.numpy,
            torch=self.torch,
            dataloader_generator=self.dataloader_generator,
            sampler=self.sampler,
            worker_seeds=self.worker_seeds,
        )

    def apply_globals(self) -> None:
        """Seed Python's, NumPy's and torch's global generators of this process."""
        import numpy as np
        import torch

        random.seed(self.python)
        np.random.seed(self.numpy)
        torch.manual_seed(self.torch)

    def generator(self) -> Generator:
        """A fresh generator for the DataLoader, seeded :attr:`dataloader_generator`."""
        import torch

        g = torch.Generator()
        g.manual_seed(self.dataloader_generator)
        return g

    def worker_init_fn(self) -> WorkerSeeder:
        """The DataLoader's ``worker_init_fn``: seeds each worker with :meth:`worker`."""
        return WorkerSeeder(self)


@dataclasses.dataclass(frozen=True)
class WorkerSeeder:
    """A picklable ``worker_init_fn`` seeding worker i's generators with ``plan.worker(i)``."""

    plan: SeedPlan

    def __call__(self, worker_id: int) -> None:
        import numpy as np
        import torch

        seed = self.plan.worker(worker_id)
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
