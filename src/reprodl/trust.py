"""The one policy that turns a recorded name into a Python object.

A provenance record, a config or a parent model names classes as ``module:qualname``. Anyone
can edit a record and recompute its self-digest, so such a name is hostile input: resolving it
freely would reach any callable in the process (``reprodl.zoo:torch.nn.modules.module.os.system``)
and calling that with recorded keyword arguments runs code. Every place that turns a recorded
name into an object (architecture, optimiser, loss, scheduler, transforms, config classes)
goes through :func:`resolve`, which accepts a name only when:

1. its module is trusted for that kind (reprodl's zoo for architectures, ``torch.optim`` for
   optimisers, ``torch.optim.lr_scheduler`` for schedulers, ``torch.nn`` losses, reprodl's
   transforms) or allowed by the user (``allow=["mypkg.models"]`` or ``"mypkg.models:Net"``),
   and no module outside that is imported to find out;
2. the qualname walks through classes only, never through a module or a function;
3. the object is a class *defined* in the named module or one of its submodules
   (``obj.__module__``), so a name re-exported from elsewhere is refused; for losses, a
   function on :data:`LOSS_FUNCTIONS` is accepted too;
4. the object is of the expected kind: optimisers subclass ``torch.optim.Optimizer``,
   schedulers ``LRScheduler``, losses and architectures ``torch.nn.Module``.

:func:`refusal` gives the same judgement as a reason (or None) without raising, for
``reprodl verify``.

Example:
    >>> resolve("torch.optim:SGD", Kind.OPTIMIZER).__name__
    'SGD'
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import inspect
import os
import sys
from collections.abc import Iterable
from typing import Any

from reprodl import keys
from reprodl.errors import ModelLoadError, ParametersError, UnsafeImportError


class Kind(str, enum.Enum):
    """What a recorded name must be."""

    ARCHITECTURE = "architecture"
    OPTIMIZER = "optimizer"
    SCHEDULER = "scheduler"
    LOSS = "loss function"
    TRANSFORM = "transform"


#: Modules whose classes are trusted without the user's say-so, per kind (submodules included).
TRUSTED_MODULES: dict[Kind, tuple[str, ...]] = {
    Kind.ARCHITECTURE: ("reprodl.zoo",),
    Kind.OPTIMIZER: ("torch.optim",),
    Kind.SCHEDULER: ("torch.optim.lr_scheduler",),
    Kind.LOSS: ("torch.nn.modules.loss",),
    Kind.TRANSFORM: ("reprodl.data.transforms",),
}

#: The loss *functions* (not classes) a record may name: ``torch.nn.functional``'s losses.
LOSS_FUNCTIONS: frozenset[str] = frozenset(
    f"torch.nn.functional:{name}"
    for name in (
        "binary_cross_entropy",
        "binary_cross_entropy_with_logits",
        "cosine_embedding_loss",
        "cross_entropy",
        "ctc_loss",
        "gaussian_nll_loss",
        "hinge_embedding_loss",
        "huber_loss",
        "kl_div",
        "l1_loss",
        "margin_ranking_loss",
        "mse_loss",
        "multi_margin_loss",
        "multilabel_margin_loss",
        "multilabel_soft_margin_loss",
        "nll_loss",
        "poisson_nll_loss",
        "smooth_l1_loss",
        "soft_margin_loss",
        "triplet_margin_loss",
        "triplet_margin_with_distance_loss",
    )
)

_MAX_NAME = 300


#: The class a resolved name must subclass, per kind, named as ``module:qualname`` and looked up
#: only once its (trusted) module is imported, so this module imports neither torch nor reprodl.data.
BASE_CLASSES: dict[Kind, str] = {
    Kind.ARCHITECTURE: "torch.nn:Module",
    Kind.OPTIMIZER: "torch.optim:Optimizer",
    Kind.SCHEDULER: "torch.optim.lr_scheduler:LRScheduler",
    Kind.LOSS: "torch.nn:Module",
    Kind.TRANSFORM: "reprodl.data.transforms:Transform",
}


def _base_class(kind: Kind) -> type:
    module, qualname = BASE_CLASSES[kind].split(":")
    base: type = _lookup(module, qualname, BASE_CLASSES[kind])
    return base


def split_path(path: str) -> tuple[str, str]:
    """``module:qualname`` (or the dotted ``module.Name`` configs use) as (module, qualname)."""
    if not isinstance(path, str) or not path or len(path) > _MAX_NAME:
        raise UnsafeImportError(
            f"{str(path)[:80]!r} is not a class name reprodl can import "
            f"(a non-empty 'module:Class' string of at most {_MAX_NAME} characters)"
        )
    if ":" in path:
        module, _, qualname = path.partition(":")
    else:
        module, _, qualname = path.rpartition(".")
    parts = [*module.split("."), *qualname.split(".")]
    if not module or not qualname or not all(p.isidentifier() for p in parts):
        raise UnsafeImportError(f"{path!r} is not a class name reprodl can import: expected 'module:Class'")
    return module, qualname


def _within(module: str, root: str) -> bool:
    return module == root or module.startswith(root + ".")


def _roots(kind: Kind, allow: Iterable[str]) -> list[tuple[str, str | None]]:
    """(module root, exact qualname or None) pairs trusted for ``kind``."""
    roots: list[tuple[str, str | None]] = [(m, None) for m in TRUSTED_MODULES[kind]]
    if kind is Kind.TRANSFORM:
        return roots  # transforms are rebuilt from reprodl's own registry only
    for entry in allow:
        module, _, qualname = str(entry).partition(":")
        roots.append((module, qualname or None))
    return roots


def _import_allowed(module: str, qualname: str, roots: list[tuple[str, str | None]]) -> bool:
    """Whether importing ``module`` to look ``qualname`` up stays inside trusted code: the
    module is inside a root, or a package above one (``torch.nn`` above its losses)."""
    for root, exact in roots:
        if exact is not None:
            if module == root and qualname == exact:
                return True
        elif _within(module, root) or _within(root, module):
            return True
    return False


def _defined_allowed(defined_in: str, qualname: str, roots: list[tuple[str, str | None]]) -> bool:
    for root, exact in roots:
        if exact is not None:
            if _within(defined_in, root) and qualname == exact:
                return True
        elif _within(defined_in, root):
            return True
    return False


def _lookup(module: str, qualname: str, path: str) -> Any:
    """Import ``module`` and walk ``qualname`` through classes only."""
    try:
        obj: Any = sys.modules[module] if module == "__main__" else importlib.import_module(module)
    except ImportError as exc:
        raise ModelLoadError(f"cannot import module {module!r} named by {path!r}: {exc}") from None
    parts = qualname.split(".")
    for i, part in enumerate(parts):
        if part.startswith("__"):
            raise UnsafeImportError(f"{path!r} walks through the dunder attribute {part!r}: refused")
        obj = inspect.getattr_static(obj, part, None) if inspect.isclass(obj) else getattr(obj, part, None)
        if obj is None:
            raise ModelLoadError(f"module {module!r} has no {qualname!r} (named by {path!r})")
        if i < len(parts) - 1 and not inspect.isclass(obj):
            kind = "module" if inspect.ismodule(obj) else type(obj).__name__
            raise UnsafeImportError(
                f"{path!r} walks through the {kind} {part!r}: a recorded name must name a "
                "class in its own module, not reach into another"
            )
    return obj


#: Why a class of a training script (``__main__:Net``) is not imported, and what to do instead.
SCRIPT_CLASS_HINT = (
    "A class defined in a training script is never imported from a record: its class body, decorators "
    "and default arguments are code that would run. Pass the class itself (Python: model_class=Net, from "
    "your own copy of the script), move it into a module and allow that module (--allow mypkg.models), or, "
    "for a model trained with reprodl.start_run, run `reprodl reproduce URI --trust-code`, which re-executes "
    "the stored code in a temporary copy after showing its digest"
)


def refuse_script_class(path: str, *, where: str | None = None) -> None:
    """Refuse ``path`` when it names a class of a training script (``__main__``) that this
    process's ``__main__`` does not define: such a class is rebuilt from no stored code."""
    module, qualname = split_path(path)
    if module != "__main__":
        return
    if inspect.isclass(getattr(sys.modules.get("__main__"), qualname.split(".")[0], None)):
        return  # the training script itself is running: its own class, under the allow-list
    raise UnsafeImportError(
        f"{path!r}{f' (named by {where})' if where else ''} is a class of a training script. {SCRIPT_CLASS_HINT}"
    )


