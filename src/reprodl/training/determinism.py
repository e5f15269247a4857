"""Determinism: torch's deterministic-algorithm settings applied for a run and restored after it, the
nondeterministic operations it used (``deterministic="warn"``), and the errors and warnings that name them.
"""

from __future__ import annotations

import os
import re
import sys
import warnings
from typing import Any, Literal

from reprodl.errors import NondeterministicOperationError, ParametersError
from reprodl.provenance import Determinism
from reprodl.provenance.record import NondeterministicUse

DeterministicSetting = bool | Literal["warn"]

# How torch names an operation without a deterministic implementation (its error and its warning).
_NONDETERMINISTIC_OP = re.compile(r"^(?P<op>.+?) does not have a deterministic implementation", re.DOTALL)


def nondeterministic_operation(message: str) -> str | None:
    """The operation named by torch's "... does not have a deterministic implementation" text, or None."""
    found = _NONDETERMINISTIC_OP.match(message.strip())
    return found.group("op").strip() if found else None


def check_deterministic(value: Any) -> DeterministicSetting:
    """``value`` if it is True, False or "warn"; else :class:`ParametersError`."""
    if isinstance(value, bool) or value == "warn":
        return value
    raise ParametersError(
        f"deterministic should be True, False or 'warn', but got deterministic={value!r}: True refuses operations "
        "without a deterministic implementation, 'warn' runs them and lists them in the record, False trains in "
        "statistical mode"
    )


def set_deterministic_algorithms(mode: bool, *, warn_only: bool) -> None:
    """``torch.use_deterministic_algorithms(mode, warn_only=...)`` without importing torch's compiler stack.

    torch's function imports ``torch._inductor.config`` (about 800 modules, over a second) to
    set inductor's ``deterministic`` flag, which a script that never compiles does not need;
    here the flag is set only where inductor is loaded already (:func:`compiler_deterministic`
    sets it when a compiled model appears later).
    """
    import torch

    torch._C._set_deterministic_algorithms(mode, warn_only=warn_only)
    if "torch._inductor.config" in sys.modules:
        compiler_deterministic(mode)


def compiler_deterministic(mode: bool | None) -> bool | None:
    """Set inductor's ``deterministic`` flag to ``mode`` (None: leave it) where ``torch._inductor.config`` is loaded.

    Returns its previous value, or None when inductor is not loaded (nothing set).
    """
    config: Any = sys.modules.get("torch._inductor.config")  # a config module: its flags are set attributes
    if config is None:
        return None
    was = bool(config.deterministic)
    if mode is not None:
        config.deterministic = mode
    return was


