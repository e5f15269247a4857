"""The run API: record any PyTorch training, the user's own loop, with a few lines changed.

    >>> import reprodl                                                            # doctest: +SKIP
    >>> with reprodl.start_run(base_uri, "mnist", seed=1, params=vars(args)) as run:  # doctest: +SKIP
    ...     train_ds = run.use(TensorDataSet(uri, usetype="train"))
    ...     run.watch(model, optimizer, scheduler=scheduler, loss=F.nll_loss)
    ...     loader = run.loader(train_ds, batch_size=64, shuffle=True)
    ...     for epoch in range(1, args.epochs + 1):
    ...         ...                                        # the user's own loop, unchanged
    ...         run.log(epoch=epoch, valid_accuracy=acc)
    ...     run.save(model)
    >>> run.uri                                                                   # doctest: +SKIP

Or without re-indenting the loop: ``run = reprodl.start_run(...)``, the same calls, then
``run.finish()`` where the ``with`` block would have ended.

On entry :func:`start_run` seeds Python, NumPy and torch, applies the determinism settings and
captures code (with a source snapshot) and environment; on a clean exit it writes the model
dataset as the built-in trainer does. On an exception, or when ``run.save`` was never called,
nothing is written, and the exception (or a :class:`ParametersError`) says why.

A run started by ``reprodl reproduce`` (which sets :data:`reprodl.keys.RUN_REDIRECT_ENV`) writes
into the reproduction's output base instead, with the recorded seed and ``lineage.reproduces``.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import functools
import itertools
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from reprodl import keys
from reprodl.data.datasets import WrappedDataSet, collate
from reprodl.errors import ParametersError, ReprodlError, add_note
from reprodl.provenance import (
    CallableInfo,
    CodeInfo,
    DataRef,
    EpochMetrics,
    Lineage,
    ModelRef,
    ProvenanceRecord,
    Results,
    store_readmes_once,
)
from reprodl.provenance.record import DistributedInfo, RunCommand
from reprodl.store import DatasetWriter, create_dataset, local_path
from reprodl.training import current, datarefs
from reprodl.training.capture import (
    DeterminismSettings,
    capture_code,
    capture_environment,
    check_deterministic,
    describe_callable,
    jsonable,
    require_clean,
)
from reprodl.training.checkpoint import resumed_record, set_rng_state
from reprodl.training.components import ComponentWatcher, check_name, original_module
from reprodl.training.datarefs import check_dataset, describe_other_data
from reprodl.training.distributed import (
    Group,
    RecordedDistributedSampler,
    broadcast_from_rank0,
    gather,
    on_rank0_first,
    process_group,
)
from reprodl.training.order import order_digest, tap_order
from reprodl.training.recorder import NO_LOSS, NO_OPTIMIZER, Recorder
from reprodl.training.resume import RunCheckpoints
from reprodl.training.seeding import SeedPlan, order_seed
from reprodl.training.snapshot import capture_snapshot
from reprodl.training.tensorboard import TensorBoardLogger
from reprodl.training.trace import StepTracer

ROLES = ("train", "valid", "test")
IN_MEMORY = "in-memory"
UNVERIFIED = "unverified"


def start_run(
    base_uri: str,
    name: str | None = None,
    *,
    seed: int = 0,
    params: Mapping[str, Any] | None = None,
    deterministic: bool | Literal["warn"] = True,
    require_clean_code: bool = False,
    tensorboard: str | os.PathLike[str] | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
) -> Run:
    """A :class:`Run`, started: use it as a context manager around the user's own training loop,
    or keep it (``run = start_run(...)``) and end it with :meth:`Run.finish` (no re-indenting).

    Args:
        base_uri: where to create the model dataset (path, file://, s3://); a missing local
            directory is created.
        name: the model dataset's name (default: the script's name, the time and a random
            suffix, so two runs never share one).
        seed: seeds Python, NumPy and torch on entry, and the loaders of :meth:`Run.loader`.
        params: the run's parameters, recorded verbatim (``vars(args)`` for argparse).
        deterministic: apply torch's bitwise-determinism settings (else "statistical" mode); an
            operation torch cannot run deterministically raises :class:`NondeterministicOperationError`.
            ``"warn"``: run such operations, and list them in the record.
        require_clean_code: refuse (:class:`DirtyCodeError`) unless the code is committed.
        tensorboard: a TensorBoard log directory: each ``run.log`` is also written there as
            scalars (step = the epoch or step logged); needs the ``tensorboard`` extra.
        checkpoint_every: checkpoint every N optimiser steps (model, optimiser, scheduler, random
            states, loader positions) into the unfinished model's staging area.
        resume: continue the killed run of this name and base from its last checkpoint; iterate
            the epochs with :meth:`Run.epochs` so the loop starts where it was
            (:class:`ResumeError` when there is none, or ``params``/``seed``/the watched parts changed).
    """
    run = Run(
        base_uri,
        name,
        seed=seed,
        params=params,
        deterministic=deterministic,
        require_clean_code=require_clean_code,
        tensorboard=tensorboard,
        checkpoint_every=checkpoint_every,
        resume=resume,
    )
    return run.__enter__()  # started now: ``with`` enters it again (a no-op), ``run.finish()`` ends it


class _Output:
    """What ``write_model`` writes through: the open writer; it keeps the sealed record."""

    def __init__(self, writer: DatasetWriter) -> None:
        self.writer: DatasetWriter | None = writer
        self.record: ProvenanceRecord | None = None
        self.extra_readme: dict[str, Any] = {}  # a run's README holds what reprodl writes only


class _SavedState(torch.nn.Module):
    """The weights as they were at ``run.save`` (a module that only returns them)."""

    def __init__(self, state: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self._saved = state

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:  # type: ignore[override]  # the saved weights whatever the arguments
        return dict(self._saved)


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


class _TracedLoader(DataLoader):
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


class Run:
    """One training run of the user's own loop; made by :func:`start_run`.

    After a clean exit ``uri`` is the model dataset's URI and ``record`` its provenance record.
    """

    def __init__(
        self,
        base_uri: str,
        name: str | None = None,
        *,
        seed: int = 0,
        params: Mapping[str, Any] | None = None,
        deterministic: bool | Literal["warn"] = True,
        require_clean_code: bool = False,
        tensorboard: str | os.PathLike[str] | None = None,
        checkpoint_every: int | None = None,
        resume: bool = False,
    ) -> None:
        self.base_uri, self.name, self.seed = base_uri, name or default_name(), int(seed)
        self._named = name is not None
        self.tensorboard = tensorboard
        self.checkpoints = RunCheckpoints(checkpoint_every, resume=resume)
        self.deterministic, self.require_clean_code = check_deterministic(deterministic), require_clean_code
        self.params: dict[str, Any] = jsonable(dict(params or {}))
        self.uri: str | None = None
        self.record: ProvenanceRecord | None = None
        self.reproduces: ModelRef | None = None
        self._redirect: dict[str, Any] | None = None
        self._stack: contextlib.ExitStack | None = None
        self._data: list[tuple[DataRef, Any]] = []  # (its record, the dataset it describes)
        self._given: list[tuple[Any, str]] = []  # (the object given to use, its role)
        self._logged: list[dict[str, Any]] = []
        # seeds, watched components, steps, trace and data order: the one recording core
        self._recorder = Recorder(SeedPlan(self.seed), after_step=self._after_step)
        self._loader_info: dict[str, Any] = {}
        self._watched: dict[str, Any] = {}  # the first model's parts (what a checkpoint must find again)
        self._watch_batch_size = 0
        self._saved_at_step: int | None = None
        self._saved: dict[str, dict[str, torch.Tensor]] | None = None  # name -> weights, the default first
        self._device = "cpu"
        self._n_loaders = 0
        self._tb: TensorBoardLogger | None = None
        self._loaders: list[_TracedLoader] = []
        self._components: tuple[Any, Any, Any] | None = None  # (model, optimizer, scheduler)
        self._group: Group | None = None
        self._sampler_settings: dict[str, Any] = {}
        self._rank_digests: list[list[str]] = []

    # --- what the recorder keeps (read and set by the checkpoints, :mod:`.resume`) -------------
    @property
    def seeds(self) -> SeedPlan:
        """The run's seed plan."""
        return self._recorder.seeds

    @property
    def _steps(self) -> int:
        return self._recorder.steps

    @_steps.setter
    def _steps(self, steps: int) -> None:
        self._recorder.set_steps(steps)

    @property
    def _where(self) -> tuple[int, int]:
        """(pass, batch) of the training loader's last batch."""
        return self._recorder.where

    @_where.setter
    def _where(self, where: tuple[int, int]) -> None:
        self._recorder.where = where

    @property
    def _order_digests(self) -> list[str]:
        return self._recorder.order_digests

    @property
    def _tracer(self) -> StepTracer | None:
        return self._recorder.tracer

    @property
    def _watcher(self) -> ComponentWatcher | None:
        return self._recorder.watcher

    # --- the context ---------------------------------------------------------------------
    def __enter__(self) -> Run:
        if self._stack is not None:  # started by start_run already
            return self
        self._apply_redirect()
        self._t0, self._started = time.perf_counter(), _utcnow()
        self._group = process_group()
        if self._group is not None and (self.checkpoints.every or self.checkpoints.resume):
            raise ParametersError(
                "checkpoint_every and resume are not supported in a multi-process (DistributedDataParallel) run "
                "yet: leave them out under torchrun"
            )
        stack = contextlib.ExitStack()
        try:
            self._recorder.seeds = SeedPlan(self.seed)  # a reproduction's seed, when redirected
            self._recorder.trace_kind = (self._redirect or {}).get("trace_kind")
            self._open_output(stack)
            device_type = "cuda" if torch.cuda.is_available() else "cpu"
            self._determinism = DeterminismSettings(self.deterministic, device_type)
            self.determinism = stack.enter_context(self._determinism)
            self._tb = stack.enter_context(TensorBoardLogger(self.tensorboard)) if self.tensorboard else None
            self._recorder.apply_seeds(self._rank)  # rank r: seed + r
        except BaseException:
            stack.__exit__(*sys.exc_info())  # with the error: the output is discarded, not frozen empty
            raise
        self._stack = stack
        current.started(self)  # reprodl.current_run()
        atexit.register(self._abandon)
        return self

    def finish(self) -> str | None:
        """End a run kept as ``run = start_run(...)``: what a clean exit of its ``with`` block does.

        Writes the model dataset (refused, with nothing written, when ``run.save`` was never
        called) and returns its URI. A run neither finished nor ended by a ``with`` block
        writes nothing: the unfinished model is removed when the process ends.
        """
        if self._stack is None:
            raise ParametersError(
                f"the run {self.name!r} is not running: it was finished already (or never started); "
                "call run.finish() once, after run.save(model)"
            )
        self.__exit__(None, None, None)
        return self.uri

    def _abandon(self) -> None:
        """At the end of the process: a run never finished is discarded (nothing is written)."""
        if self._stack is not None:
            error = ParametersError(f"the run {self.name!r} was never finished (run.finish()), so nothing was written")
            self.__exit__(type(error), error, None)

    @property
    def _rank(self) -> int:
        return self._group.rank if self._group is not None else 0

    def _open_output(self, stack: contextlib.ExitStack) -> None:
        """On rank 0 (or the only process): the unfinished model dataset; code and environment captured."""
        if self._rank != 0:
            return
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="reprodl-run-")))
        base = local_path(self.base_uri)
        if base is not None:
            base.mkdir(parents=True, exist_ok=True)  # a missing base directory is created
        resume_from = self.checkpoints.find(self) if self.checkpoints.resume and not self._redirect else None
        self._writer = stack.enter_context(create_dataset(self.base_uri, self.name, resume_from=resume_from))
        self.checkpoints.open(self, self._writer.checkpoint_dir, resuming=resume_from is not None)
        self._capture(workdir)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        assert self._stack is not None
        atexit.unregister(self._abandon)
        if exc_type is None:
            self._recorder.complete_pending()
        self._recorder.close()  # the tracer's operation log a failure left running closed too
        stack, self._stack = self._stack, None
        current.ended(self)
        if exc_type is not None:
            add_note(exc, f"reprodl: the run {self.name!r} raised, so no model dataset was written")
            return bool(stack.__exit__(exc_type, exc, tb))  # discards the unfinished dataset
        if self._group is not None:
            try:
                return self._exit_distributed(stack)
            finally:
                self._release()
        return self._finish(stack)

    def _release(self) -> None:
        """Let go of the watched model (a DistributedDataParallel wrapper), optimiser and loaders.

        The run must not be what keeps a wrapper (its reducer, its process group) alive after the
        ``with`` block: the script decides when those go (docs/distributed.md says how to end).
        """
        self._components, self._watched, self._loaders = None, {}, []
        self._recorder.watcher = self._recorder.tracer = None

    def _exit_distributed(self, stack: contextlib.ExitStack) -> bool:
        """Every rank's order digests gathered; rank 0 writes the model, the others learn its URI."""
        group = self._group
        assert group is not None
        self._rank_digests = gather(list(self._order_digests), group)
        if group.rank != 0:
            stack.__exit__(None, None, None)
            self.uri = broadcast_from_rank0(None, then_barrier=True)
            if self.uri is None:
                raise ReprodlError(
                    f"rank 0 wrote no model dataset for the run {self.name!r} (its error says why), "
                    f"so rank {group.rank} ends with none either"
                )
            return False
        try:
            self._finish(stack)
        except BaseException:
            broadcast_from_rank0(None, then_barrier=True)
            raise
        broadcast_from_rank0(self.uri, then_barrier=True)
        return False

    def _finish(self, stack: contextlib.ExitStack) -> bool:
        """Write the model dataset (refused without ``run.save``) then frozen."""
        if self._saved is None:
            error = ParametersError(
                f"the run {self.name!r} ended without run.save(model), so no model dataset was written: "
                "call run.save(model) inside the with-block, after training"
            )
            stack.__exit__(type(error), error, None)
            raise error
        try:
            self._write()
        except BaseException as error:
            stack.__exit__(type(error), error, error.__traceback__)
            raise
        stack.__exit__(None, None, None)
        self.uri = self._writer.uri
        self._report_redirect()
        return False

    def _apply_redirect(self) -> None:
        """Inside ``reprodl reproduce``: write into its output base, with its seed and lineage."""
        raw = os.environ.get(keys.RUN_REDIRECT_ENV)
        if not raw:
            return
        self._redirect = redirect = json.loads(raw)
        self.base_uri = redirect["base_uri"]
        if not self._named or self.name == redirect.get("original_name"):
            self.name = redirect["name"]
        self.seed = int(redirect.get("seed", self.seed))
        if redirect.get("reproduces"):
            self.reproduces = ModelRef.model_validate(redirect["reproduces"])

    def _report_redirect(self) -> None:
        if self._redirect and self._redirect.get("report_file"):
            with open(self._redirect["report_file"], "a", encoding="utf-8") as f:
                f.write(json.dumps({"name": self.name, "uri": self.uri}) + "\n")

    def _capture(self, workdir: Path) -> None:
        code, self._patch, self._code_files = capture_code(None)
        if self.require_clean_code:
            require_clean(code)
        code.run = run_command(code, self.seed)
        code.snapshot, tar = capture_snapshot(code.git, workdir)
        if tar is not None:
            self._code_files[keys.CODE_SNAPSHOT_FILE] = tar
        self._code: CodeInfo = code
        self._environment = capture_environment()

    # --- what the user calls -------------------------------------------------------------
    def use(self, ds_or_uri: Any, role: str = "train") -> Any:
        """Record a dataset in ``role`` (train, valid or test) and return it (opened, for a path or URI).

        A reprodl dataset is checked against its manifest (as training does) and recorded with
        its UUID, manifest digest and path relative to the working directory (a relative path
        that leads nowhere is refused here); a ``Subset`` or ``ConcatDataset`` is recorded as
        the datasets it is made of, with the subset's indices digest; an in-memory tensor,
        array or ``TensorDataset`` is hashed; any other dataset is recorded by class and
        marked unverified data (:mod:`reprodl.training.datarefs`).
        """
        if role not in ROLES:
            raise ParametersError(f"role should be one of {list(ROLES)}, but got role={role!r}")
        ds = datarefs.opened(ds_or_uri, role, (self._redirect or {}).get("data", {}))
        for leaf, views in datarefs.leaves(ds):
            if isinstance(leaf, WrappedDataSet):
                on_rank0_first(functools.partial(check_dataset, role, leaf), self._group)  # once, not per rank
                ref = datarefs.describe_wrapped(leaf, role)
            else:
                ref = describe_other_data(leaf, role)
            ref.views = views
            self._data.append((ref, leaf))
        self._given.append((ds, role))
        return ds

    def watch(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | Sequence[torch.optim.Optimizer] | None = None,
        *,
        scheduler: Any = None,
        loss: Any = None,
        init_params: Mapping[str, Any] | None = None,
        name: str | None = None,
        batch_size: int | None = None,
    ) -> None:
        """Add a model to the record, with its optimisers, schedulers and loss, under ``name``; count its steps.

        Call it once per model (a GAN: once for the generator, once for the discriminator); each
        call adds. ``optimizer``: one, a list, or None for a model updated by hand (a step is then
        counted per backward pass that reaches it). ``scheduler``: one, or a list (each paired with
        the optimiser it schedules). ``name``: else the class name (or the key ``run.save`` gives).
        ``init_params`` are the keyword arguments the model was built with, when known;
        ``batch_size`` the samples per batch when the loop batches its data itself (a
        :meth:`loader` records its own). A ``torch.compile``'d model is recorded by its original
        class and weight names. What each step applied (learning rates, accumulation, autocast,
        clipping) is recorded as observed (:mod:`reprodl.training.components`).
        """
        if isinstance(optimizer, torch.optim.Optimizer):
            optimizers = [optimizer]
        else:
            optimizers = list(optimizer or [])
        schedulers = list(scheduler) if isinstance(scheduler, (list, tuple)) else [scheduler] * (scheduler is not None)
        recorder = self._recorder
        recorder.watch(
            model, optimizers, name=name, schedulers=schedulers, loss=describe_loss(loss), init_params=init_params
        )
        self._determinism.check_in_force()  # a compiled model has loaded inductor: its deterministic flag set
        if batch_size is not None:
            self._watch_batch_size = int(batch_size)
        first = recorder.models[0]
        if (len(recorder.models) > 1 or len(first.optimizers) != 1) and (
            self.checkpoints.every or self.checkpoints.resume
        ):
            raise ParametersError(
                "checkpoint_every and resume checkpoint one model with one optimiser: leave them out for a run "
                "that watches several models, several optimisers or a model updated by hand"
            )
        opt = first.optimizers[0] if first.optimizers else None
        self._watched = {
            "architecture": first.architecture,
            "optimizer": opt.info if opt is not None else NO_OPTIMIZER,
            "scheduler": describe_callable(opt.scheduler) if opt is not None and opt.scheduler is not None else None,
            "loss": first.loss,
        }
        self._components = (first.module, opt.optimizer if opt else None, opt.scheduler if opt else None)
        if recorder.tracer is not None:
            recorder.tracer.oplog_every = self.checkpoints.every  # the step before each checkpoint: logged too
        if len(recorder.models) == 1:
            self.checkpoints.watched(self)

    def _after_step(self) -> None:
        """After a step was counted and traced: the determinism check (first step), a checkpoint when due."""
        if self._steps == 1:
            self._determinism.check_in_force()
        self.checkpoints.after_step(self)

    def epochs(self, n: int, *, start: int = 1) -> range:
        """The epoch numbers ``start .. start + n - 1``; resumed, from the epoch the run was killed in.

        Iterate your epochs with it (``for epoch in run.epochs(args.epochs):``) so a resumed run
        skips the epochs its checkpoint had finished.
        """
        return range(start + self.checkpoints.epochs_done, start + n)

    def _on_batch(self, epoch: int, batch: int, indices: torch.Tensor | None, data: Any) -> None:
        """A batch of the training loader: where the run is, and what the next step learns from."""
        self._where = (epoch, batch)
        self._recorder.batch(indices=indices, inputs=data[0] if isinstance(data, (list, tuple)) and data else data)

    def loader(self, ds: Any, batch_size: int = 1, shuffle: bool = False, **kw: Any) -> DataLoader:
        """A DataLoader whose order is seeded from the run's seed and recorded (a digest per pass).

        ``kw`` goes to ``DataLoader`` (num_workers, drop_last, pin_memory...). With your own
        ``sampler=`` or ``batch_sampler=`` the order is yours, and the indices it gives are
        recorded as it runs; an ``IterableDataset``'s order is its own, and the samples it
        yields are recorded (a digest per pass over their content). A dataset not yet recorded
        is recorded as training data.
        """
        if not any(d is ds for d, _ in self._given):
            self.use(ds)
        role = next(r for d, r in self._given if d is ds)
        index = self._n_loaders
        self._n_loaders += 1
        on_order = self._recorder.on_order if role == "train" else (lambda _digest: None)
        custom = datarefs.custom_order(ds, kw, shuffle=shuffle, on_order=on_order)
        if custom is not None and (self._group is not None or self.checkpoints.every or self.checkpoints.resume):
            raise ParametersError(
                f"run.loader with {'an IterableDataset' if custom == 'stream' else custom + '='} cannot be sharded "
                "over processes or checkpointed yet: let run.loader choose the order (shuffle=) under torchrun "
                "or with checkpoint_every/resume"
            )
        if custom is None:
            kw["sampler"] = self._sampler(ds, index, shuffle, bool(kw.get("drop_last", False)), on_order)
        if custom != "batch_sampler":
            kw["batch_size"] = batch_size
        g = torch.Generator()
        g.manual_seed(self.seeds.dataloader_generator + index)
        if isinstance(ds, WrappedDataSet):
            kw.setdefault("collate_fn", collate)
        if role == "train" and not self._loader_info:
            size = getattr(kw.get("batch_sampler"), "batch_size", None) or batch_size
            self._loader_info = {"batch_size": size, "shuffle": shuffle, "num_workers": kw.get("num_workers", 0)}
        loader = _TracedLoader(ds, generator=g, **kw)
        if custom == "stream":
            loader.on_stream_pass = on_order
        if role == "train":
            loader.on_batch = self._on_batch
        self._loaders.append(loader)
        self.checkpoints.loader_made(self, loader, index)
        return loader

    def _sampler(self, ds: Any, index: int, shuffle: bool, drop_last: bool, on_order: Any) -> Sampler[int]:
        """The run's own order for loader ``index``: seeded from the run's seed, a digest per pass."""
        seed = self.seeds.dataloader_generator + index
        if self._group is None:
            return _RecordedOrder(len(ds), seed=seed, shuffle=shuffle, on_order=on_order)
        # each rank its shard, in an order seeded alike on every rank
        sampler = RecordedDistributedSampler(
            ds, group=self._group, seed=seed, shuffle=shuffle, drop_last=drop_last, on_order=on_order
        )
        if on_order == self._recorder.on_order and not self._sampler_settings:
            self._sampler_settings = sampler.settings()
        return sampler

    def record_loader(self, loader: DataLoader) -> None:
        """Record a training loader the run did not build (batch size, shuffle, workers; not its order).

        For loaders made elsewhere (a Lightning DataModule's); :meth:`loader` records its own.
        """
        if not self._loader_info:
            self._loader_info = {
                "batch_size": loader.batch_size or 0,
                "shuffle": isinstance(loader.sampler, torch.utils.data.RandomSampler),
                "num_workers": loader.num_workers,
            }

    def record_order(self, loader: DataLoader) -> bool:
        """Record the sample order of a training loader the run did not build: a digest per pass.

        For loaders made elsewhere (a Lightning DataModule's), tapped between their batch sampler
        and sampler (:mod:`reprodl.training.order`); returns False, and records why in
        ``training.data_order_not_recorded``, when the loader's order cannot be read.
        """
        reason = tap_order(loader, self._recorder.on_order)
        if reason is not None:
            self.order_not_recorded(reason)
        return reason is None

    def order_not_recorded(self, reason: str) -> None:
        """Say in the record why the data order was not recorded per epoch (the first reason is kept)."""
        self._recorder.not_recorded(reason)

    @property
    def order_digests(self) -> list[str]:
        """The training data order's digests recorded so far, one per pass."""
        return list(self._order_digests)

    def log(self, *, epoch: int | None = None, step: int | None = None, **metrics: Any) -> None:
        """Record metrics for an epoch (``epoch=``) or a step (``step=``)."""
        if epoch is None and step is None:
            raise ParametersError("run.log needs epoch= or step= to say when the metrics were measured")
        entry: dict[str, Any] = {k: v for k, v in (("epoch", epoch), ("step", step)) if v is not None}
        entry.update({k: _number(v) for k, v in metrics.items()})
        self._logged.append(entry)
        if self._tb is not None:
            self._tb.log(int(step if step is not None else epoch or 0), metrics)

    def log_params(self, mapping: Mapping[str, Any]) -> None:
        """Add parameters to the record (JSON-able form)."""
        self.params.update(jsonable(dict(mapping)))

    def save(self, model: torch.nn.Module | Mapping[str, torch.nn.Module]) -> None:
        """Keep the weights as they are now; they are written when the run ends cleanly.

        ``model``: the model, or ``{"generator": G, "discriminator": D}`` for several (every one
        watched; the keys name them, the first is the default ``TrainedTorchModel`` loads).
        """
        if self._watcher is None or not self._watcher.models:
            raise ParametersError(
                "call run.watch(model, optimizer) before run.save(model): the record needs the optimiser"
            )
        if not any(r.role == "train" for r, _ in self._data):
            raise ParametersError(
                "no training data was recorded: pass it to run.use(dataset), or build the loader with "
                "run.loader(dataset)"
            )
        self._watcher.complete_pending()
        saved: dict[str, dict[str, torch.Tensor]] = {}
        if not isinstance(model, Mapping):
            watched = self._watcher.find(model) or self._watcher.models[0]
            saved[watched.name] = _state(model)
        elif not model:
            raise ParametersError("run.save got an empty mapping: give {name: model} for each model to save")
        for key, module in model.items() if isinstance(model, Mapping) else ():
            found = self._watcher.find(module)
            if found is None:
                raise ParametersError(
                    f"run.save got {key!r}: a {type(module).__qualname__} that run.watch was not given: call "
                    f"run.watch(model, optimizer, name={key!r}) before training"
                )
            self._watcher.rename(found, check_name(key))
            saved[found.name] = _state(module)
        self._saved = saved
        self._saved_at_step = self._steps
        default = next(iter(model.values())) if isinstance(model, Mapping) else model
        first = next(iter(original_module(default)[0].parameters()), None)
        self._device = str(first.device) if first is not None else "cpu"

    # --- writing -------------------------------------------------------------------------
    def _write(self) -> None:
        from reprodl.modeldataset.write import write_model

        assert self._saved is not None
        names = list(self._saved)
        files = {n: keys.WEIGHTS_FILE if i == 0 else f"{keys.MODELS_DIR}{n}.safetensors" for i, n in enumerate(names)}
        record = self._record(files)
        manifests = {
            ref.manifest_item: ds.dataset.manifest_entries()
            for ref, ds in self._data
            if isinstance(ds, WrappedDataSet) and ref.manifest_item
        }
        output = _Output(self._writer)
        write_model(
            cast(Any, output),
            _SavedState(self._saved[names[0]]),
            record,
            patch=self._patch,
            manifests=manifests,
            code_files=self._code_files,
            trace=self._tracer.to_bytes() if self._tracer is not None else None,
            more_weights={files[n]: self._saved[n] for n in names[1:]},
            oplogs=self._tracer.oplog_items() if self._tracer is not None else None,
        )
        self.record = output.record

    def _record(self, files: Mapping[str, str]) -> ProvenanceRecord:
        epochs = [int(e["epoch"]) for e in self._logged if "epoch" in e]
        assert self._saved is not None
        recorder = self._recorder
        models, optimizers = recorder.components(self._saved, files)
        training = recorder.training(
            models,
            optimizers,
            epochs=max(epochs, default=0),
            batch_size=self._loader_info.get("batch_size", self._watch_batch_size),
            shuffle=self._loader_info.get("shuffle", False),
            num_workers=self._loader_info.get("num_workers", 0),
            params=self.params,
            determinism=self.determinism,
            device=self._device,
            checkpoint_every=self.checkpoints.every,
            resumed=resumed_record(self.checkpoints.resumed),
            world_size=self._group.world_size if self._group is not None else 1,
            distributed=self._distributed_info(),
        )
        return recorder.record(
            name=self._redirect.get("original_name", self.name) if self._redirect else self.name,
            started=self._started,
            models=models,
            training=training,
            data=store_readmes_once([ref for ref, _ in self._data]),
            code=self._code,
            environment=self._environment,
            results=self._results(),
            lineage=Lineage(reproduces=self.reproduces),
            saved_at_step=self._saved_at_step,
        )

    def _distributed_info(self) -> DistributedInfo | None:
        group = self._group
        if group is None:
            return None
        return DistributedInfo(
            backend=group.backend,
            world_size=group.world_size,
            rank_seeds=[self.seed + r for r in range(group.world_size)],
            sampler=self._sampler_settings,
            rank_order_digests=self._rank_digests,
        )

    def _results(self) -> Results:
        by_epoch: dict[int, dict[str, Any]] = {}
        final: dict[str, Any] = {}
        for entry in self._logged:
            values = {k: v for k, v in entry.items() if k not in ("epoch", "step")}
            final.update(values)
            if "epoch" in entry:
                by_epoch.setdefault(int(entry["epoch"]), {}).update(values)
        history = [EpochMetrics(epoch=e, **v) for e, v in sorted(by_epoch.items()) if "train_loss" in v]
        return Results(
            history=history,
            final=final,
            wall_time_s=self.checkpoints.elapsed_before + time.perf_counter() - self._t0,
            started_at=self._started,
            finished_at=_utcnow(),
            logged=list(self._logged),
        )