def resolve(path: str, kind: Kind, *, allow: Iterable[str] = ()) -> Any:
    """The class (or, for losses, listed function) a recorded ``path`` names, if the policy trusts it.

    Args:
        path: ``module:qualname`` (or ``module.Name``).
        kind: what it must be (:class:`Kind`).
        allow: modules (``"mypkg.models"``, submodules included) or exact ``"module:Class"``
            paths the user trusts, under the same rules.

    Raises:
        UnsafeImportError: the name is not trusted, walks out of its module, or is not of ``kind``.
        ModelLoadError: a trusted module that cannot be imported or has no such class.
    """
    module, qualname = split_path(path)
    canonical = f"{module}:{qualname}"
    if kind is Kind.LOSS and canonical in LOSS_FUNCTIONS:
        return _lookup(module, qualname, path)
    roots = _roots(kind, list(allow))
    if not _import_allowed(module, qualname, roots):
        hint = (
            ""
            if kind is Kind.TRANSFORM
            else f" {SCRIPT_CLASS_HINT}"
            if module == "__main__"
            else (
                f" If you trust it, pass allow=[{module!r}] (CLI: --allow {module})"
                + (" or model_class=YourClass" if kind is Kind.ARCHITECTURE else "")
            )
        )
        raise UnsafeImportError(
            f"the {kind.value} {canonical!r} is not from a trusted module "
            f"({', '.join(TRUSTED_MODULES[kind])}), so reprodl will not import it.{hint}"
        )
    obj = _lookup(module, qualname, path)
    if not inspect.isclass(obj):
        what = "function" if callable(obj) else type(obj).__name__
        extra = " (loss functions must be one of torch.nn.functional's losses)" if kind is Kind.LOSS else ""
        raise UnsafeImportError(f"{canonical!r} names a {what}, not a class: refused as the {kind.value}{extra}")
    defined_in = getattr(obj, "__module__", "") or ""
    if not (_within(defined_in, module) and _defined_allowed(defined_in, qualname, roots)):
        raise UnsafeImportError(
            f"{canonical!r} is the class {defined_in}:{obj.__qualname__}, defined outside "
            f"{module}: a recorded name must name a class defined in its own module"
        )
    base = _base_class(kind)
    if not issubclass(obj, base):
        raise UnsafeImportError(
            f"{canonical!r} is not a {kind.value}: it does not subclass {base.__module__}.{base.__qualname__}"
        )
    return obj


