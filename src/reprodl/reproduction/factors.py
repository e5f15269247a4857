"""The factors that change numerics, recorded against present: which differ, and which this machine can restore.

A :class:`Factor` is one thing that decides which kernels run or how work is split (the ATen
CPU capability, oneDNN's ISA cap, the intra-op threads, the BLAS, the CUDA stack...), its
recorded value and its value now, and, when the machine here can put it back, how: the
environment variables a fresh process needs (:attr:`Factor.restore`). A factor that cannot be
put back here (another CPU's instruction sets, another BLAS or torch) says why
(:attr:`Factor.why_not`). :func:`factors` derives them from the two recorded environments.

Example:
    >>> [f.label for f in factors(record.environment, now)]        # doctest: +SKIP
    ['ATen CPU capability AVX2 -> AVX512']
    >>> factors(record.environment, now)[0].restore                # doctest: +SKIP
    {'ATEN_CPU_CAPABILITY': 'avx2'}
"""

from __future__ import annotations

import dataclasses
from typing import Any

from reprodl.provenance import ComputeProfile, Environment

# ATen's CPU capabilities (x86) and the instruction sets each needs.
CAPABILITY_NEEDS: dict[str, tuple[str, ...]] = {
    "DEFAULT": (),
    "AVX2": ("avx2", "fma"),
    "AVX512": ("avx512f", "avx512bw", "avx512vl", "avx512dq"),
}
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
# Environment variables restored as one factor each: variable -> the factor's name.
ENV_FACTORS: dict[str, str] = {
    "MKL_ENABLE_INSTRUCTIONS": "MKL instruction cap",
    "MKL_CBWR": "MKL conditional numerical reproducibility (MKL_CBWR)",
    "OPENBLAS_CORETYPE": "OpenBLAS core type",
    "KMP_DETERMINISTIC_REDUCTION": "OpenMP deterministic reduction",
    "OMP_DYNAMIC": "OpenMP dynamic threads",
    "MKL_DYNAMIC": "MKL dynamic threads",
    "NVIDIA_TF32_OVERRIDE": "NVIDIA TF32 override",
    "TORCH_ALLOW_TF32_CUBLAS_OVERRIDE": "torch TF32 cuBLAS override",
}
# Compute-profile fields that are the machine's or the software's: never restorable by a setting.
FIXED_FIELDS: tuple[tuple[str, str], ...] = (
    ("cpu_flags", "instruction sets of the CPU"),
    ("blas", "BLAS"),
    ("blas_version", "BLAS version"),
    ("lapack", "LAPACK"),
    ("onednn", "oneDNN version"),
    ("parallel_backend", "ATen parallel backend"),
    ("cuda_driver", "CUDA driver"),
    ("nccl", "NCCL"),
    ("cublas", "cuBLAS"),
    ("gpu_compute_capability", "GPU compute capability"),
    ("gpu_sm_count", "GPU SM count"),
    ("gpu_mig", "GPU MIG mode"),
    ("sdpa_backends", "SDPA backends"),
    ("tf32_matmul", "TF32 matmul"),
    ("tf32_cudnn", "TF32 cuDNN"),
    ("float32_matmul_precision", "float32 matmul precision"),
    ("num_interop_threads", "inter-op threads"),
)
ENV_FIELDS: tuple[tuple[str, str], ...] = (
    ("machine", "machine type"),
    ("torch", "torch"),
    ("cuda", "CUDA"),
    ("cudnn", "cuDNN"),
    ("gpus", "GPUs"),
)
SET_IN_PROCESS = "set by the training's own code, not from outside the process"
OTHER_MACHINE = "the machine or the installed software differs: not a setting this machine can change back"


