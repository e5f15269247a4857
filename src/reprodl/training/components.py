"""The models, optimisers, schedulers and losses a run watches, by name, and what each step applied.

``run.watch`` may be called any number of times; each call adds a model (its original class and
weight names when it was ``torch.compile``'d or wrapped by DDP, DataParallel or Lightning Fabric),
its optimisers (none, one or a list; the one inside Fabric's wrapper when wrapped), their
schedulers and the loss, under a name. What each step applied is observed, not read from
argument names:

- per parameter group, the hyperparameters in force when each optimiser step ran (lr, momentum,
  betas, weight decay...): the first step's values, then only changes;
- per model, the backward passes that reached it since its gradients were last cleared (gradient
  accumulation), the autocast state of its last forward with gradients on, and the gradient
  clipping called on its parameters (``torch.nn.utils.clip_grad_norm_``/``clip_grad_value_``,
  wrapped while the run watches);
- a model watched without an optimiser is updated by hand: a step is counted per backward pass
  that reached it, completed (and traced) when the update is over: at its next forward, its next
  backward pass, ``run.save`` or the run's end.

Example:
    >>> watcher = ComponentWatcher(on_step=lambda: None)                    # doctest: +SKIP
    >>> watcher.add(generator, [opt_g], name="generator")                    # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.utils as utils
import torch.nn.utils.clip_grad as clip_grad

from reprodl.errors import ParametersError
from reprodl.modeldataset.weights import state_dict_sha256
from reprodl.provenance import CallableInfo
from reprodl.provenance.record import ModelComponent, OptimizerComponent, StepChange
from reprodl.training.describe import describe_architecture, describe_callable, describe_optimizer, jsonable
from reprodl.training.wrappers import RunHooks, forward_module, original_module, original_optimizer

CLIP_FUNCTIONS = ("clip_grad_norm_", "clip_grad_value_")
_NOT_HYPERPARAMETERS = frozenset({"params", "param_names", "initial_lr"})


class _Changes:
    """A list of :class:`StepChange` that grows only when a value differs from the last one."""

    def __init__(self) -> None:
        self.entries: list[StepChange] = []
        self._last: dict[int | None, Any] = {}

    def note(self, step: int, values: dict[str, Any], *, group: int | None = None) -> None:
        last = self._last.get(group)
        if last == values:  # the common case: nothing changed
            return
        if last is None:
            changed = values
        else:
            changed = {k: v for k, v in values.items() if last.get(k, _MISSING) != v}
        if changed:
            self._last[group] = {**(last or {}), **values}
            self.entries.append(StepChange(step=step, group=group, values=jsonable(changed)))


_MISSING = object()


@dataclasses.dataclass(eq=False)
class WatchedModel:
    """A model the run watches: what it is, and what its current step is made of."""

    name: str
    given: torch.nn.Module  # as passed to run.watch (a compiled, DDP or Fabric wrapper, possibly)
    module: torch.nn.Module  # its original module
    compiled: bool
    named: bool  # name given (name=), not derived from the class
    architecture: Any
    loss: CallableInfo | None
    optimizers: list[WatchedOptimizer] = dataclasses.field(default_factory=list)
    param_ids: frozenset[int] = frozenset()
    steps: int = 0
    backward_passes: int = 0
    pending: bool = False  # updated by hand: a backward pass whose step is not yet complete
    autocast: dict[str, Any] = dataclasses.field(default_factory=lambda: {"enabled": False})
    clip: dict[str, Any] | None = None
    accumulation_changes: _Changes = dataclasses.field(default_factory=_Changes)
    autocast_changes: _Changes = dataclasses.field(default_factory=_Changes)
    clipping_changes: _Changes = dataclasses.field(default_factory=_Changes)
    _seen: tuple[int, Any, Any] | None = None  # (backward passes, autocast, clip) as last noted

    def observe_step(self, step: int) -> None:
        """Note what this step applied to the model, then start counting the next one."""
        self.steps += 1
        seen = (self.backward_passes, self.autocast, self.clip)  # the objects themselves: no id reused
        if self._seen is None or seen[0] != self._seen[0] or seen[1] is not self._seen[1] or seen[2] is not None:
            self.accumulation_changes.note(step, {"backward_passes": self.backward_passes})
            self.autocast_changes.note(step, dict(self.autocast))
            self.clipping_changes.note(step, dict(self.clip) if self.clip is not None else {"function": None})
            self._seen = seen
        self.backward_passes, self.clip = 0, None

    def describe(self, weights: dict[str, torch.Tensor] | None, weights_file: str | None) -> ModelComponent:
        return ModelComponent(
            name=self.name,
            architecture=self.architecture,
            compiled=self.compiled,
            optimizers=[o.name for o in self.optimizers],
            loss=self.loss,
            weights_file=weights_file if weights is not None else None,
            weights_sha256=state_dict_sha256(weights) if weights is not None else None,
            steps=self.steps,
            accumulation=list(self.accumulation_changes.entries),
            autocast=list(self.autocast_changes.entries),
            clipping=list(self.clipping_changes.entries),
        )


@dataclasses.dataclass(eq=False)
class WatchedOptimizer:
    """An optimiser the run watches, with the hyperparameters it applied step by step."""

    name: str
    optimizer: torch.optim.Optimizer
    model: WatchedModel
    scheduler: Any
    info: Any  # its OptimizerInfo as watched
    scheduler_info: CallableInfo | None = None  # its scheduler as built (described when watched, not at the end)
    steps: int = 0
    closure: bool = False
    backward_passes: int = 0  # since its last step, the passes that reached its first parameter
    counts_passes: bool = False  # whether it counts them (a model with several optimisers)
    applied: _Changes = dataclasses.field(default_factory=_Changes)
    _keys: dict[int, list[str]] = dataclasses.field(default_factory=dict)
    _raw: dict[int, list[Any]] = dataclasses.field(default_factory=dict)  # per group: the values last noted

    def observe(self, step: int) -> None:
        """The numeric hyperparameters of every parameter group (lr, momentum, betas...), as this step runs.

        Compared cheaply with the last step's: the values as they are (a tensor by its identity and
        version, so an unchanged tensor lr is never read back from its device); noted only when one differs.
        """
        for i, group in enumerate(self.optimizer.param_groups):
            keys = self._keys.get(i)
            if keys is None:  # read once per group: which of its entries are numeric hyperparameters
                keys = self._keys[i] = [k for k, v in group.items() if k not in _NOT_HYPERPARAMETERS and _numeric(v)]
            raw = list(map(group.get, keys))
            if any(isinstance(v, torch.Tensor) for v in raw):
                raw = [(v, v._version) if isinstance(v, torch.Tensor) else v for v in raw]
                if self._raw.get(i) is not None and _same_raw(raw, self._raw[i]):
                    continue
            elif raw == self._raw.get(i):
                continue
            self._raw[i] = raw
            values = {k: group[k] for k in keys if k in group}
            if any(isinstance(v, torch.Tensor) for v in values.values()):
                values = {k: _plain(v) for k, v in values.items()}
            self.applied.note(step, values, group=i)

    def describe(self) -> OptimizerComponent:
        return OptimizerComponent(
            **self.info.model_dump(),
            name=self.name,
            model=self.model.name,
            scheduler=self.scheduler_info,
            steps=self.steps,
            closure=self.closure,
            applied=list(self.applied.entries),
        )


def _numeric(value: Any) -> bool:
    """Whether a group's value is a numeric hyperparameter (lr, betas...), not a flag or an option."""
    if isinstance(value, (tuple, list)):
        return bool(value) and all(_numeric(v) for v in value)
    return isinstance(value, (int, float, torch.Tensor)) and not isinstance(value, bool)


