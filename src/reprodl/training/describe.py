"""Components described for the record: an optimiser, a loss or scheduler by class and arguments (the ones
given, recovered where torch keeps them), a model's architecture and class source, and values made JSON-able;
and the check that a recorded scheduler can be rebuilt from its description.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import weakref
from collections.abc import Callable
from typing import Any

from reprodl.errors import ParametersError
from reprodl.provenance import Architecture, CallableInfo, OptimizerInfo


def jsonable(value: Any) -> Any:
    """A JSON-able form of a hyperparameter value (tensors become lists)."""
    import torch

    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, torch.dtype):
        return str(value)
    return repr(value)


def class_path(obj_or_cls: Any) -> tuple[str, str]:
    """(module, qualname) of an object's class, or of a class."""
    cls = obj_or_cls if isinstance(obj_or_cls, type) else type(obj_or_cls)
    return cls.__module__, cls.__qualname__


def describe_optimizer(optimizer: Any, names: dict[int, str]) -> OptimizerInfo:
    """The optimiser's class, defaults and every parameter group (parameters by name)."""
    module, qualname = class_path(optimizer)
    groups = []
    for group in optimizer.param_groups:
        hp = {k: jsonable(v) for k, v in group.items() if k != "params"}
        hp["param_names"] = [names.get(id(p), f"<unnamed {i}>") for i, p in enumerate(group["params"])]
        groups.append(hp)
    return OptimizerInfo(
        class_name=qualname,
        module=module,
        defaults={k: jsonable(v) for k, v in optimizer.defaults.items()},
        param_groups=groups,
    )


_SKIP_ARGS = {"self", "size_average", "reduce", "args", "kwargs"}

# Constructor arguments given where reprodl built the object (a config's scheduler: {...}), by object.
_GIVEN: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()


def remember_arguments(obj: Any, kwargs: dict[str, Any]) -> None:
    """Keep the keyword arguments ``obj`` was built with, for :func:`describe_callable` to record exactly."""
    _GIVEN[obj] = dict(kwargs)


def describe_callable(obj: Any) -> CallableInfo:
    """Class and constructor arguments of a loss function or scheduler, read back from it.

    A function (``F.nll_loss``) is recorded by its own import path, and a ``functools.partial``
    of one by the function's path with the partial's keywords as its arguments. Arguments given
    where reprodl built the object (:func:`remember_arguments`) are recorded as given.
    """
    if isinstance(obj, functools.partial) and not obj.args:
        return CallableInfo(
            class_name=obj.func.__qualname__, module=obj.func.__module__, args=jsonable(dict(obj.keywords))
        )
    if inspect.isfunction(obj) or inspect.isbuiltin(obj):
        return CallableInfo(class_name=obj.__qualname__, module=obj.__module__, args={})
    module, qualname = class_path(obj)
    args: dict[str, Any] = {}
    try:
        sig = inspect.signature(type(obj).__init__)
    except (TypeError, ValueError):
        sig = None
    if sig is not None:
        for name in sig.parameters:
            if name in _SKIP_ARGS or name in ("optimizer",):
                continue
            if hasattr(obj, name):
                args[name] = jsonable(getattr(obj, name))
    recover = _RECOVERERS.get(f"{module}:{qualname}")
    if recover is not None:
        args.update(recover(obj))
    args.update(jsonable(_GIVEN.get(obj, {})))
    return CallableInfo(class_name=qualname, module=module, args=args)


def _one_cycle_arguments(scheduler: Any) -> dict[str, Any]:
    """OneCycleLR's arguments, read back from its parameter groups and schedule phases.

    ``max_lr``, ``div_factor`` and ``final_div_factor`` live only in the groups (``max_lr``,
    ``initial_lr = max_lr / div_factor``, ``min_lr = initial_lr / final_div_factor``); a factor
    is recorded as its default when the default gives the same value, bit for bit.
    """
    groups = scheduler.optimizer.param_groups
    max_lrs = [g["max_lr"] for g in groups]
    first = groups[0]
    div = 25.0 if first["max_lr"] / 25.0 == first["initial_lr"] else first["max_lr"] / first["initial_lr"]
    final = 1e4 if first["initial_lr"] / 1e4 == first["min_lr"] else first["initial_lr"] / first["min_lr"]
    phases = scheduler._schedule_phases
    args: dict[str, Any] = {
        "max_lr": max_lrs[0] if len(set(max_lrs)) == 1 else max_lrs,
        "total_steps": scheduler.total_steps,
        "pct_start": (float(phases[0]["end_step"]) + 1) / scheduler.total_steps,
        "anneal_strategy": scheduler._anneal_func_type,
        "three_phase": len(phases) == 3,
        "div_factor": div,
        "final_div_factor": final,
    }
    if scheduler.cycle_momentum:
        args.update(base_momentum=first["base_momentum"], max_momentum=first["max_momentum"])
    return args