# --- helpers -------------------------------------------------------------------------------
def run_command(code: CodeInfo, seed: int) -> RunCommand:
    """How to run the current process again, paths relative to the code root."""
    script = Path(code.entry_script) if code.entry_script else None
    if code.git is not None and code.git.root:
        root = Path(code.git.root)
    else:
        root = script.parent if script is not None else Path.cwd()
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    module = spec.name.removesuffix(".__main__") if spec is not None and spec.name else None
    return RunCommand(
        entry_script=_relative(script, root) if script is not None and module is None else None,
        module=module,
        argv=list(sys.argv[1:]),
        working_directory=_relative(Path.cwd(), root) or ".",
        python=platform.python_version(),
        seed=seed,
        root=str(root),
    )


def _relative(path: Path, root: Path) -> str | None:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return None


def describe_loss(loss: Any) -> CallableInfo:
    """A loss module by class and arguments, a loss function (``F.nll_loss``) by its import path."""
    if loss is None:
        return NO_LOSS
    return describe_callable(loss)  # a module by class and arguments, a function or partial by its path


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy, on the CPU, of the weights of ``model`` (its original module's: no ``_orig_mod.`` or ``module.``)."""
    return {k: v.detach().cpu().clone() for k, v in original_module(model)[0].state_dict().items()}


def _number(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if isinstance(value, np.generic):
        return value.item()
    return jsonable(value)


def _utcnow() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def default_name() -> str:
    """A model name no other run shares: the script's name, the UTC time and a random suffix."""
    import secrets

    script = Path(sys.argv[0]).stem if sys.argv and sys.argv[0] not in ("", "-c") else "run"
    stem = "".join(c if c.isalnum() or c in "-_" else "-" for c in script).strip("-_") or "run"
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S")
    return f"{stem[:40]}-{stamp}-{secrets.token_hex(3)}"