def refusal(path: str, kind: Kind, *, allow: Iterable[str] = ()) -> str | None:
    """Why :func:`resolve` would refuse ``path`` (None when it would resolve)."""
    try:
        resolve(path, kind, allow=allow)
    except (UnsafeImportError, ModelLoadError) as exc:
        return str(exc)
    return None


# --- sizes: what recorded integers may make reprodl build or start --------------------------
@dataclasses.dataclass(frozen=True)
class MachineLimits:
    """What this machine has, and so what a recorded integer may ask of it."""

    cpus: int
    memory_bytes: int | None  # physical memory (None where the platform does not say)

    @property
    def workers(self) -> int:
        """The most DataLoader worker processes (``num_workers``) started for a record."""
        return keys.WORKERS_PER_CPU * self.cpus

    def processes(self, backend: str) -> int:
        """The most torchrun processes (``world_size``) of ``backend`` started on this machine."""
        if backend == "nccl":
            import torch

            return torch.cuda.device_count() if torch.cuda.is_available() else 0
        limit = keys.PROCESSES_PER_CPU * self.cpus
        if self.memory_bytes is not None:
            limit = min(limit, self.memory_bytes // keys.PROCESS_MEMORY_BYTES)
        return max(limit, 1)

    @property
    def parameters(self) -> int:
        """The most parameters a recorded architecture may build."""
        if self.memory_bytes is None:
            return keys.MAX_PARAMETERS
        return min(keys.MAX_PARAMETERS, self.memory_bytes // keys.PARAMETER_BYTES)


def machine_limits() -> MachineLimits:
    """This machine's CPUs (those this process may run on) and physical memory."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    try:
        memory: int | None = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        memory = None
    return MachineLimits(cpus=max(cpus, 1), memory_bytes=memory if memory and memory > 0 else None)


def check_workers(n: int, *, what: str) -> None:
    """Refuse ``num_workers=n`` beyond :attr:`MachineLimits.workers` (:class:`ParametersError`)."""
    limits = machine_limits()
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= limits.workers:
        raise ParametersError(
            f"{what}: num_workers={n!r} is not a number of DataLoader workers this machine starts (0 to "
            f"{limits.workers:,}: {keys.WORKERS_PER_CPU} per CPU, {limits.cpus} CPUs here); use fewer workers, "
            "or a machine with more CPUs"
        )


def check_processes(n: int, *, backend: str, what: str) -> None:
    """Refuse ``world_size=n`` processes of ``backend`` beyond :meth:`MachineLimits.processes`."""
    limits = machine_limits()
    most = limits.processes(backend)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= most:
        if backend == "nccl":
            by = "one per GPU"
        else:
            memory = f", {limits.memory_bytes / 2**30:.0f} GiB of memory" if limits.memory_bytes else ""
            by = f"{keys.PROCESSES_PER_CPU} per CPU and {keys.PROCESS_MEMORY_BYTES >> 20} MiB each: {limits.cpus} CPUs"
            by += memory
        raise ParametersError(
            f"{what}: world_size={n!r} processes ({backend}) is more than this machine starts (1 to {most:,}: "
            f"{by}); reproduce it where {n!r} processes can run"
        )


def planned_size(cls: type, init_params: dict[str, Any], *, what: str) -> tuple[int, int] | None:
    """(parameters, modules) of ``cls(**init_params)``, counted from the arguments without building
    anything, for a zoo class that can count itself (``planned_size``); None for any other class."""
    count = getattr(cls, "planned_size", None)
    module = getattr(cls, "__module__", "")
    if count is None or not any(_within(module, root) for root in TRUSTED_MODULES[Kind.ARCHITECTURE]):
        return None
    try:
        n, modules = count(**init_params)
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(f"cannot build {what} with the recorded arguments {_short(init_params)}: {exc}") from None
    return int(n), int(modules)


def check_size(cls: type, init_params: dict[str, Any], *, expected: int | None = None, what: str = "") -> None:
    """Refuse recorded arguments that would build more than this machine's parameter limit
    (:attr:`MachineLimits.parameters`) or :data:`reprodl.keys.MAX_MODULES` modules, or a model of
    another size than the record's ``expected`` parameter count.

    A zoo class is sized from its arguments alone (``planned_size``: nothing is built); any other
    class is built on torch's meta device (no memory, no data). A class that cannot be built on the
    meta device is not sized here (it was trusted anyway).

    Raises:
        ModelLoadError: arguments the class does not take, or a size that does not fit.
    """
    name = what or f"{cls.__module__}:{cls.__qualname__}"
    planned = planned_size(cls, init_params, what=name)
    if planned is None:
        planned = _meta_size(cls, init_params, what=name)
        if planned is None:
            return
    n, modules = planned
    limit = machine_limits().parameters
    for count, most, unit in ((modules, keys.MAX_MODULES, "modules"), (n, limit, "parameters")):
        if count > most:
            raise ModelLoadError(
                f"the recorded arguments {_short(init_params)} make {name} build {count:,} {unit}, more than "
                f"reprodl builds from a record on this machine ({most:,}); refused before building anything"
            )
    if expected and n != expected:
        raise ModelLoadError(
            f"the record says {name} has {expected:,} parameters, but its recorded arguments "
            f"{_short(init_params)} build {n:,}: the record or the class changed"
        )


def _meta_size(cls: type, init_params: dict[str, Any], *, what: str) -> tuple[int, int] | None:
    """(parameters, modules) of ``cls(**init_params)`` built on torch's meta device; None: not buildable there."""
    import torch

    try:
        with torch.device("meta"), torch.random.fork_rng(devices=[]):
            model = cls(**init_params)
    except TypeError as exc:
        raise ModelLoadError(f"cannot build {what} with the recorded arguments {_short(init_params)}: {exc}") from None
    except Exception:  # noqa: BLE001 - a trusted class that needs real data to be built: not sized
        return None
    if not isinstance(model, torch.nn.Module):
        return 0, 0
    return sum(p.numel() for p in model.parameters()), sum(1 for _ in model.modules())


def _short(value: Any, limit: int = 200) -> str:
    """``value`` for a message, cut at ``limit`` characters (recorded arguments may be long)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "...}"
