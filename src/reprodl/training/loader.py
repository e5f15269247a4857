"""The built-in trainer's data loader: batches in a seeded order per epoch (its digest recorded), several
training datasets fetched as one, workers seeded from the seed plan, each rank its shard under torchrun.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler

from reprodl import trust
from reprodl.data.datasets import Batch, WrappedDataSet, collate
from reprodl.training.checkpoint import RngReportingCollate, WorkerSeeder
from reprodl.training.distributed import Group, ShardBatches
from reprodl.training.order import order_digest
from reprodl.training.seeding import SeedPlan


class EpochSampler(Sampler[list[int]]):
    """Batches of indices from a permutation seeded by the plan's seed of each epoch; records its digest."""

    def __init__(self, n: int, batch_size: int, *, seeds: SeedPlan, shuffle: bool) -> None:
        self.n = n
        self.batch_size = batch_size
        self.seeds = seeds
        self.shuffle = shuffle
        self.epoch = 0
        self.order_digest: str | None = None
        self.last_order: torch.Tensor | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.n)
        g = torch.Generator()
        g.manual_seed(self.seeds.epoch_order_seed(self.epoch))
        return torch.randperm(self.n, generator=g)

    def __iter__(self) -> Iterator[list[int]]:
        order = self.order()
        self.last_order = order
        self.order_digest = order_digest(order)
        for batch in torch.split(order, self.batch_size):
            yield batch.tolist()

    def __len__(self) -> int:
        return (self.n + self.batch_size - 1) // self.batch_size


class Concat(torch.utils.data.ConcatDataset):
    """Several training datasets as one; a batch is fetched with one ``__getitems__`` call per
    run of consecutive indices in the same dataset, in order, so the samples (and the draws of
    random transforms) are those of fetching item by item."""

    def __getitems__(self, indices: Sequence[int]) -> Any:
        parts = [self._fetch(d, local) for d, local in self._runs(indices)]
        if parts and all(isinstance(p, Batch) for p in parts):
            inputs = torch.cat([p.inputs for p in parts])
            labels = torch.cat([p.labels for p in parts]).to(torch.int64)
            batch = Batch(zip(inputs, labels.tolist()))
            batch.inputs, batch.labels = inputs, labels
            return batch
        return [sample for p in parts for sample in p]

    def _runs(self, indices: Sequence[int]) -> list[tuple[int, list[int]]]:
        """(dataset index, its local indices) for each run of consecutive indices in one dataset."""

        runs: list[tuple[int, list[int]]] = []
        for i in indices:
            d = bisect.bisect_right(self.cumulative_sizes, i)
            local = i - (self.cumulative_sizes[d - 1] if d else 0)
            if runs and runs[-1][0] == d:
                runs[-1][1].append(local)
            else:
                runs.append((d, [local]))
        return runs

    def _fetch(self, d: int, local: list[int]) -> Any:
        ds = self.datasets[d]
        getitems = getattr(ds, "__getitems__", None)
        return getitems(local) if getitems is not None else [ds[j] for j in local]


def make_loader(
    ds: WrappedDataSet | torch.utils.data.ConcatDataset[Any],
    batch_size: int,
    *,
    seeds: SeedPlan,
    shuffle: bool,
    device: torch.device,
    worker_states: dict[int, Any] | None = None,
    group: Group | None = None,
) -> tuple[DataLoader, EpochSampler | ShardBatches]:
    """A DataLoader of ``seeds.num_workers`` workers, every seed from ``seeds``.

    The batch order comes from a seeded :class:`EpochSampler` (its digest is recorded), the
    loader's generator is :meth:`SeedPlan.generator` and each worker is seeded by
    :meth:`SeedPlan.worker_init_fn`. With ``worker_states`` (a checkpointed training) each
    batch reports its worker's random state, and a worker in it starts from its state there.
    In a process ``group`` (torchrun) each rank reads its shard, in the order of PyTorch's
    DistributedSampler seeded :attr:`SeedPlan.sampler` (:class:`ShardBatches`).
    """
    sampler: EpochSampler | ShardBatches
    if group is not None:
        sampler = ShardBatches(len(ds), batch_size, group=group, seed=seeds.sampler, shuffle=shuffle)
    else:
        sampler = EpochSampler(len(ds), batch_size, seeds=seeds, shuffle=shuffle)
    workers = seeds.num_workers
    if workers:
        trust.check_workers(workers, what="the training parameters")  # never fork more than this machine has
    init: Any = seeds.worker_init_fn() if workers else None
    if workers and worker_states is not None:
        init = WorkerSeeder(init, worker_states)
    loader = DataLoader(
        ds,
        batch_sampler=sampler,
        collate_fn=RngReportingCollate(collate) if worker_states is not None else collate,
        num_workers=workers,
        worker_init_fn=init,
        generator=seeds.generator(),
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
    )
    return loader, sampler
