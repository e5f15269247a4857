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

This module is the public :class:`Run`; its plumbing has its own modules: starting and ending
(:mod:`._run_context`), the loaders it builds (:mod:`._run_loading`) and what it writes
(:mod:`._run_output`).
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch.utils.data import DataLoader

from reprodl.data.datasets import WrappedDataSet
from reprodl.errors import ParametersError
from reprodl.provenance import CodeInfo, DataRef, Determinism, Environment, ModelRef, ProvenanceRecord
from reprodl.store import DatasetWriter
from reprodl.training import _run_context, _run_loading, _run_output, datarefs
from reprodl.training._run_context import default_name
from reprodl.training._run_loading import TracedLoader
from reprodl.training._run_output import describe_loss, number, state
from reprodl.training.components import ComponentWatcher, check_name
from reprodl.training.datarefs import check_dataset, describe_other_data
from reprodl.training.describe import describe_callable, jsonable
from reprodl.training.determinism import DeterminismSettings, check_deterministic
from reprodl.training.distributed import Group, on_rank0_first
from reprodl.training.order import tap_order
from reprodl.training.recorder import NO_OPTIMIZER, Recorder
from reprodl.training.resume import RunCheckpoints
from reprodl.training.seeding import SeedPlan
from reprodl.training.tensorboard import TensorBoardLogger
from reprodl.training.trace import StepTracer
from reprodl.training.wrappers import original_module

ROLES = ("train", "valid", "test")
_USE_DATA = (
    "pass it to run.use(dataset), or build the loader with run.loader(dataset); for data drawn in the loop, "
    "run.use the tensors it is drawn from (a target function, a generator's parameters)"
)
_NO_TRAIN_DATA = f"no training data was recorded by the first optimiser step (run.save will refuse): {_USE_DATA}"
_NO_STEP = (
    "run.save got a copy of the model {!r} whose weights match no traced step (averaged, edited, or from "
    "before a thinned part of the trace): the record cannot say when they were taken (saved_at_step: null)"
)
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


class Run:
    """One training run of the user's own loop; made by :func:`start_run`.

    After a clean exit ``uri`` is the model dataset's URI and ``record`` its provenance record.
    """

    # set when the run starts (:mod:`._run_context`), read when it writes (:mod:`._run_output`)
    determinism: Determinism
    _determinism: DeterminismSettings
    _t0: float
    _started: str
    _writer: DatasetWriter
    _code: CodeInfo
    _patch: str | None
    _code_files: dict[str, Path]
    _environment: Environment

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
        self._loaders: list[TracedLoader] = []
        self._components: tuple[Any, Any, Any] | None = None  # (model, optimizer, scheduler)
        self._group: Group | None = None
        self._sampler_settings: dict[str, Any] = {}
        self._rank_digests: list[list[str]] = []
        # Directories the run writes to besides its base directory (a Trainer's logs and checkpoints):
        # their untracked files are its outputs, not code (set before the run starts).
        self._output_dirs: list[Path] = []

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

    # --- the context (:mod:`._run_context`) ----------------------------------------------------
    def __enter__(self) -> Run:
        if self._stack is None:  # else started by start_run already
            _run_context.enter(self)
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

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        return _run_context.exit_run(self, exc_type, exc, tb)

    def _capture(self, workdir: Path) -> None:
        _run_context.capture(self, workdir)

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
            if not any(r == ref for r, _ in self._data):  # the same data again (a loader built each epoch): once
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
        :meth:`loader` records its own). A wrapped model (``torch.compile``'d, DDP, DataParallel,
        Lightning Fabric's ``fabric.setup``) is recorded by its original class and weight names, and
        an optimiser wrapped by Fabric by the one inside. What each step applied (learning rates,
        accumulation, autocast, clipping) is recorded as observed (:mod:`reprodl.training.components`).
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
        """After a step was counted and traced: the determinism check and the training data (first step), a
        checkpoint when due."""
        if self._steps == 1:
            self._determinism.check_in_force()
            if not any(r.role == "train" for r, _ in self._data):
                warnings.warn(_NO_TRAIN_DATA, UserWarning, stacklevel=2)
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
        return _run_loading.make_loader(self, ds, batch_size, shuffle, kw)

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
        entry.update({k: number(v) for k, v in metrics.items()})
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
            raise ParametersError(f"no training data was recorded: {_USE_DATA}")
        self._watcher.complete_pending()
        saved: dict[str, dict[str, torch.Tensor]] = {}
        self._saved_at_step = self._steps
        if not isinstance(model, Mapping):
            watched = self._watcher.find(model)
            owner = watched or self._copy_of(model)
            saved[owner.name] = weights = state(model)
            if watched is None:  # a copy (the best epoch's, reloaded): when were its weights the model's?
                self._saved_at_step = self._recorder.step_of(owner, weights)
                if self._saved_at_step is None:
                    warnings.warn(_NO_STEP.format(owner.name), UserWarning, stacklevel=2)
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
            saved[found.name] = state(module)
        self._saved = saved
        default = next(iter(model.values())) if isinstance(model, Mapping) else model
        first = next(iter(original_module(default)[0].parameters()), None)
        self._device = str(first.device) if first is not None else "cpu"

    def _copy_of(self, module: torch.nn.Module) -> Any:
        """The watched model ``module`` is a copy of (the same tensor names and shapes), else ParametersError."""
        layout = {k: tuple(v.shape) for k, v in original_module(module)[0].state_dict().items()}
        for watched in self._watcher.models if self._watcher is not None else ():
            if {k: tuple(v.shape) for k, v in watched.module.state_dict().items()} == layout:
                return watched
        raise ParametersError(
            f"run.save got a {type(module).__qualname__} that run.watch was not given, nor a copy of a watched "
            "model (the same tensors): call run.watch(model, optimizer) with the model you train"
        )

    # --- writing (:mod:`._run_output`) ----------------------------------------------------------
    def _write(self) -> None:
        _run_output.write(self)
