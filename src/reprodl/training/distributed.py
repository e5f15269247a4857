"""DistributedDataParallel runs under ``torchrun``: what a :func:`reprodl.start_run` run does per rank.

When the script initialised a process group (``torch.distributed.init_process_group``, as
under ``torchrun --nproc-per-node 2``) of more than one process, a run:

* seeds rank r's Python, NumPy and torch with ``seed + r`` (recorded as ``rank_seeds``);
* checks its data once, on rank 0, while the other ranks wait (:func:`on_rank0_first`);
* gives ``run.loader`` a :class:`RecordedDistributedSampler`: PyTorch's ``DistributedSampler``,
  seeded from the run's seed, its epoch set to the pass, each rank's order digest recorded;
* writes the model dataset on rank 0 only, with the world size, backend, per-rank seeds,
  sampler settings and every rank's order digests (gathered to rank 0).

A rank that dies makes the collective operations of the others fail, so no rank writes a model.

Example (run with ``torchrun --nproc-per-node 2 train.py``):
    >>> torch.distributed.init_process_group("gloo")          # doctest: +SKIP
    >>> with reprodl.start_run("models", "ddp", seed=0) as run:  # doctest: +SKIP
    ...     model = DistributedDataParallel(net)
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler, Sampler

from reprodl.errors import ParametersError, RankLostError, ReprodlError
from reprodl.training.order import order_digest


@dataclasses.dataclass(frozen=True)
class Group:
    """The process group a run is part of."""

    rank: int
    world_size: int
    backend: str


def process_group() -> Group | None:
    """The initialised process group of more than one process this process belongs to, else None."""
    dist = torch.distributed
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() < 2:
        return None
    return Group(rank=dist.get_rank(), world_size=dist.get_world_size(), backend=str(dist.get_backend()))


def broadcast_from_rank0(value: Any, *, then_barrier: bool = False) -> Any:
    """``value`` as rank 0 has it, on every rank (a picklable object sent inside the process group).

    ``then_barrier``: every rank leaves together (a rank that exits while another still talks
    to it can make gloo abort the other).
    """
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    if then_barrier:
        torch.distributed.barrier()
    return box[0]


def gather(value: Any, group: Group) -> list[Any]:
    """Every rank's ``value``, in rank order, on every rank."""
    out: list[Any] = [None] * group.world_size
    torch.distributed.all_gather_object(out, value)
    return out


def on_rank0_first(fn: Callable[[], None], group: Group | None) -> None:
    """Run ``fn`` on rank 0 only; every rank raises its error (the others meanwhile wait)."""
    if group is None:
        fn()
        return
    error: BaseException | None = None
    if group.rank == 0:
        try:
            fn()
        except ReprodlError as exc:
            error = exc
    message = broadcast_from_rank0(None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    if message is not None:
        raise ReprodlError(f"rank 0 refused the run, so rank {group.rank} stops too: {message}")


class RecordedDistributedSampler(DistributedSampler):
    """PyTorch's DistributedSampler whose epoch is its pass number; each pass's order digest is reported."""

    def __init__(self, dataset: Any, *, group: Group, seed: int, shuffle: bool, drop_last: bool, on_order: Any) -> None:
        super().__init__(
            dataset, num_replicas=group.world_size, rank=group.rank, shuffle=shuffle, seed=seed, drop_last=drop_last
        )
        self.on_order = on_order
        self.passes = 0
        self.last_order: torch.Tensor | None = None

    def __iter__(self) -> Iterator[int]:
        self.set_epoch(self.passes)
        order = torch.tensor(list(super().__iter__()), dtype=torch.int64)
        self.passes += 1
        self.last_order = order
        self.on_order(order_digest(order))
        return iter(order.tolist())

    def settings(self) -> dict[str, Any]:
        """The record's ``sampler`` settings."""
        return {"shuffle": self.shuffle, "seed": self.seed, "drop_last": self.drop_last}


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DistributedDataParallel wrapper (the model itself otherwise)."""

    return model.module if isinstance(model, DistributedDataParallel) else model


def launched_world_size() -> int:
    """The number of processes ``torchrun`` started this one among (``WORLD_SIZE``; 1 without torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def launched_rank() -> int:
    """This process's rank among those ``torchrun`` started (``RANK``; 0 without torchrun)."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


@contextlib.contextmanager
def joined_from_environment(device_type: str) -> Iterator[Group | None]:
    """Under ``torchrun``: the process group of its processes, joined here unless the caller already did.

    gloo for CPUs, nccl for CUDA (each rank on GPU ``LOCAL_RANK``). A group joined here is left at
    the end, every rank together when the block succeeded (a barrier: gloo may abort a rank whose
    peer already exited). Without torchrun (one process) nothing is joined and None is given.
    """
    dist = torch.distributed
    if launched_world_size() < 2 or (dist.is_available() and dist.is_initialized()):
        yield process_group()
        return
    if not dist.is_available():
        raise ParametersError(
            f"this is one of {launched_world_size()} processes (torchrun), but this torch has no torch.distributed: "
            "install a torch build with distributed support, or train without torchrun"
        )
    if device_type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    try:
        yield process_group()
        dist.barrier()
    finally:
        dist.destroy_process_group()


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    """``value`` summed over every rank (a new tensor; ``value`` itself is left as it was)."""
    total = value.detach().clone()
    torch.distributed.all_reduce(total)
    return total


class ShardBatches(Sampler[list[int]]):
    """Batches of this rank's shard from a :class:`RecordedDistributedSampler`: the built-in trainer's
    batch sampler under torchrun (the shape of its one-process sampler: ``set_epoch``,
    ``order_digest``, ``last_order``)."""

    def __init__(self, n: int, batch_size: int, *, group: Group, seed: int, shuffle: bool) -> None:
        self.batch_size = batch_size
        self.order_digest: str | None = None
        self.digests: list[str] = []
        self.shard = RecordedDistributedSampler(
            range(n), group=group, seed=seed, shuffle=shuffle, drop_last=False, on_order=self._note
        )

    def _note(self, digest: str) -> None:
        self.order_digest = digest
        self.digests.append(digest)

    @property
    def last_order(self) -> torch.Tensor | None:
        return self.shard.last_order

    def set_epoch(self, epoch: int) -> None:
        self.shard.passes = epoch

    def __iter__(self) -> Iterator[list[int]]:
        for batch in torch.split(torch.tensor(list(self.shard), dtype=torch.int64), self.batch_size):
            yield batch.tolist()

    def __len__(self) -> int:
        return (len(self.shard) + self.batch_size - 1) // self.batch_size


PEER_LOST = ("closed by peer", "Connection reset by peer", "NCCL communicator was aborted")


@contextlib.contextmanager
def peer_loss_as_interruption(group: Group | None) -> Iterator[None]:
    """Inside: the error of a collective operation whose peer died becomes :class:`RankLostError` (an
    interruption: a killed training's checkpoint is kept for ``--resume``); other errors pass unchanged."""
    try:
        yield
    except RuntimeError as exc:
        if group is None or isinstance(exc, ReprodlError) or not any(p in str(exc) for p in PEER_LOST):
            raise
        raise RankLostError(
            f"rank {group.rank} of {group.world_size} lost another rank (it died: killed, out of memory, or its own "
            f"error above), so the training stopped and no model was written ({_first_words(exc)}). "
            "With checkpoint_every, start it again under torchrun with --resume"
        ) from exc


def _first_words(exc: BaseException) -> str:
    """The start of a backend's error message (its advice for torch's own launcher left out)."""
    return str(exc).split(". This is typically")[0].splitlines()[0][:200]