class DeterminismSettings:
    """Apply bitwise-determinism settings for a block and restore the previous ones after.

    ``deterministic=True``: an operation torch cannot run deterministically raises, and leaves
    the block as :class:`NondeterministicOperationError` naming it. ``"warn"``: torch's warn-only
    mode; each such operation that runs is appended to the returned record's
    ``nondeterministic_ops`` (and shown once). ``False``: statistical mode, nothing applied.
    The script's own settings stay its own (:meth:`check_in_force` says which one is changed).
    """

    def __init__(self, deterministic: DeterministicSetting, device_type: str) -> None:
        self.deterministic = check_deterministic(deterministic)
        self.device_type = device_type
        self._saved: dict[str, Any] = {}
        self._warnings: Any = None
        self._record: Determinism | None = None

    def __enter__(self) -> Determinism:
        import torch

        self._saved = {
            "algos": torch.are_deterministic_algorithms_enabled(),
            "warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
            "cudnn_det": torch.backends.cudnn.deterministic,
            "cudnn_bench": torch.backends.cudnn.benchmark,
            "cublas": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
            "inductor": compiler_deterministic(None),
        }
        if self.deterministic:
            if self.device_type == "cuda" and not os.environ.get("CUBLAS_WORKSPACE_CONFIG"):
                os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
            set_deterministic_algorithms(True, warn_only=self.deterministic == "warn")
            torch.backends.cudnn.deterministic = True
        self._record = self.describe()
        self.check_in_force()
        if self.deterministic == "warn":
            self._listen()
        return self._record

    def check_in_force(self) -> None:
        """Keep the record current with the script's settings; change only what bitwise determinism needs.

        TF32 and the float32 matmul precision are the script's to choose (deterministic either way):
        they are recorded as in force now. ``cudnn.benchmark`` picks kernels by timing, so in bitwise
        mode a script's True is switched off, once, with a :class:`DeterminismWarning`, and the record
        keeps both values (``script_settings``). Inductor's ``deterministic`` flag is set here when
        a compiled model has loaded it since entry. Called on entry, by ``run.watch`` and at the first
        optimiser step.
        """
        import torch

        record = self._record
        if record is None:
            return
        if self.deterministic and self._saved.get("inductor") is None:  # inductor loaded since: a compiled model
            self._saved["inductor"] = compiler_deterministic(True)
        record.tf32_matmul = torch.backends.cuda.matmul.allow_tf32
        record.tf32_cudnn = torch.backends.cudnn.allow_tf32
        record.float32_matmul_precision = torch.get_float32_matmul_precision()
        if self.deterministic and torch.backends.cudnn.benchmark:
            torch.backends.cudnn.benchmark = False
            record.cudnn_benchmark = False
            changed_setting(
                record,
                "cudnn_benchmark",
                True,
                "torch.backends.cudnn.benchmark = True chooses cuDNN kernels by timing them, so bits may differ "
                "from run to run; reprodl set it to False for this bitwise run (start_run(deterministic=False) "
                "keeps it)",
            )

    def describe(self) -> Determinism:
        import torch

        return Determinism(
            mode="bitwise" if self.deterministic else "statistical",
            use_deterministic_algorithms=torch.are_deterministic_algorithms_enabled(),
            cudnn_deterministic=torch.backends.cudnn.deterministic,
            cudnn_benchmark=torch.backends.cudnn.benchmark,
            cublas_workspace_config=os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
            tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
            tf32_cudnn=torch.backends.cudnn.allow_tf32,
            float32_matmul_precision=torch.get_float32_matmul_precision(),
            num_threads=torch.get_num_threads(),
            warn_only=torch.is_deterministic_algorithms_warn_only_enabled(),
        )

    def _listen(self) -> None:
        """Catch torch's warn-only warnings for the block: each operation listed, and shown once."""
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.filterwarnings(
            "always", message=".*does not have a deterministic implementation", category=UserWarning
        )
        show = warnings.showwarning

        def on_warning(message: Any, category: Any, *args: Any, **kwargs: Any) -> None:
            op = nondeterministic_operation(str(message))
            ops = self._record.nondeterministic_ops if self._record is not None else []
            if op is None or op not in ops:
                show(message, category, *args, **kwargs)
            if op is not None and self._record is not None:
                _count_use(self._record, op)
            if op is not None and op not in ops:
                ops.append(op)

        warnings.showwarning = on_warning

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        import torch

        if self._warnings is not None:
            self._warnings.__exit__(None, None, None)
            self._warnings = None
        s = self._saved
        set_deterministic_algorithms(s["algos"], warn_only=s["warn_only"])
        if s.get("inductor") is not None:
            compiler_deterministic(s["inductor"])
        torch.backends.cudnn.deterministic = s["cudnn_det"]
        torch.backends.cudnn.benchmark = s["cudnn_bench"]
        if s["cublas"] is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = s["cublas"]
        if isinstance(exc, RuntimeError) and not isinstance(exc, NondeterministicOperationError):
            op = nondeterministic_operation(str(exc))
            if op is not None:
                raise refuse_nondeterministic(op) from exc


def _count_use(record: Determinism, op: str) -> None:
    """Count a run of ``op`` in ``record.nondeterministic_usage``; its first run notes the caller's frame."""

    usage = record.nondeterministic_usage = record.nondeterministic_usage or []
    for use in usage:
        if use.operation == op:
            use.count += 1
            return
    usage.append(NondeterministicUse(operation=op, count=1, first_frame=_first_frame_outside_torch()))


def _first_frame_outside_torch() -> str:
    """``file.py:line in function`` of the innermost frame outside torch, warnings and this module."""

    import torch

    skip = (os.path.dirname(torch.__file__), os.path.dirname(warnings.__file__) + os.sep + "warnings", __file__)
    frame = sys._getframe(1)
    while frame is not None:
        name = frame.f_code.co_filename
        if not name.startswith(skip):
            return f"{os.path.basename(name)}:{frame.f_lineno} in {frame.f_code.co_name}"
        frame = frame.f_back  # type: ignore[assignment]  # f_back is None past the outermost frame: the loop ends there
    return ""


def describe_nondeterministic(determinism: Determinism) -> str:
    """The operations run without a deterministic implementation, with counts and first frames where known."""
    usage = {u.operation: u for u in determinism.nondeterministic_usage or []}
    parts = []
    for op in determinism.nondeterministic_ops:
        use = usage.get(op)
        parts.append(f"{op} ({use.count}x, first at {use.first_frame or 'an unknown frame'})" if use else op)
    return ", ".join(parts)


class DeterminismWarning(UserWarning):
    """reprodl changed a setting the script made, because bitwise determinism needs it (said once)."""


def changed_setting(record: Determinism, field: str, script_value: Any, message: str) -> None:
    """Record ``field`` as the script set it (``script_value``; the record holds the applied value); say so once."""
    if field in record.script_settings:
        return
    record.script_settings[field] = script_value
    warnings.warn(message, DeterminismWarning, stacklevel=4)


def refuse_nondeterministic(op: str) -> NondeterministicOperationError:
    """The error for ``op``, which torch cannot run deterministically, met with deterministic=True."""
    return NondeterministicOperationError(
        f"the operation {op} has no deterministic implementation in torch, and the training ran with "
        "deterministic=True (torch.use_deterministic_algorithms(True)), so no model was written. Replace the "
        "operation, or allow it: deterministic='warn' (a config's `deterministic: warn`) runs it and lists it in "
        "the record (training.determinism.nondeterministic_ops); deterministic=False trains in statistical mode",
        operation=op,
    )
