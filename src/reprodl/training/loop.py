"""Training with automatic provenance capture; the model is written as a dataset.

The paper's workflow runs as written:

    >>> train_ds = TensorDataSet(train_dataset_uri)                                # doctest: +SKIP
    >>> model = GenNet(**params.init_params)                                       # doctest: +SKIP
    >>> loss_fn = torch.nn.NLLLoss()                                               # doctest: +SKIP
    >>> optimiser = torch.optim.SGD(model.parameters(), lr=params.learning_rate)   # doctest: +SKIP
    >>> with DerivedDataSet(base_uri, "mnist_model", train_ds) as output_ds:       # doctest: +SKIP
    ...     train_model_with_metadata_capture(model, train_ds, optimiser, loss_fn, params, output_ds)

A training runs in five steps: its arguments are checked, what it needs to be redone is
captured (code, components, environment), the loop runs, the record is assembled, and the
model dataset is written (:mod:`reprodl.modeldataset.write`). Every seed comes from one
:class:`~reprodl.training.seeding.SeedPlan`, which also writes the record's seeds.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch.utils.data import DataLoader, Sampler

from reprodl import keys, trust
from reprodl.data.datasets import Batch, WrappedDataSet, collate
from reprodl.errors import IntegrityError, ParametersError, ReprodlError, TrainingDivergedError
from reprodl.modeldataset.weights import state_dict_sha256
from reprodl.modeldataset.write import DerivedDataSet, as_output, check_label_compatibility, parent_ref, write_model
from reprodl.provenance import (
    Architecture,
    CallableInfo,
    CodeInfo,
    DataRef,
    Determinism,
    Environment,
    EpochMetrics,
    Lineage,
    ModelRef,
    OptimizerInfo,
    ProvenanceRecord,
    Results,
    store_readmes_once,
)
from reprodl.provenance.record import DEFAULT_MODEL_NAME, DistributedInfo
from reprodl.store import normalise_uri
from reprodl.training.capture import (
    DeterminismSettings,
    capture_code,
    capture_environment,
    check_rebuildable,
    describe_architecture,
    describe_callable,
    describe_optimizer,
    require_clean,
)
from reprodl.training.checkpoint import (
    Checkpoint,
    RngReportingCollate,
    WorkerSeeder,
    check_unchanged,
    note_worker_state,
    read_checkpoint,
    restoring,
    resumed_record,
    rng_state,
    set_rng_state,
    skipped_restore,
    utcnow,
    write_checkpoint,
)
from reprodl.training.distributed import (
    Group,
    ShardBatches,
    all_reduce_sum,
    broadcast_from_rank0,
    gather,
    launched_world_size,
    on_rank0_first,
    peer_loss_as_interruption,
    process_group,
    unwrap,
)
from reprodl.training.order import order_digest
from reprodl.training.params import Parameters, check_trainer_keys
from reprodl.training.recorder import Recorder
from reprodl.training.seeding import SeedPlan
from reprodl.training.trace import StepCallback, StepTracer

EpochCallback = Callable[[EpochMetrics], None]
ProgressCallback = Callable[[str, int, int], None]
Initialisation = Literal["constructor", "stored", "parent"]
VALIDATION_SHARDED = "sharded over the ranks (every world_size-th sample), sums all-reduced: the whole set's metrics"


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


class _Concat(torch.utils.data.ConcatDataset):
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
        import bisect

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


def choose_device(requested: str | None) -> torch.device:
    """The torch device for ``requested`` ('auto' picks CUDA when available); refuses unusable ones."""
    if requested in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise ParametersError(f"device should be 'auto', 'cpu' or 'cuda[:N]', but got device={requested!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ParametersError(f"device {requested!r} was asked for but CUDA is not available here; use device='cpu'")
    return device


def evaluate_loss_accuracy(
    model: torch.nn.Module,
    ds: WrappedDataSet,
    loss_fn: Any,
    device: torch.device,
    batch_size: int = 256,
    *,
    group: Group | None = None,
) -> tuple[float, float]:
    """Mean loss and accuracy of ``model`` on ``ds`` (the model's train/eval mode is restored).

    In a process ``group`` each rank evaluates every ``world_size``-th sample (from its rank on)
    and the sums are all-reduced: every rank gets the metrics of the whole of ``ds``.
    """
    n = max(len(ds), 1)
    if group is None:
        loss_sum, correct = _loss_correct_sums(model, ds, loss_fn, device, batch_size)
        return float(loss_sum) / n, float(correct) / n
    shard = torch.utils.data.Subset(ds, range(group.rank, len(ds), group.world_size))
    loss_sum, correct = _loss_correct_sums(model, shard, loss_fn, device, batch_size)
    sums = all_reduce_sum(torch.stack([loss_sum.cpu(), correct.cpu().double()]))
    return float(sums[0]) / n, float(sums[1]) / n


@torch.no_grad()
def _loss_correct_sums(
    model: torch.nn.Module, ds: Any, loss_fn: Any, device: torch.device, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of the losses, number of correct predictions) of ``model`` on ``ds``, on the device."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, collate_fn=collate)
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        out = model(x)
        loss_sum += loss_fn(out, y).detach().double() * len(y)
        correct += (out.argmax(1) == y).sum()
    model.train(was_training)
    return loss_sum, correct


def _check_data(datasets: list[tuple[str, WrappedDataSet]], how: str) -> None:
    if how == "none":
        return
    problems = []
    for role, ds in datasets:
        report = ds.dataset.verify(deep=how == "deep")
        problems += [f"{role} dataset {ds.name} ({ds.uri}): {p}" for p in report.problems()]
    if problems:
        raise IntegrityError(
            "refusing to train: the data do not match their manifests:\n  " + "\n  ".join(problems), problems=problems
        )


def _check_not_empty(roles: list[tuple[str, WrappedDataSet]]) -> None:
    """Refuse a train or valid dataset that selects no samples (a split or usetype that left none)."""
    for role, ds in roles:
        if role in ("train", "valid") and len(ds) == 0:
            raise ParametersError(
                f"the {role} dataset {ds.name} ({ds.uri}) has no samples"
                + (f" of usetype {ds.usetype!r}" if ds.usetype else "")
                + ": check its split (`reprodl dataset info URI` shows the counts) or choose another usetype"
            )


def _diverged(name: str, epoch: int, batch: int, n_batches: int, loss: float) -> None:
    where = f"batch {batch + 1}/{n_batches} of epoch {epoch + 1}" if batch >= 0 else f"epoch {epoch + 1}"
    raise TrainingDivergedError(
        f"the training of {name!r} diverged: the loss became {loss} at {where}, so no model was written. "
        "Lower the learning rate, check the data for NaN/inf values, or pass allow_nonfinite_loss=True "
        "(params: {allow_nonfinite_loss: true}) to keep such a model"
    )


def _utcnow() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _initialisation(
    model: torch.nn.Module, init_params: dict[str, Any], seed: int, parent_sha: str | None, initial_sha: str
) -> Initialisation:
    """How the initial weights can be had again: from the parent, a seeded constructor, or stored."""
    if parent_sha is not None and parent_sha == initial_sha:
        return "parent"
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            fresh = type(model)(**init_params)
        if state_dict_sha256(fresh.state_dict()) == initial_sha:
            return "constructor"
    except Exception:  # noqa: BLE001 - a class that cannot be rebuilt from init_params
        pass
    return "stored"


@dataclasses.dataclass
class _Captured:
    """What a training captures before its first step, beside the code."""

    started: str
    t_start: float
    architecture: Architecture
    initial_state: dict[str, torch.Tensor]
    optimizer: OptimizerInfo
    loss: CallableInfo
    scheduler: CallableInfo | None
    environment: Environment
    parent: ModelRef | None


@dataclasses.dataclass
class _CapturedCode:
    info: CodeInfo
    patch: str | None
    files: dict[str, Path]


@dataclasses.dataclass
class _Trained:
    history: list[EpochMetrics]
    order_digests: list[str]
    determinism: Determinism
    wall_time_s: float
    optimizer_steps: int
    trace: StepTracer | None


def train_model_with_metadata_capture(
    model: torch.nn.Module,
    train_ds: WrappedDataSet,
    optimiser: torch.optim.Optimizer,
    loss_fn: Any,
    params: Parameters | dict[str, Any],
    output_ds: DerivedDataSet | Any,
    *,
    valid_ds: WrappedDataSet | None = None,
    scheduler: Any = None,
    device: str | torch.device | None = None,
    progress: bool | ProgressCallback = True,
    on_epoch: EpochCallback | None = None,
    model_name: str | None = None,
    reproduces: ModelRef | None = None,
    replicates: ModelRef | None = None,
    code_root: str | os.PathLike[str] | None = None,
    config: dict[str, Any] | None = None,
    require_clean_code: bool = False,
    store_untracked: bool = True,
    on_step: StepCallback | None = None,
    checkpoint_every: int | None = None,
) -> ProvenanceRecord:
    """Train ``model`` and write it, with its full provenance, into ``output_ds``.

    Captures components, parameters, data, seeds, determinism, data order, code, environment, metrics.
    ``require_clean_code=True`` refuses (:class:`DirtyCodeError`) uncommitted code (DeepDIVA's
    enforcement); otherwise the uncommitted patch and untracked files are stored with the model, but
    not git-ignored files, secrets (:data:`reprodl.training.capture.SECRET_FILE_PATTERNS`) or symbolic
    links; ``store_untracked=False`` stores none (the record names each one skipped and why).

    Each optimiser step is traced (:mod:`reprodl.training.trace`); ``on_step`` gets each row (True: stop);
    ``checkpoint_every=N``: a checkpoint every N epochs (``DerivedDataSet(..., resume=True)`` resumes).
    Under ``torchrun`` it trains with DistributedDataParallel. ``output_ds`` may be a ``DerivedDataSetCreator``.

    Returns the sealed :class:`ProvenanceRecord` (also stored as ``provenance.json``).
    """
    rerun = reproduces is not None or replicates is not None
    params, output_ds = _check_arguments(train_ds, params, output_ds, valid_ds, rerun=rerun)
    model, group = unwrap(model), _checked_group()
    code = _capture_code(code_root, config, require_clean_code=require_clean_code, store_untracked=store_untracked)
    roles = _checked_roles(output_ds, params, group)
    target = _rank_device(choose_device(str(device) if device is not None else params.device), group)
    captured = _capture(model, optimiser, loss_fn, scheduler, params, parent=output_ds.parent)
    recorder = _recorder(model, optimiser, scheduler, params, captured, on_step=on_step)
    report = _progress_reporter(progress) if group is None or group.rank == 0 else None
    loop = _Loop(model, optimiser, loss_fn, scheduler, params, output_ds, target, report, on_epoch, group=group)
    loop.recorder, name = recorder, model_name or output_ds.name
    loop.checkpoints = _checkpoints(
        output_ds, checkpoint_every, _fingerprint(params, config, roles, captured), group=group, on_step=on_step
    )
    try:
        trained = loop.run(recorder.seeds, t_start=captured.t_start)
    finally:
        recorder.close()
    fields = _training_fields(params, trained, loop, group, device=target)
    lineage = Lineage(parent=captured.parent, reproduces=reproduces, replicates=replicates)
    record = _make_record(recorder, model, captured, trained, fields, code.info, roles, name=name, lineage=lineage)
    write = functools.partial(_write, output_ds, model, record, captured, code, roles, trace=trained)
    return _write_on_rank0(group, output_ds, write)


def _recorder(
    model: torch.nn.Module,
    optimiser: torch.optim.Optimizer,
    scheduler: Any,
    params: Parameters,
    captured: _Captured,
    *,
    on_step: StepCallback | None,
) -> Recorder:
    """The training's recorder (:mod:`reprodl.training.recorder`): its seed plan, and the model and
    optimiser watched under the name ``model``; each trace row is taken once the trainer's update is over."""
    recorder = Recorder(SeedPlan(params.seed, params.num_workers), on_trace_row=on_step, defer_rows=True)
    recorder.watch(
        model,
        [optimiser],
        name=DEFAULT_MODEL_NAME,
        schedulers=[scheduler] if scheduler is not None else [],
        loss=captured.loss,
        init_params=params.init_params,
    )
    return recorder


def final_metric_names(validated: bool) -> tuple[str, ...]:
    """The metrics in a record's ``results.final``: with validation data, its loss and accuracy too."""
    return ("train_loss", "valid_loss", "valid_accuracy") if validated else ("train_loss",)


def _checked_roles(
    output_ds: DerivedDataSet, params: Parameters, group: Group | None
) -> list[tuple[str, WrappedDataSet]]:
    """The output's datasets by role, none empty, their data checked once (rank 0 first under DDP)."""
    roles = output_ds.datasets_by_role()
    _check_not_empty(roles)
    on_rank0_first(lambda: _check_data(roles, params.verify_data), group)
    return roles


def _checked_group() -> Group | None:
    """The process group trained in (None: one process); refuses torchrun without a joined process group."""
    group, n = process_group(), launched_world_size()
    if group is None and n > 1:
        raise ParametersError(
            f"this is one of {n} processes (torchrun), but no process group was joined: every process would "
            "train the whole data alone. Call torch.distributed.init_process_group('gloo') before "
            "DerivedDataSet, or run `reprodl train CONFIG` under torchrun, which joins it (docs/distributed.md)"
        )
    return group


def _rank_device(device: torch.device, group: Group | None) -> torch.device:
    """Under nccl, rank r's GPU (``LOCAL_RANK``); the device asked for otherwise."""
    if group is None or device.type != "cuda" or device.index is not None:
        return device
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


def _distributed_info(
    group: Group | None, params: Parameters, loop: _Loop, trained: _Trained
) -> tuple[DistributedInfo | None, int]:
    """The record's ``training.distributed`` (every rank's seed and shard orders, gathered) and world size."""
    if group is None:
        return None, 1
    assert isinstance(loop.sampler, ShardBatches)
    info = DistributedInfo(
        backend=group.backend,
        world_size=group.world_size,
        rank_seeds=[params.seed + r for r in range(group.world_size)],
        sampler=loop.sampler.shard.settings(),
        rank_order_digests=gather(list(trained.order_digests), group),
        validation=VALIDATION_SHARDED if loop.output_ds.valid_sets else None,
    )
    return info, group.world_size


def _write_on_rank0(group: Group | None, output_ds: DerivedDataSet, write: Callable[[], None]) -> ProvenanceRecord:
    """``write`` on rank 0 (or the only process); the other ranks get its sealed record, or fail with it.

    Returns the sealed record (``output_ds.record``).
    """
    if group is None or group.rank == 0:
        try:
            write()
        except BaseException:
            if group is not None:
                broadcast_from_rank0(None)
            raise
        assert output_ds.record is not None
        if group is not None:
            broadcast_from_rank0(output_ds.record.model_dump_json())
        return output_ds.record
    sealed = broadcast_from_rank0(None)
    if sealed is None:
        raise ReprodlError(
            f"rank 0 wrote no model dataset for {output_ds.name!r} (its error says why), "
            f"so rank {group.rank} ends with none either"
        )
    output_ds.record = ProvenanceRecord.model_validate_json(sealed)
    return output_ds.record


def _check_arguments(
    train_ds: WrappedDataSet,
    params: Parameters | dict[str, Any],
    output_ds: DerivedDataSet | Any,
    valid_ds: WrappedDataSet | None,
    *,
    rerun: bool,
) -> tuple[Parameters, DerivedDataSet]:
    """The parameters, validated, and the output (a dtoolcore creator wrapped: :func:`as_output`);
    ``valid_ds`` joins the output's validation sets."""
    output_ds = as_output(output_ds, train_ds)
    if not isinstance(params, Parameters):
        params = Parameters(**dict(params))
    if not rerun:  # a reproduction or replication trains as recorded, even parameters once left unused
        check_trainer_keys(params)
    if not output_ds.entered:
        raise ParametersError("output_ds must be entered first: use `with DerivedDataSet(...) as output_ds:`")
    if output_ds.record is not None:
        raise ParametersError(f"a model was already trained into {output_ds.name!r}; use a new DerivedDataSet")
    if not any(train_ds is d for d in output_ds.train_sets):
        raise ParametersError(
            f"train_ds ({train_ds.name}, {train_ds.uri}) is not a training dataset of the output "
            f"{output_ds.name!r}: pass the same dataset to DerivedDataSet(base_uri, name, train_ds) "
            "so the record names what the model was trained on"
        )
    if valid_ds is not None and valid_ds not in output_ds.valid_sets:
        output_ds.valid_sets.append(valid_ds)
    check_label_compatibility(output_ds.train_sets + output_ds.valid_sets)
    return params, output_ds


@dataclasses.dataclass
class _Checkpoints:
    """The checkpoints of one training: where, how often, what they must match, and the one resumed."""

    directory: Path
    every: int | None
    meta: dict[str, Any]
    resume: Checkpoint | None
    resumed: list[dict[str, Any]]
    seconds: list[float] = dataclasses.field(default_factory=list)
    written: Callable[[Path, int], None] | None = None  # told of each checkpoint written (path, step)

    def due(self, epochs_done: int, n_epochs: int) -> bool:
        return self.every is not None and epochs_done % self.every == 0 and epochs_done < n_epochs


def _fingerprint(
    params: Parameters, config: dict[str, Any] | None, roles: list[tuple[str, WrappedDataSet]], captured: _Captured
) -> dict[str, Any]:
    """What a resumed training must share with the killed one (its config, else its parameters and parts)."""
    data = {f"{role}[{i}]": ds.uuid for i, (role, ds) in enumerate(roles)}
    if config is not None:
        return {"config": {k: v for k, v in config.items() if k not in ("checkpoint_every", "source")}, "data": data}
    arch = captured.architecture
    return {
        "params": params.to_dict(),
        "data": data,
        "architecture": {"class": arch.import_path, "init_params": arch.init_params},
        "optimizer": captured.optimizer.model_dump(mode="json"),
    }


def _checkpoints(
    output_ds: DerivedDataSet,
    every: int | None,
    fingerprint: dict[str, Any],
    *,
    group: Group | None = None,
    on_step: StepCallback | None = None,
) -> _Checkpoints:
    """The training's checkpoints; when resuming, the latest one, refused if the config changed since.

    In a process ``group`` rank 0 writes them into its model dataset's staging area, and every
    rank resumes from there (its directory sent to the others). A re-run's ``on_step`` (a trace
    comparer, :mod:`reprodl.reproduction.replay`) may name a ``start_checkpoint`` to resume from
    and take each checkpoint written (``checkpoint_written``).
    """
    if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
        raise ParametersError(f"checkpoint_every should be a positive number of epochs, but got {every!r}")
    writer_dir = str(output_ds.writer.checkpoint_dir) if output_ds.writer is not None else None
    if group is not None:
        writer_dir = broadcast_from_rank0(writer_dir)
    assert writer_dir is not None
    directory = Path(writer_dir)
    meta = {
        "kind": "trainer",
        "name": output_ds.name,
        "base_uri": normalise_uri(output_ds.base_uri),
        "fingerprint": fingerprint,
    }
    start = getattr(on_step, "start_checkpoint", None)
    resume = Checkpoint(start) if start is not None else read_checkpoint(directory) if output_ds.resume else None
    if resume is not None:
        check_unchanged(resume.meta.get("fingerprint", {}), fingerprint, name=output_ds.name, where=resume.path)
    written = getattr(on_step, "checkpoint_written", None)
    return _Checkpoints(directory, every, meta, resume, resume.resumed() if resume is not None else [], written=written)


def _capture_code(
    code_root: str | os.PathLike[str] | None,
    config: dict[str, Any] | None,
    *,
    require_clean_code: bool,
    store_untracked: bool,
) -> _CapturedCode:
    """The code version, patch and untracked files (refused when dirty and clean code is required)."""
    info, patch, files = capture_code(code_root, store_untracked=store_untracked)
    if require_clean_code:
        require_clean(info)
    if config is not None:
        info.config = config
        info.config_file = config.get("source")
    return _CapturedCode(info, patch, files)


def _capture(
    model: torch.nn.Module,
    optimiser: torch.optim.Optimizer,
    loss_fn: Any,
    scheduler: Any,
    params: Parameters,
    *,
    parent: str | None,
) -> _Captured:
    """The start time, components, initial weights, parent and environment of a training."""
    started, t_start = _utcnow(), time.perf_counter()
    names = {id(p): n for n, p in model.named_parameters()}
    parent_model = parent_ref(parent)
    init_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    initial_sha = state_dict_sha256(init_state)
    arch = describe_architecture(model, params.init_params)
    parent_sha = parent_model.weights_sha256 if parent_model else None
    arch.initialisation = _initialisation(model, params.init_params, params.seed, parent_sha, initial_sha)
    arch.initial_weights_sha256 = initial_sha
    optimizer_info = describe_optimizer(optimiser, names)
    scheduler_info = describe_callable(scheduler) if scheduler is not None else None
    if scheduler_info is not None:
        check_rebuildable(optimiser, optimizer_info, scheduler, scheduler_info)
    return _Captured(
        started=started,
        t_start=t_start,
        architecture=arch,
        initial_state=init_state,
        optimizer=optimizer_info,
        loss=_describe_loss(loss_fn),
        scheduler=scheduler_info,
        environment=capture_environment(),
        parent=parent_model,
    )


def _describe_loss(loss_fn: Any) -> CallableInfo:
    """The loss's record; a function other than torch.nn.functional's losses is refused now, since
    no record could rebuild it (a loss class of your own is rebuilt with ``allow``)."""
    from reprodl import trust

    info = describe_callable(loss_fn)
    if isinstance(loss_fn, torch.nn.Module):
        return info
    path = f"{info.module}:{info.class_name}"
    if path not in trust.LOSS_FUNCTIONS:
        raise ParametersError(
            f"the loss function {path} cannot be rebuilt from a record, so the training could not be reproduced: "
            "use a torch.nn loss (torch.nn.NLLLoss()), one of torch.nn.functional's losses (F.nll_loss), "
            "or an nn.Module subclass of yours (reproduced with allow=['your.module'])"
        )
    return info


@dataclasses.dataclass
class _Loop:
    """The training loop: epochs of steps; metrics accumulate on the device (no per-batch sync)."""

    model: torch.nn.Module
    optimiser: torch.optim.Optimizer
    loss_fn: Any
    scheduler: Any
    params: Parameters
    output_ds: DerivedDataSet
    target: torch.device
    report: ProgressCallback | None
    on_epoch: EpochCallback | None
    optimizer_steps: int = 0
    recorder: Recorder | None = None  # its seeds, watched model and optimiser, step trace and data order
    sampler: EpochSampler | ShardBatches | None = None
    checkpoints: _Checkpoints | None = None
    worker_states: dict[int, Any] | None = None
    elapsed_before: float = 0.0
    group: Group | None = None
    net: torch.nn.Module | None = None  # the DistributedDataParallel wrapper trained through, under torchrun

    def run(self, seeds: SeedPlan, *, t_start: float) -> _Trained:
        """Every epoch, under the determinism settings, from the seeds of ``seeds``; a lost rank is an
        interruption (:class:`~reprodl.errors.RankLostError`: the checkpoint is kept)."""
        with peer_loss_as_interruption(self.group):
            try:
                return self._run(seeds, t_start=t_start)
            finally:
                if self.recorder is not None and self.recorder.tracer is not None:
                    self.recorder.tracer.close()  # an operation log left running by a failure

    def _run(self, seeds: SeedPlan, *, t_start: float) -> _Trained:
        sets = self.output_ds.train_sets
        data = sets[0] if len(sets) == 1 else _Concat(sets)
        ck = self.checkpoints
        if ck is not None and (ck.every is not None or ck.resume is not None):
            resumed = _rank_state(ck.resume.state, self.group) if ck.resume is not None else {}
            self.worker_states = dict(resumed.get("workers", {}))
        loader, sampler = make_loader(
            data,
            self.params.batch_size,
            seeds=seeds,
            shuffle=self.params.shuffle,
            device=self.target,
            worker_states=self.worker_states,
            group=self.group,
        )
        self.sampler = sampler
        recorder = self.recorder
        assert recorder is not None
        if ck is not None and ck.every and recorder.tracer is not None:  # the step before each checkpoint: logged too
            per_epoch = -(-len(loader) // self.params.accumulation_steps)  # (none after the last epoch)
            recorder.tracer.oplog_every = ck.every * per_epoch
            recorder.tracer.oplog_below = self.params.n_epochs * per_epoch
        history: list[EpochMetrics] = []
        order_digests = recorder.order_digests
        # The optimiser's state (momentum buffers...) follows the model to the device.
        self.model.to(self.target)
        self._wrap()
        with DeterminismSettings(self.params.deterministic, self.target.type) as determinism:
            recorder.apply_seeds(self.group.rank if self.group is not None else 0)  # rank r: seed + r
            self.model.train()
            start = self._resume(loader, history, order_digests) if ck is not None and ck.resume else 0
            for epoch in range(start, self.params.n_epochs):
                t_epoch = time.perf_counter()
                sampler.set_epoch(epoch)
                metrics = self._epoch(epoch, loader, n_samples=self._samples_per_epoch(len(data)))
                assert sampler.order_digest is not None
                recorder.on_order(sampler.order_digest)
                metrics.wall_time_s = time.perf_counter() - t_epoch
                history.append(metrics)
                if self.on_epoch:
                    self.on_epoch(metrics)
                if recorder.stop_requested:
                    break
                if ck is not None and ck.due(epoch + 1, self.params.n_epochs):
                    self._checkpoint(epoch + 1, loader, history, order_digests, t_start)
        if recorder.tracer is not None:
            recorder.tracer.flush()
        wall = self.elapsed_before + time.perf_counter() - t_start
        return _Trained(history, list(order_digests), determinism, wall, self.optimizer_steps, recorder.tracer)

    def _wrap(self) -> None:
        """Under torchrun: the model wrapped in DistributedDataParallel (its gradients averaged over the ranks)."""
        if self.group is None:
            return
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.target.index] if self.target.type == "cuda" else None
        self.net = DistributedDataParallel(self.model, device_ids=ids)

    def _samples_per_epoch(self, n: int) -> int:
        """Samples trained on per epoch, over every rank (the DistributedSampler pads the shards to one length)."""
        if self.group is None or not isinstance(self.sampler, ShardBatches):
            return n
        return len(self.sampler.shard) * self.group.world_size

    def _checkpoint(
        self, epochs_done: int, loader: DataLoader, history: list[EpochMetrics], digests: list[str], t_start: float
    ) -> None:
        """Write a checkpoint after ``epochs_done`` epochs: every state needed to continue bit for bit."""
        ck = self.checkpoints
        assert ck is not None and loader.generator is not None
        t0 = time.perf_counter()
        own = {
            "rng": rng_state(),
            "workers": dict(self.worker_states or {}),
            "loader_generator": loader.generator.get_state(),
        }
        state: dict[str, Any] = {"model": self.model.state_dict(), "optimizer": self.optimiser.state_dict(), **own}
        if self.group is not None:  # every rank's random states, written by rank 0
            state["ranks"] = gather({**own, "order_digests": list(digests)}, self.group)
            if self.group.rank != 0:
                return
        if self.scheduler is not None:
            state["scheduler"] = self.scheduler.state_dict()
        meta = {
            **ck.meta,
            "epoch": epochs_done,
            "step": self.optimizer_steps,
            "at": utcnow(),
            "history": [m.model_dump(mode="json") for m in history],
            "order_digests": list(digests),
            "resumed": ck.resumed,
            "elapsed_s": self.elapsed_before + time.perf_counter() - t_start,
        }
        tracer = self.recorder.tracer if self.recorder is not None else None
        path = write_checkpoint(ck.directory, step=self.optimizer_steps, state=state, meta=meta, tracer=tracer)
        ck.seconds.append(time.perf_counter() - t0)
        if ck.written is not None:
            ck.written(path, self.optimizer_steps)

    def _resume(self, loader: DataLoader, history: list[EpochMetrics], digests: list[str]) -> int:
        """Restore every state of the checkpoint resumed from; the epoch (from 0) to continue with."""
        assert self.checkpoints is not None and self.checkpoints.resume is not None and loader.generator is not None
        c = self.checkpoints.resume
        skip = skipped_restore()  # a negative control (tests): one restore left out
        with restoring(c):  # a state of another shape: a ResumeError, which keeps the checkpoint
            self.model.load_state_dict(c.state["model"])
            if skip != "optimizer":
                self.optimiser.load_state_dict(c.state["optimizer"])
            if self.scheduler is not None:
                self.scheduler.load_state_dict(c.state["scheduler"])
            own = _rank_state(c.state, self.group)
            if skip != "rng":
                set_rng_state(own["rng"])
            if skip != "loader":
                loader.generator.set_state(own["loader_generator"])
            history += [EpochMetrics.model_validate(m) for m in c.meta.get("history", [])]
            digests += list(own.get("order_digests", c.meta.get("order_digests", [])))  # this rank's shard orders
            self.optimizer_steps = int(c.meta["step"])
            self.elapsed_before = float(c.meta.get("elapsed_s", 0.0))
            if self.recorder is not None:
                self.recorder.set_steps(self.optimizer_steps)
                if self.recorder.tracer is not None:
                    c.restore_tracer(self.recorder.tracer)
            return int(c.meta["epoch"])

    def _epoch(self, epoch: int, loader: DataLoader, *, n_samples: int) -> EpochMetrics:
        """One epoch's steps, the scheduler's step, the divergence check and the validation."""
        loss_sum, first_bad = self._steps(epoch, loader)
        if self.group is not None:
            loss_sum = all_reduce_sum(loss_sum)  # every rank judges (and reports) the same loss
        lr_now = float(self.optimiser.param_groups[0].get("lr", float("nan")))
        if self.scheduler is not None and self.params.scheduler_interval == "epoch":
            self.scheduler.step()
        metrics = EpochMetrics(
            epoch=epoch + 1, train_loss=float(loss_sum) / n_samples, learning_rate=lr_now, wall_time_s=0.0
        )
        if not self.params.allow_nonfinite_loss and not math.isfinite(metrics.train_loss):
            _diverged(self.output_ds.name, epoch, int(first_bad), len(loader), metrics.train_loss)
        if self.output_ds.valid_sets:
            valid = self.output_ds.valid_sets[0]
            vl, va = evaluate_loss_accuracy(self.model, valid, self.loss_fn, self.target, group=self.group)
            metrics.valid_loss, metrics.valid_accuracy = vl, va
        return metrics

    def _steps(self, epoch: int, loader: DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum of the losses, index of the first batch whose loss is not finite or -1), on the device.

        With ``accumulation_steps`` k, each loss is divided by k and the optimiser steps after every
        k batches and after the epoch's last batch.
        """
        target = self.target
        loss_sum = torch.zeros((), device=target, dtype=torch.float64)
        first_bad = torch.full((), -1, device=target, dtype=torch.int64)
        n_batches = len(loader)
        k = self.params.accumulation_steps
        forward = self.net if self.net is not None else self.model
        self.optimiser.zero_grad(set_to_none=True)
        for i, batch in enumerate(loader):
            if self.worker_states is not None:
                note_worker_state(batch, self.worker_states)
            x, y = batch
            x = x.to(target, non_blocking=True)
            y = y.to(target, non_blocking=True)
            self._note_batch(i, x)
            loss = self.loss_fn(forward(x), y)
            (loss / k if k > 1 else loss).backward()
            if (i + 1) % k == 0 or i + 1 == n_batches:
                self._step(loss, epoch, i)
            loss_sum += loss.detach() * len(y)
            if not self.params.allow_nonfinite_loss:
                bad = (first_bad < 0) & ~torch.isfinite(loss.detach())
                first_bad = torch.where(bad, torch.full_like(first_bad, i), first_bad)
            if self.report:
                self.report(f"epoch {epoch + 1}/{self.params.n_epochs}", i + 1, n_batches)
            if self.recorder is not None and self.recorder.stop_requested:
                break
        return loss_sum, first_bad

    def _note_batch(self, i: int, x: torch.Tensor) -> None:
        """Tell the recorder batch ``i``'s sample indices (from the sampler's order) and inputs."""
        if self.recorder is None:
            return
        order = self.sampler.last_order if self.sampler is not None else None
        bs = self.params.batch_size
        self.recorder.batch(indices=order[i * bs : (i + 1) * bs] if order is not None else None, inputs=x)

    def _step(self, loss: torch.Tensor, epoch: int, i: int) -> None:
        """The update ending batch ``i`` of ``epoch`` (both from 0), then its trace row: the state after it."""
        if self.recorder is not None:
            self.recorder.where, self.recorder.loss = (epoch + 1, i + 1), loss
        self._update()
        if self.recorder is not None:
            self.recorder.take_row()

    def _update(self) -> None:
        """One optimiser step: the gradients clipped, the step counted, a per-step scheduler stepped."""
        params = self.params
        if params.grad_clip_value is not None:
            torch.nn.utils.clip_grad_value_(self.model.parameters(), params.grad_clip_value)
        if params.grad_clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), params.grad_clip_norm)
        self.optimiser.step()
        self.optimizer_steps += 1
        if self.scheduler is not None and params.scheduler_interval == "step":
            self.scheduler.step()
        self.optimiser.zero_grad(set_to_none=True)


def _rank_state(state: dict[str, Any], group: Group | None) -> dict[str, Any]:
    """This rank's random states (Python, NumPy, torch, workers, loader) in a checkpoint's ``state``."""
    ranks = state.get("ranks")
    found, here = len(ranks) if isinstance(ranks, list) else 1, group.world_size if group is not None else 1
    if found != here:
        raise ParametersError(
            f"the checkpoint holds the random states of {found} process(es), but this training runs in {here}: "
            f"resume it with as many processes as it was started with (torchrun --nproc-per-node {found})"
        )
    return dict(ranks[group.rank]) if group is not None and isinstance(ranks, list) else state


def _training_fields(
    params: Parameters, trained: _Trained, loop: _Loop, group: Group | None, *, device: torch.device
) -> dict[str, Any]:
    """The record's ``training`` fields the trainer knows (the recorder adds components, seeds, order, steps)."""
    checkpoints = loop.checkpoints
    distributed, world_size = _distributed_info(group, params, loop, trained)
    return {
        "distributed": distributed,
        "world_size": world_size,
        "epochs": params.n_epochs,
        "batch_size": params.batch_size,
        "shuffle": params.shuffle,
        "num_workers": params.num_workers,
        "params": params.to_dict(),
        "determinism": trained.determinism,
        "device": str(device),
        "checkpoint_every": checkpoints.every if checkpoints is not None else None,
        "resumed": resumed_record(checkpoints.resumed) if checkpoints is not None else None,
    }


