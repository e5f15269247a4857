"""One recording core: the built-in trainer, ``start_run`` and the Lightning callback record through it.

A :class:`Recorder` owns what every training records, so that the three entry points record it
the same way:

- **the seeds**: one :class:`~reprodl.training.seeding.SeedPlan`, applied (:meth:`Recorder.apply_seeds`)
  and recorded (``training.seeds``) from the same numbers;
- **the components**: one :class:`~reprodl.training.components.ComponentWatcher` (every model,
  optimiser, scheduler and loss, by name) whose hooks count the steps: one global step per
  optimiser step of any watched optimiser, or per backward pass of a model updated by hand;
- **the step trace**: one :class:`~reprodl.training.trace.StepTracer` over every watched model,
  a row made in the step hook of each counted step (the loss when the loop told it,
  :attr:`Recorder.loss`); its columns are named by the models' final names (the names
  ``run.save`` gave them), resolved when the record is built;
- **the data order**: one digest per pass, :func:`reprodl.training.order.order_digest`
  (sha256 of the pass's sample indices as little-endian int64), however the order was made;
- **the record**: :meth:`Recorder.training` and :meth:`Recorder.record` assemble ``training``,
  ``models``, ``results.trace`` and ``results.saved_at_step`` and the
  :class:`~reprodl.provenance.ProvenanceRecord`.

Example:
    >>> recorder = Recorder(SeedPlan(1))                                   # doctest: +SKIP
    >>> recorder.watch(model, [optimizer], name="model", loss=loss_info)   # doctest: +SKIP
    >>> recorder.apply_seeds()                                             # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from reprodl import __version__
from reprodl.modeldataset.weights import state_dict_sha256
from reprodl.provenance import (
    Architecture,
    CallableInfo,
    CodeInfo,
    DataRef,
    Environment,
    Lineage,
    OptimizerInfo,
    ProvenanceRecord,
    Results,
    StepTrace,
    Training,
)
from reprodl.provenance.record import ModelComponent, OptimizerComponent
from reprodl.training.components import ComponentWatcher, WatchedModel
from reprodl.training.order import order_digest
from reprodl.training.progress import ProgressFile
from reprodl.training.seeding import SeedPlan
from reprodl.training.trace import StepCallback, StepTracer, TraceKind
from reprodl.training.wrappers import wrapper_names

# Training.optimizer of a record whose first model has no optimiser (updated by hand).
NO_OPTIMIZER = OptimizerInfo(class_name="(none: updated by hand)", module="")
# Training.loss when none was given to run.watch.
NO_LOSS = CallableInfo(class_name="(not given to run.watch)", module="")


class Recorder:
    """What one training records: its seeds, components, step trace and data order (module docstring).

    Args:
        seeds: the training's seed plan.
        trace_kind: the trace's kind (a re-run of an older record traces that record's kind).
        on_trace_row: called with each trace row as it is made (a comparison with a recorded
            trace); returning True asks the training to stop (``stop_requested``).
        after_step: called after each counted step (checkpoints, checks).
        defer_rows: the loop takes each step's trace row itself (:meth:`take_row`) once its update
            is over (the built-in trainer: after its optimiser step, scheduler step and zeroed
            gradients), rather than in the optimiser's step hook.
    """

    def __init__(
        self,
        seeds: SeedPlan,
        *,
        trace_kind: TraceKind | None = None,
        on_trace_row: StepCallback | None = None,
        after_step: Callable[[], None] | None = None,
        defer_rows: bool = False,
    ) -> None:
        self.seeds = seeds
        self.trace_kind, self.on_trace_row, self.after_step = trace_kind, on_trace_row, after_step
        self.watcher: ComponentWatcher | None = None
        self.tracer: StepTracer | None = None
        self.order_digests: list[str] = []
        self.order_not_recorded: str | None = None
        self.steps = 0
        self.where = (0, 0)  # (epoch or pass, batch) of the step being made, from 1; 0: not known
        self.loss: Any = None  # the loss of the step being made, when the loop knows it
        self.defer_rows, self._row_due = defer_rows, False
        self._prefixes: dict[str, WatchedModel] = {}  # trace column prefix -> the model (several models)
        self.progress = ProgressFile.from_environment()  # a re-executed script tells reproduce its steps

    # --- seeds ---------------------------------------------------------------------------------
    def apply_seeds(self, rank: int = 0) -> None:
        """Seed Python's, NumPy's and torch's global generators: rank r of a process group with seed + r."""
        (SeedPlan(self.seeds.seed + rank) if rank else self.seeds).apply_globals()

    # --- components and steps ------------------------------------------------------------------
    def watch(
        self,
        model: torch.nn.Module,
        optimizers: Sequence[torch.optim.Optimizer],
        *,
        name: str | None = None,
        schedulers: Sequence[Any] = (),
        loss: CallableInfo | None = None,
        init_params: Mapping[str, Any] | None = None,
    ) -> WatchedModel:
        """Watch ``model`` with its optimisers (see :meth:`ComponentWatcher.add`); the tracer covers it too."""
        if self.watcher is None:
            self.watcher = ComponentWatcher(self._count_step, on_forward=self._on_forward)
            self.watcher.step = self.steps  # resumed: from the checkpoint's step
        watched = self.watcher.add(
            model, optimizers, name=name, schedulers=schedulers, loss=loss, init_params=init_params
        )
        if self.tracer is None or self.steps == 0:
            self.tracer = self._make_tracer()
        return watched

    @property
    def models(self) -> list[WatchedModel]:
        """Every watched model, in the order watched."""
        return self.watcher.models if self.watcher is not None else []

    def step_of(self, watched: WatchedModel, saved: Mapping[str, torch.Tensor]) -> int | None:
        """The step after which ``watched``'s tensors were as in ``saved`` (a copy of it run.save got): 0 for its
        initial weights, else the last traced step whose digests they have; None when no step had them."""
        if state_dict_sha256(dict(saved)) == watched.architecture.initial_weights_sha256:
            return 0
        if self.tracer is None:
            return None
        prefix = next((f"{p}." for p, w in self._prefixes.items() if w is watched), "")
        digests = {prefix + k: int(self.tracer.digest(v).item()) for k, v in saved.items()}
        return self.tracer.last_step_with({k: v for k, v in digests.items() if k in self.tracer.names})

    def set_steps(self, steps: int) -> None:
        """Continue counting from ``steps`` (a resumed training)."""
        self.steps = steps
        if self.watcher is not None:
            self.watcher.step = steps

    def _make_tracer(self) -> StepTracer:
        """The step tracer over every watched model (one model: its own tensor names; several: name.tensor)."""
        models = self.models
        optimizers = [o.optimizer for w in models for o in w.optimizers]
        kind, on_row = self.trace_kind, self.on_trace_row
        self._prefixes = {}
        if len(models) == 1:
            tracer = StepTracer(models[0].module, optimizers=optimizers, on_step=on_row, kind=kind)
        else:
            together = torch.nn.Module()
            for w in models:
                prefix = w.name.replace(".", "_")
                self._prefixes[prefix] = w
                together.add_module(prefix, w.module)
            tracer = StepTracer(together, optimizers=optimizers, on_step=on_row, kind=kind)
        tracer.module_names = {k: v for w in models for k, v in wrapper_names(w.given).items()}
        return tracer

    def _count_step(self) -> None:
        """A step of a watched component is over: count it, trace it (unless the loop does), then ``after_step``."""
        self.steps += 1
        self._row_due = True
        if not self.defer_rows:
            self.take_row()
        if self.after_step is not None:
            self.after_step()
        if self.progress is not None:
            self.progress.step(self.steps)

    def _on_forward(self, args: Any) -> None:
        """A watched model's forward pass with gradients (its positional arguments): see :meth:`StepTracer.forward`."""
        if self.tracer is not None:
            self.tracer.forward(args[0] if args and isinstance(args[0], torch.Tensor) else None)

    def take_row(self) -> None:
        """The trace row of the step just counted (no-op when none is due): the state as it is now."""
        if not self._row_due:
            return
        self._row_due = False
        if self.tracer is not None:
            self.tracer.step(loss=self.loss, epoch=self.where[0], batch=self.where[1])
        self.loss = None

    def batch(self, *, indices: Sequence[int] | torch.Tensor | None = None, inputs: Any = None) -> None:
        """Note a batch the next step learns from: its sample indices and inputs (see :meth:`StepTracer.batch`)."""
        if self.tracer is not None:
            self.tracer.batch(indices=indices, inputs=inputs if isinstance(inputs, torch.Tensor) else None)

    @property
    def stop_requested(self) -> bool:
        """Whether ``on_trace_row`` asked the training to stop."""
        return self.tracer is not None and self.tracer.stop_requested

    def complete_pending(self) -> None:
        """Count the steps of hand-updated models whose update is over (at save and at the end)."""
        if self.watcher is not None:
            self.watcher.complete_pending()

    def close(self) -> None:
        """Stop watching: every hook removed, torch's clipping functions given back, an operation log
        left running (by a failure) closed."""
        if self.watcher is not None:
            self.watcher.close()
        if self.tracer is not None:
            self.tracer.close()

    # --- data order ----------------------------------------------------------------------------
    def on_order(self, digest: str) -> None:
        """A pass's order digest (:func:`order_digest`), as a sampler reports it."""
        self.order_digests.append(digest)

    def note_order(self, order: Sequence[int] | torch.Tensor) -> str:
        """Record one pass's sample order; returns its digest."""
        digest = order_digest(order)
        self.order_digests.append(digest)
        return digest

    def not_recorded(self, reason: str) -> None:
        """Say in the record why the data order was not recorded per pass (the first reason is kept)."""
        if self.order_not_recorded is None:
            self.order_not_recorded = reason

    # --- the record ----------------------------------------------------------------------------
    def trace_description(self) -> StepTrace | None:
        """The record's ``results.trace`` (None without a tracer), its columns named by the final model names."""
        if self.tracer is None:
            return None
        description = self.tracer.description()
        if self._prefixes:
            description["tensors"] = [self._final_name(n) for n in description["tensors"]]
        return StepTrace.model_validate(description)

    def _final_name(self, column: str) -> str:
        prefix, _, rest = column.partition(".")
        watched = self._prefixes.get(prefix)
        return f"{watched.name}.{rest}" if watched is not None else column

    def components(
        self, saved: Mapping[str, dict[str, torch.Tensor]], files: Mapping[str, str]
    ) -> tuple[list[ModelComponent], list[OptimizerComponent]]:
        """The record's ``models`` (saved ones first, in the order saved) and ``training.optimizers``."""
        assert self.watcher is not None, "no model was watched"
        return self.watcher.describe(saved, files)

    def training(
        self, models: Sequence[ModelComponent], optimizers: list[OptimizerComponent], **fields: Any
    ) -> Training:
        """The record's ``training``: the first model's optimiser, loss and scheduler, every optimiser,
        the seeds, data order and steps recorded here, and the caller's ``fields`` (epochs, batch
        size, shuffle, workers, params, determinism, device, checkpoints, distribution)."""
        first = models[0]
        opt = next((o for o in optimizers if o.model == first.name), None)
        info = NO_OPTIMIZER
        if opt is not None:
            info = OptimizerInfo.model_validate(opt.model_dump(include=set(OptimizerInfo.model_fields)))
        return Training(
            optimizer=info,
            optimizers=optimizers,
            loss=first.loss or NO_LOSS,
            scheduler=opt.scheduler if opt is not None else None,
            seeds=self.seeds.record(),
            data_order_digests=list(self.order_digests),
            data_order_not_recorded=self.order_not_recorded,
            optimizer_steps=self.steps,
            **fields,
        )

    def record(
        self,
        *,
        name: str,
        started: str,
        models: list[ModelComponent],
        training: Training,
        data: list[DataRef],
        code: CodeInfo,
        environment: Environment,
        results: Results,
        lineage: Lineage,
        architecture: Architecture | None = None,
        saved_at_step: int | None = None,
    ) -> ProvenanceRecord:
        """The provenance record: ``architecture`` (else the first model's) is the default model's,
        ``results`` gets the trace and the step the weights were saved at."""
        if architecture is not None:
            models = [models[0].model_copy(update={"architecture": architecture}), *models[1:]]
        results.trace = self.trace_description()
        results.saved_at_step = saved_at_step
        return ProvenanceRecord(
            model_name=name,
            created_at=started,
            reprodl_version=__version__,
            architecture=models[0].architecture,
            models=models,
            data=data,
            training=training,
            code=code,
            environment=environment,
            results=results,
            lineage=lineage,
        )
