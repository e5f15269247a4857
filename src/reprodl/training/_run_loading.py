"""The loaders a run builds: its own recorded order (a seeded permutation per pass, a digest each) and a
DataLoader that tells the run of each batch (where it is, what the next step learns from).

Package-private: :meth:`reprodl.training.run.Run.loader` builds through :func:`make_loader`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader, Sampler

from reprodl.data.datasets import WrappedDataSet, collate
from reprodl.errors import ParametersError
from reprodl.training import datarefs
from reprodl.training.checkpoint import set_rng_state
from reprodl.training.distributed import RecordedDistributedSampler
from reprodl.training.order import order_digest
from reprodl.training.seeding import order_seed

if TYPE_CHECKING:
    from reprodl.training.run import Run


class _RecordedOrder(Sampler[int]):
    """Indices in a permutation seeded by (seed, pass); each pass's order digest is reported."""

    def __init__(self, n: int, *, seed: int, shuffle: bool, on_order: Any) -> None:
        self.n, self.seed, self.shuffle, self.on_order = n, seed, shuffle, on_order
        self.passes = 0
        self.last_order: torch.Tensor | None = None

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(order_seed(self.seed, self.passes))  # the seed plan's formula, as the built-in trainer's
            order = torch.randperm(self.n, generator=g)
        else:
            order = torch.arange(self.n)
        self.passes += 1
        self.last_order = order
        self.on_order(order_digest(order))
        return iter(order.tolist())

    def __len__(self) -> int:
        return self.n


class TracedLoader(DataLoader):
    """A DataLoader telling ``on_batch`` of each batch it yields: (pass, batch from 1, sample indices, batch).

    A resumed run's loader fetches and drops the ``resume_skip`` batches its pass had already
    trained on (so workers' random states advance as they did), then restores ``resume_rng``.
    """

    on_batch: Any = None
    on_stream_pass: Any = None  # an IterableDataset's loader: each pass's digest of the samples it yielded
    own_passes: int = 0
    resume_skip: int = 0
    resume_rng: dict[str, Any] | None = None
    pass_start_generator: torch.Tensor | None = None

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]  # a generator over the base iterator
        sampler = self.sampler
        bs = self.batch_size or 1
        if self.generator is not None:
            self.pass_start_generator = self.generator.get_state()
        skip, rng = self.resume_skip, self.resume_rng
        self.resume_skip, self.resume_rng = 0, None
        it = super().__iter__()
        for _ in itertools.islice(it, skip):
            pass
        if rng is not None:
            set_rng_state(rng)
        stream = datarefs.StreamDigest() if self.on_stream_pass is not None else None
        self.own_passes += 1  # the pass number where the sampler keeps none (custom, IterableDataset)
        try:
            for i, batch in enumerate(it, start=skip):
                order = getattr(sampler, "last_order", None)
                if stream is not None:
                    stream.update(batch)
                if self.on_batch is not None:
                    indices = order[i * bs : (i + 1) * bs] if order is not None else None
                    self.on_batch(getattr(sampler, "passes", self.own_passes), i + 1, indices, batch)
                yield batch
        finally:
            if stream is not None and stream.batches:
                self.on_stream_pass(stream.digest())


def make_loader(run: Run, ds: Any, batch_size: int, shuffle: bool, kw: dict[str, Any]) -> DataLoader:
    """:meth:`Run.loader`: a traced DataLoader over ``ds``, its order seeded from ``run``'s seed and recorded."""
    if not any(d is ds for d, _ in run._given):
        run.use(ds)
    role = next(r for d, r in run._given if d is ds)
    index = run._n_loaders
    run._n_loaders += 1
    on_order = run._recorder.on_order if role == "train" else (lambda _digest: None)
    custom = datarefs.custom_order(ds, kw, shuffle=shuffle, on_order=on_order)
    if custom is not None and (run._group is not None or run.checkpoints.every or run.checkpoints.resume):
        raise ParametersError(
            f"run.loader with {'an IterableDataset' if custom == 'stream' else custom + '='} cannot be sharded "
            "over processes or checkpointed yet: let run.loader choose the order (shuffle=) under torchrun "
            "or with checkpoint_every/resume"
        )
    if custom is None:
        kw["sampler"] = _sampler(run, ds, index, shuffle, bool(kw.get("drop_last", False)), on_order)
    if custom != "batch_sampler":
        kw["batch_size"] = batch_size
    g = torch.Generator()
    g.manual_seed(run.seeds.dataloader_generator + index)
    if isinstance(ds, WrappedDataSet):
        kw.setdefault("collate_fn", collate)
    if role == "train" and not run._loader_info:
        size = getattr(kw.get("batch_sampler"), "batch_size", None) or batch_size
        run._loader_info = {"batch_size": size, "shuffle": shuffle, "num_workers": kw.get("num_workers", 0)}
    loader = TracedLoader(ds, generator=g, **kw)
    if custom == "stream":
        loader.on_stream_pass = on_order
    if role == "train":
        loader.on_batch = run._on_batch
    run._loaders.append(loader)
    run.checkpoints.loader_made(run, loader, index)
    return loader


def _sampler(run: Run, ds: Any, index: int, shuffle: bool, drop_last: bool, on_order: Any) -> Sampler[int]:
    """The run's own order for loader ``index``: seeded from the run's seed, a digest per pass."""
    seed = run.seeds.dataloader_generator + index
    if run._group is None:
        return _RecordedOrder(len(ds), seed=seed, shuffle=shuffle, on_order=on_order)
    # each rank its shard, in an order seeded alike on every rank
    sampler = RecordedDistributedSampler(
        ds, group=run._group, seed=seed, shuffle=shuffle, drop_last=drop_last, on_order=on_order
    )
    if on_order == run._recorder.on_order and not run._sampler_settings:
        run._sampler_settings = sampler.settings()
    return sampler