@dataclasses.dataclass(frozen=True)
class Factor:
    """One factor that changes numerics and differs: its ``name``, ``recorded`` and ``now`` values.

    ``restore``: the environment variables (None: unset) that put it back in a new process here;
    None when it cannot be put back here, and then ``why_not`` says why.
    """

    name: str
    recorded: Any
    now: Any
    restore: dict[str, str | None] | None = None
    why_not: str | None = None

    @property
    def restorable(self) -> bool:
        return self.restore is not None

    @property
    def label(self) -> str:
        """``ATen CPU capability AVX2 -> AVX512``: how the report names it."""
        return f"{self.name} {_show(self.recorded)} -> {_show(self.now)}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def factors(was: Environment, now: Environment) -> list[Factor]:
    """Each factor that changes numerics and differs between the recorded environment ``was`` and ``now``."""
    out = [
        Factor(label, getattr(was, field), getattr(now, field), why_not=OTHER_MACHINE)
        for field, label in ENV_FIELDS
        if getattr(was, field) != getattr(now, field)
    ]
    a, b = was.compute, now.compute
    if a is None or b is None:
        return out
    out += [f for f in (_capability(a, b), _onednn(a, b), _threads(a, b)) if f is not None]
    for var, label in ENV_FACTORS.items():
        if a.thread_env.get(var) != b.thread_env.get(var):
            out.append(
                Factor(label, a.thread_env.get(var), b.thread_env.get(var), restore={var: a.thread_env.get(var)})
            )
    for field, label in FIXED_FIELDS:
        x, y = getattr(a, field, None), getattr(b, field, None)
        if x != y:
            why = SET_IN_PROCESS if field.startswith(("tf32", "float32", "num_interop")) else OTHER_MACHINE
            out.append(Factor(label, x, y, why_not=why))
    return out


def _capability(a: ComputeProfile, b: ComputeProfile) -> Factor | None:
    """The ATen CPU capability: put back with ATEN_CPU_CAPABILITY where this CPU has what it needs."""
    if a.cpu_capability == b.cpu_capability:
        return None
    name = "ATen CPU capability"
    var = "ATEN_CPU_CAPABILITY"
    recorded_var, now_var = a.thread_env.get(var), b.thread_env.get(var)
    if recorded_var is not None:
        return Factor(name, a.cpu_capability, b.cpu_capability, restore={var: recorded_var})
    if now_var is not None and a.cpu_flags == b.cpu_flags:  # the same CPU, capped here: lift the cap
        return Factor(name, a.cpu_capability, b.cpu_capability, restore={var: None})
    needs = CAPABILITY_NEEDS.get(str(a.cpu_capability))
    if needs is None or any(flag not in b.cpu_flags for flag in needs):
        why = f"this CPU cannot run ATen's {a.cpu_capability} kernels (it lacks {', '.join(needs or ('them',))})"
        return Factor(name, a.cpu_capability, b.cpu_capability, why_not=why)
    return Factor(name, a.cpu_capability, b.cpu_capability, restore={var: str(a.cpu_capability).lower()})


def _onednn(a: ComputeProfile, b: ComputeProfile) -> Factor | None:
    """oneDNN's ISA cap (ONEDNN_MAX_CPU_ISA, or its old name DNNL_MAX_CPU_ISA)."""
    names = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
    was = {n: a.thread_env.get(n) for n in names}
    now = {n: b.thread_env.get(n) for n in names}
    if was == now:
        return None
    shown = [next((v for v in d.values() if v is not None), "none") for d in (was, now)]
    return Factor("oneDNN ISA cap", shown[0], shown[1], restore=was)


def _threads(a: ComputeProfile, b: ComputeProfile) -> Factor | None:
    """The intra-op threads: put back with OMP_NUM_THREADS and MKL_NUM_THREADS (torch reads MKL's first)."""
    if a.num_threads == b.num_threads or a.num_threads is None:
        return None
    restore: dict[str, str | None] = {v: str(a.num_threads) for v in THREAD_VARS}
    return Factor("intra-op threads", a.num_threads, b.num_threads, restore=restore)


def _show(value: Any) -> str:
    if value is None:
        return "none"
    text = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."