def _same_raw(now: list[Any], last: list[Any]) -> bool:
    """Whether a group's values (tensors as (tensor, version)) are those last noted: tensors by identity."""
    if len(now) != len(last):
        return False
    for a, b in zip(now, last):
        if isinstance(a, tuple) and a and isinstance(a[0], torch.Tensor):
            if not (isinstance(b, tuple) and b and a[0] is b[0] and a[1] == b[1]):
                return False
        elif (isinstance(b, tuple) and b and isinstance(b[0], torch.Tensor)) or a != b:
            return False
    return True


def _plain(value: Any) -> Any:
    """A hyperparameter value comparable with ``!=`` (a one-element tensor as its number)."""
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    return value


class ComponentWatcher:
    """Every model and optimiser a run watches; ``on_step`` is called after each step of any of them.

    ``step`` is the global step count (every optimiser's steps and every hand-updated model's
    backward passes, in the order they happened): the trace's and the record's step numbers.
    """

    def __init__(self, on_step: Callable[[], None], *, on_forward: Callable[[Any], None] | None = None) -> None:
        self.on_step, self.on_forward = on_step, on_forward
        self.models: list[WatchedModel] = []
        self.step = 0
        self._hooks: list[Any] = []
        self._patched: list[tuple[Any, str, Any]] = []

    # --- watching --------------------------------------------------------------------------
    def add(
        self,
        model: torch.nn.Module,
        optimizers: Sequence[torch.optim.Optimizer],
        *,
        name: str | None = None,
        schedulers: Sequence[Any] = (),
        loss: CallableInfo | None = None,
        init_params: Mapping[str, Any] | None = None,
    ) -> WatchedModel:
        """Watch ``model`` and its optimisers under ``name`` (else its class name); refuses a model watched twice."""
        module, compiled = original_module(model)
        if next(module.parameters(), None) is None:
            raise ParametersError(
                f"the model {type(module).__qualname__} holds no parameters: nothing of it can be recorded or "
                "saved. Layers kept in a plain list or dict are not the module's: use nn.ModuleList / nn.ModuleDict"
            )
        optimizers = [original_optimizer(o) for o in optimizers]
        if any(w.module is module for w in self.models):
            raise ParametersError(
                f"the model {type(module).__qualname__} is already watched: call run.watch once per model, "
                "with all of its optimisers (optimizer=[...])"
            )
        watched = WatchedModel(
            name=self._unique(check_name(name) if name is not None else type(module).__name__, given=name is not None),
            given=model,
            module=module,
            compiled=compiled,
            named=name is not None,
            architecture=_architecture(module, init_params),
            loss=loss,
            param_ids=frozenset(id(p) for p in module.parameters()),
        )
        names = {id(p): n for n, p in module.named_parameters()}
        for i, (optimizer, scheduler) in enumerate(zip(optimizers, _pair_schedulers(optimizers, schedulers))):
            o_name = watched.name if len(optimizers) == 1 else f"{watched.name}_{i}"
            w_opt = WatchedOptimizer(o_name, optimizer, watched, scheduler, describe_optimizer(optimizer, names))
            w_opt.scheduler_info = describe_callable(scheduler) if scheduler is not None else None
            watched.optimizers.append(w_opt)
            self._hook_optimizer(w_opt)
            if len(optimizers) > 1:
                self._hook_passes(w_opt)
        self._hook_model(watched)
        self.models.append(watched)
        self._patch_clipping()
        return watched

    def _unique(self, name: str, *, given: bool) -> str:
        taken = {w.name for w in self.models}
        if name not in taken:
            return name
        if given:
            raise ParametersError(f"a model named {name!r} is already watched: give each run.watch its own name=")
        return next(f"{name}_{i}" for i in range(2, len(taken) + 3) if f"{name}_{i}" not in taken)

    def rename(self, watched: WatchedModel, name: str) -> None:
        """Give a model the name ``run.save`` saved it under (refused when run.watch named it otherwise)."""
        if watched.name == check_name(name):
            return
        if watched.named:
            raise ParametersError(
                f"run.save saves the model watched as {watched.name!r} under {name!r}: use one name "
                f"(run.watch(..., name={name!r}) or run.save({{{watched.name!r}: model}}))"
            )
        if any(w.name == name for w in self.models if w is not watched):
            raise ParametersError(f"run.save names two models {name!r}: give each its own name")
        for o in watched.optimizers:
            o.name = name + o.name[len(watched.name) :]
        watched.name, watched.named = name, True

    def find(self, model: torch.nn.Module) -> WatchedModel | None:
        """The watched model that ``model`` is (or wraps), if any."""
        module, _ = original_module(model)
        return next((w for w in self.models if w.module is module), None)

    # --- hooks -------------------------------------------------------------------------------
    def _hook_optimizer(self, watched: WatchedOptimizer) -> None:
        def before(optimizer: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if not watched.steps:
                self._check_held(watched)
            # torch passes the step's arguments after the optimiser itself: step(closure) gives (optimizer, closure)
            if (len(args) > 1 and args[1] is not None) or kwargs.get("closure") is not None:
                watched.closure = True
            watched.observe(self.step + 1)

        def after(*_: Any) -> None:
            self.step += 1
            watched.steps += 1
            if watched.counts_passes:  # this optimiser's passes, not those of the model's first parameter
                watched.model.backward_passes, watched.backward_passes = watched.backward_passes, 0
            watched.model.observe_step(self.step)
            self.on_step()

        self._hooks.append(watched.optimizer.register_step_pre_hook(before))
        self._hooks.append(watched.optimizer.register_step_post_hook(after))

    def _check_held(self, watched: WatchedOptimizer) -> None:
        """Refuse an optimiser's first step when it updates parameters no watched model holds: their values
        would be in no record, no trace and no saved weights (a change to them could not be found)."""
        held = frozenset().union(*(w.param_ids for w in self.models))
        loose = [p for g in watched.optimizer.param_groups for p in g["params"] if id(p) not in held]
        if loose:
            shapes = ", ".join(str(tuple(p.shape)) for p in loose[:4]) + (", ..." if len(loose) > 4 else "")
            raise ParametersError(
                f"the optimiser {watched.name!r} ({type(watched.optimizer).__name__}) updates {len(loose)} "
                f"parameters (shapes {shapes}) that no watched model holds: they would be in no record, no trace "
                "and no saved weights. Hold them in the model (nn.ModuleList / nn.ModuleDict for layers kept in "
                "a list or dict, nn.Parameter for a tensor), or run.watch the module that holds them"
            )

    def _hook_passes(self, watched: WatchedOptimizer) -> None:
        """Count the backward passes that reach this optimiser's first parameter: a model with several
        optimisers (a GAN in one module) steps each after passes that may never reach the model's first."""
        groups = watched.optimizer.param_groups
        first = next((p for g in groups for p in g["params"] if p.requires_grad), None)
        if first is None:
            return

        def on_backward(grad: torch.Tensor) -> None:
            watched.backward_passes = 1 if first.grad is None else watched.backward_passes + 1

        watched.counts_passes = True
        self._hooks.append(first.register_hook(on_backward))

    def _hook_model(self, watched: WatchedModel) -> None:
        first = next((p for p in watched.module.parameters() if p.requires_grad), None)
        if first is not None:

            def on_backward(grad: torch.Tensor) -> None:
                if watched.pending:
                    self._complete(watched)
                watched.backward_passes = 1 if first.grad is None else watched.backward_passes + 1
                if not watched.optimizers:
                    watched.pending = True

            self._hooks.append(first.register_hook(on_backward))
        device = first.device.type if first is not None else "cpu"

        def on_forward(module: Any, args: Any) -> None:
            if watched.pending:
                self._complete(watched)
            if torch.is_grad_enabled():
                _note_autocast(watched, device)
                if self.on_forward is not None:
                    self.on_forward(args)

        hooked = forward_module(watched.given)
        hooks = RunHooks.installed(hooked)
        handle = hooked.register_forward_pre_hook(on_forward)
        if hooks is not None:
            hooks.ours.add(handle.id)
        self._hooks.append(handle)

    def _complete(self, watched: WatchedModel) -> None:
        """The step of a hand-updated model: its update is over."""
        watched.pending = False
        self.step += 1
        watched.observe_step(self.step)
        self.on_step()

    def complete_pending(self) -> None:
        """Complete the steps of hand-updated models whose update is over (at ``run.save`` and the end)."""
        for watched in self.models:
            if watched.pending:
                self._complete(watched)

    def _patch_clipping(self) -> None:
        """Wrap torch's gradient-clipping functions while the run watches (once)."""
        if self._patched:
            return

        for name in CLIP_FUNCTIONS:
            original = getattr(clip_grad, name)
            wrapper = self._clipping_wrapper(name, original)
            for owner in (utils, clip_grad):
                if getattr(owner, name, None) is original:
                    self._patched.append((owner, name, original))
                    setattr(owner, name, wrapper)

    def _clipping_wrapper(self, name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        # The arguments recorded, in their positions after the parameters, with their defaults.
        recorded = (("max_norm", None), ("norm_type", 2.0)) if name == "clip_grad_norm_" else (("clip_value", None),)

        def clip(parameters: Any, *args: Any, **kwargs: Any) -> Any:
            params = [parameters] if isinstance(parameters, torch.Tensor) else list(parameters)
            values: dict[str, Any] = {"function": name}
            for i, (arg, default) in enumerate(recorded):
                value = args[i] if i < len(args) else kwargs.get(arg, default)
                values[arg] = float(value) if isinstance(value, (int, float, torch.Tensor)) else jsonable(value)
            ids = {id(p) for p in params}
            for watched in self.models:
                if not ids.isdisjoint(watched.param_ids):
                    watched.clip = values
            return original(params, *args, **kwargs)

        clip.__wrapped__ = original  # type: ignore[attr-defined]  # what it wraps, for introspection
        return clip

    def close(self) -> None:
        """Remove every hook and give torch its clipping functions back."""
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        for owner, name, original in reversed(self._patched):
            setattr(owner, name, original)
        self._patched.clear()

    # --- the record ----------------------------------------------------------------------------
    def describe(
        self, saved: Mapping[str, dict[str, torch.Tensor]], weights_files: Mapping[str, str]
    ) -> tuple[list[ModelComponent], list[OptimizerComponent]]:
        """The record's models (saved ones first, in the order saved) and optimisers."""
        order = [w for name in saved for w in self.models if w.name == name]
        order += [w for w in self.models if w not in order]
        models = [w.describe(saved.get(w.name), weights_files.get(w.name)) for w in order]
        return models, [o.describe() for w in order for o in w.optimizers]


def _note_autocast(watched: WatchedModel, device: str) -> None:
    """Note whether this forward pass runs under autocast (and its dtype), when that is or was on."""
    enabled = torch.is_autocast_enabled(device)
    if enabled or watched.autocast["enabled"]:
        dtype = str(torch.get_autocast_dtype(device)) if enabled else None
        watched.autocast = {"enabled": enabled, "device_type": device, "dtype": dtype}


def _pair_schedulers(optimizers: Sequence[Any], schedulers: Sequence[Any]) -> list[Any]:
    """Each optimiser's scheduler (or None): the one whose ``optimizer`` it is, else the next unclaimed, in order."""
    paired = [
        next((s for s in schedulers if original_optimizer(getattr(s, "optimizer", None)) is o), None)
        for o in optimizers
    ]
    rest = [s for s in schedulers if not any(s is p for p in paired)]
    for i, scheduler in enumerate(paired):
        if scheduler is None and rest:
            paired[i] = rest.pop(0)
    if rest:
        raise ParametersError(
            f"run.watch got {len(schedulers)} schedulers for {len(optimizers)} optimiser(s): give one scheduler "
            "per optimiser at most (scheduler=[...] in the order of optimizer=[...])"
        )
    return paired


def check_name(name: str) -> str:
    """``name`` if it can name a model (and its weights item ``models/<name>.safetensors``); else ParametersError."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ParametersError(
            f"a model's name should be letters, digits, '_', '-' or '.' (not first), but got {name!r}: rename it"
        )
    return name


_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")


def _architecture(module: torch.nn.Module, init_params: Mapping[str, Any] | None) -> Any:
    arch = describe_architecture(module, dict(init_params or {}))
    arch.initial_weights_sha256 = state_dict_sha256(module.state_dict())
    return arch