def _make_record(
    recorder: Recorder,
    model: torch.nn.Module,
    captured: _Captured,
    trained: _Trained,
    training_fields: dict[str, Any],
    code: CodeInfo,
    roles: list[tuple[str, WrappedDataSet]],
    *,
    name: str,
    lineage: Lineage,
) -> ProvenanceRecord:
    """The provenance record of a finished training, built by its recorder."""
    data_refs = store_readmes_once(
        [DataRef.model_validate({"role": role, **ds.provenance_info()}) for role, ds in roles]
    )
    history = trained.history
    final = {name: getattr(history[-1], name) for name in final_metric_names(history[-1].valid_accuracy is not None)}
    results = Results(
        history=history,
        final=final,
        wall_time_s=trained.wall_time_s,
        started_at=captured.started,
        finished_at=_utcnow(),
    )
    weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    models, optimizers = recorder.components({DEFAULT_MODEL_NAME: weights}, {DEFAULT_MODEL_NAME: keys.WEIGHTS_FILE})
    return recorder.record(
        name=name,
        started=captured.started,
        models=models,
        training=recorder.training(models, optimizers, **training_fields),
        data=data_refs,
        code=code,
        environment=captured.environment,
        results=results,
        lineage=lineage,
        architecture=captured.architecture,
        saved_at_step=trained.optimizer_steps,
    )