# Schedulers whose constructor arguments are not all attributes: how to read them back.
_RECOVERERS: dict[str, Callable[[Any], dict[str, Any]]] = {
    "torch.optim.lr_scheduler:OneCycleLR": _one_cycle_arguments,
}


def check_rebuildable(optimizer: Any, optimizer_info: OptimizerInfo, scheduler: Any, info: CallableInfo) -> None:
    """Refuse, before training, a scheduler (or optimiser) its record would not rebuild as it is.

    The optimiser is rebuilt from ``optimizer_info`` over stand-in parameters and the scheduler
    from ``info`` on it, as :func:`reprodl.reproduction.rebuild.rebuild_scheduler` will; the
    scheduler's state and the groups' hyperparameters must come out as they are now.

    Raises:
        ParametersError: naming the constructor argument missing, or what came out different.
    """
    import torch

    name = f"{info.module}.{info.class_name}"
    groups = [
        {"params": [torch.zeros(1, requires_grad=True)]}
        | {k: v for k, v in g.items() if k not in ("param_names", "initial_lr")}
        for g in optimizer_info.param_groups
    ]
    try:
        twin_optimizer = type(optimizer)(groups)
    except Exception as exc:  # noqa: BLE001 - any failure means the record cannot rebuild it
        raise ParametersError(
            f"the optimiser {optimizer_info.module}.{optimizer_info.class_name} cannot be rebuilt from its recorded "
            f"parameter groups ({exc}), so the training could not be reproduced: use one of torch.optim's optimisers"
        ) from None
    _require_arguments(type(scheduler), info, name)
    args = {k: v for k, v in info.args.items() if k not in ("last_epoch", "verbose")}
    try:
        twin = type(scheduler)(twin_optimizer, **args)
    except Exception as exc:  # noqa: BLE001 - any failure means the record cannot rebuild it
        raise ParametersError(
            f"the scheduler {name} cannot be rebuilt from the arguments read back from it {args} ({exc}), "
            "so the training could not be reproduced"
        ) from None
    differences = _differences(scheduler, optimizer, twin, twin_optimizer)
    if differences:
        raise ParametersError(
            f"the scheduler {name} rebuilt from the arguments read back from it {args} differs from the one given "
            f"({'; '.join(differences[:4])}), so the training could not be reproduced. Build it in a config "
            "(scheduler: {class: ..., ...}), whose arguments are recorded as given, or pass a freshly built one"
        )


def _require_arguments(cls: type, info: CallableInfo, name: str) -> None:
    """Refuse a scheduler whose required constructor arguments were not all read back."""
    try:
        sig = inspect.signature(cls)
    except (TypeError, ValueError):
        return
    missing = [
        n
        for n, p in sig.parameters.items()
        if n != "optimizer"
        and p.default is inspect.Parameter.empty
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and n not in info.args
    ]
    if missing:
        raise ParametersError(
            f"the scheduler {name} does not keep its constructor argument(s) {', '.join(missing)}, so reprodl "
            "cannot record them and the training could not be reproduced. Build it in a config "
            f"(scheduler: {{class: {info.class_name}, {missing[0]}: ...}}), whose arguments are recorded as given"
        )


def _differences(scheduler: Any, optimizer: Any, twin: Any, twin_optimizer: Any) -> list[str]:
    """What differs between a scheduler (and its optimiser's groups) and one rebuilt from its record."""
    out = []
    was, now = jsonable(scheduler.state_dict()), jsonable(twin.state_dict())
    for key in sorted(set(was) | set(now)):
        if was.get(key) != now.get(key):
            out.append(f"{key}: {was.get(key)!r} given, {now.get(key)!r} rebuilt")
    for i, (g, t) in enumerate(zip(optimizer.param_groups, twin_optimizer.param_groups)):
        for key in sorted(set(g) - {"params"}):
            if jsonable(g.get(key)) != jsonable(t.get(key)):
                out.append(f"group {i} {key}: {g.get(key)!r} given, {t.get(key)!r} rebuilt")
    return out


def class_source_sha256(cls: type) -> str | None:
    """sha256 of a class's source code (None where the source cannot be read)."""
    try:
        return hashlib.sha256(inspect.getsource(cls).encode()).hexdigest()
    except (OSError, TypeError):
        return None


def describe_architecture(model: Any, init_params: dict[str, Any]) -> Architecture:
    """The model's class, constructor arguments, parameter counts and source digest."""
    module, qualname = class_path(model)
    params = list(model.named_parameters())
    return Architecture(
        import_path=f"{module}:{qualname}",
        module=module,
        class_name=qualname,
        init_params=jsonable(dict(init_params)),
        n_parameters=sum(p.numel() for _, p in params),
        n_trainable=sum(p.numel() for _, p in params if p.requires_grad),
        frozen_parameters=[n for n, p in params if not p.requires_grad],
        source_sha256=class_source_sha256(type(model)),
    )
