"""The one policy for what a run records of a wrapped model or optimiser: the original inside.

``torch.compile``'s ``OptimizedModule``, DistributedDataParallel, DataParallel and Lightning
Fabric's ``_FabricModule`` are looked through to the user's module (recorded, traced and saved by
its class, source and weight names); Fabric's ``_FabricOptimizer`` to the optimiser inside (recorded
by its class and hyperparameters; its hooks count each step once). ``torch.compile``'s and Fabric's
wrappers are known by their type's name and what they hold, never imported: a plain script
imports neither the compiler stack nor Lightning.

:class:`RunHooks` keeps the run's forward hook off a copy or pickle of the module it is installed on.

Example:
    >>> original_module(torch.nn.DataParallel(torch.nn.Linear(2, 1)))[0]  # doctest: +SKIP
    Linear(in_features=2, out_features=1, bias=True)
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch

from reprodl.training.distributed import unwrap


def original_module(model: torch.nn.Module) -> tuple[torch.nn.Module, bool]:
    """(the module inside its wrappers, whether one of them was ``torch.compile``'s).

    The wrappers: DistributedDataParallel and DataParallel (``.module``), ``torch.compile``'s
    ``OptimizedModule`` (``_orig_mod``) and Lightning Fabric's ``_FabricModule`` (``_forward_module``,
    itself possibly a compiled or DDP module), in any nesting: the model is recorded, traced and
    saved by that module (its class, source and weight names).
    """
    compiled = False
    while (inside := _wrapped(model)) is not None:
        model, kind = inside
        compiled = compiled or kind == "compile"
    return model, compiled


def forward_module(model: torch.nn.Module) -> torch.nn.Module:
    """The module whose forward runs inside Fabric's precision context: ``model`` without Fabric's wrapper.

    Its forward pre-hooks see the autocast Fabric's mixed precision enters around it (the
    wrapper's own see none); other wrappers are kept (a compiled module is hooked as given).
    """
    while (inside := _wrapped(model)) is not None and inside[1] == "fabric":
        model = inside[0]
    return model


def wrapper_names(model: torch.nn.Module) -> dict[str, str]:
    """How a module tracker (the operation log's) names the module inside ``model``'s wrappers, and the name
    to show instead: {``"_FabricModule._forward_module"``: ``"Net"``, ...}, one entry for each wrapper the
    forward pass may start at (empty: no wrapper)."""
    levels: list[tuple[torch.nn.Module, str]] = []  # (a wrapper, the attribute holding what it wraps)
    m = model
    while (inside := _wrapped(m)) is not None:
        attr = next((k for k, v in m.__dict__.get("_modules", {}).items() if v is inside[0]), None)
        if attr is None:
            break
        levels.append((m, attr))
        m = inside[0]
    original = type(m).__name__
    return {
        ".".join([type(levels[i][0]).__name__, *(attr for _, attr in levels[i:])]): original for i in range(len(levels))
    }


def _wrapped(model: torch.nn.Module) -> tuple[torch.nn.Module, str] | None:
    """(the module ``model`` wraps, the wrapper's kind: "parallel", "compile" or "fabric"), or None."""
    if isinstance(model, torch.nn.DataParallel):
        return model.module, "parallel"
    if (inner := unwrap(model)) is not model:
        return inner, "parallel"
    name = type(model).__name__
    held = model.__dict__.get("_modules", {})  # a wrapper's submodules, read without its __getattr__
    if name == "OptimizedModule" and isinstance(held.get("_orig_mod"), torch.nn.Module):
        return held["_orig_mod"], "compile"
    if name == "_FabricModule" and isinstance(held.get("_forward_module"), torch.nn.Module):
        return held["_forward_module"], "fabric"
    return None


def original_optimizer(optimizer: Any) -> Any:
    """The optimiser inside Lightning Fabric's wrapper (``_FabricOptimizer``, whose class Fabric makes per
    optimiser class: ``FabricSGD``), else ``optimizer`` itself; recorded by its class and hyperparameters.

    The wrapper's ``step`` steps the optimiser inside once, whose hooks count it.
    """
    while any(c.__name__ == "_FabricOptimizer" for c in type(optimizer).__mro__):
        inner = vars(optimizer).get("_optimizer")
        if not isinstance(inner, torch.optim.Optimizer) or inner is optimizer:
            break
        optimizer = inner
    return optimizer


class RunHooks(OrderedDict):  # torch's hook dict: id -> hook
    """A module's forward pre-hooks that leave the run's own out when the module is pickled or copied.

    A script may ``torch.save(model)`` (the whole module, as PyTorch's word-language-model example
    does) or ``copy.deepcopy(model)`` while the run watches it: the copy gets the script's hooks,
    never the run's (a closure that cannot be pickled and that would count the copy's passes).
    """

    ours: set[int]

    def __reduce__(self) -> Any:
        kept = [(k, v) for k, v in self.items() if k not in self.ours]
        return (OrderedDict, (), None, None, iter(kept))

    @classmethod
    def installed(cls, module: torch.nn.Module) -> RunHooks | None:
        """The module's pre-hook dict as one of these (swapped in while it is empty), or None.

        A module that has hooks of the script's already keeps its dict (their handles point at it).
        """
        hooks = module._forward_pre_hooks
        if isinstance(hooks, cls):
            return hooks
        if hooks:
            return None
        mine = cls()
        mine.ours = set()
        module._forward_pre_hooks = mine  # a subclass of the dict torch keeps
        return mine