def _write(
    output_ds: DerivedDataSet,
    model: torch.nn.Module,
    record: ProvenanceRecord,
    captured: _Captured,
    code: _CapturedCode,
    roles: list[tuple[str, WrappedDataSet]],
    *,
    trace: _Trained,
) -> None:
    """The model dataset's items: weights, record, copies of the data's manifests, code, step trace."""
    manifests = {}
    for ref, (_, ds) in zip(record.data, roles):
        ref.manifest_item = f"{keys.MANIFESTS_DIR}/{ds.uuid}.json"
        manifests[ref.manifest_item] = ds.dataset.manifest_entries()
    stored = captured.architecture.initialisation == "stored"
    write_model(
        output_ds,
        model,
        record,
        patch=code.patch,
        manifests=manifests,
        code_files=code.files,
        initial_state=captured.initial_state if stored else None,
        trace=trace.trace.to_bytes() if trace.trace is not None else None,
        oplogs=trace.trace.oplog_items() if trace.trace is not None else None,
    )


def _progress_reporter(progress: bool | Callable[[str, int, int], None]) -> Callable[[str, int, int], None] | None:
    """The per-batch progress callback: the caller's, or (``True``) a bar on stderr shown only
    to a person at a terminal, so scripts and logs stay clean; ``False`` turns it off."""
    import sys

    if callable(progress):
        return progress
    if not progress or not sys.stderr.isatty():
        return None
    state = {"last": 0.0}

    def report(label: str, done: int, total: int) -> None:
        now = time.perf_counter()
        if done == total or now - state["last"] > 0.5:
            state["last"] = now
            bar = "#" * int(30 * done / total)
            sys.stderr.write(f"\r{label} [{bar:<30}] {done}/{total}")
            if done == total:
                sys.stderr.write("\n")
            sys.stderr.flush()

    return report
