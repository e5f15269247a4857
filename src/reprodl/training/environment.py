"""The environment a training ran in: Python, torch and the installed packages, the CPU (its ISA flags), the
BLAS, the CUDA stack and GPUs, and the numeric environment variables.

    >>> info = capture_environment()            # doctest: +SKIP
    >>> info.torch                              # doctest: +SKIP
    '2.13.0+cpu'
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import os
import platform
import re
import sys
import textwrap
from pathlib import Path
from typing import Any

from reprodl import __version__
from reprodl.provenance import ComputeProfile, Environment
from reprodl.training.placement import capture_placement

_PACKAGES_CACHE: dict[Any, dict[str, str]] = {}


def installed_packages() -> dict[str, str]:
    """Installed distributions, name -> version, sorted by name.

    Read once per state of the import path: the result is kept while ``sys.path``, the
    working directory and the modification times of the path's entries are unchanged
    (installing, upgrading or removing a package changes its site directory's mtime; the
    standard library's own metadata lookup caches on the same key).
    """
    key = _import_path_state()
    packages = _PACKAGES_CACHE.get(key)
    if packages is None:
        packages = _scan_packages()
        _PACKAGES_CACHE.clear()
        _PACKAGES_CACHE[key] = packages
    return dict(packages)


def _import_path_state() -> tuple[Any, ...]:
    state: list[Any] = [os.getcwd()]
    for entry in sys.path:
        try:
            state.append((entry, os.stat(entry or ".").st_mtime_ns))
        except (OSError, TypeError, ValueError):
            state.append((entry, None))
    return tuple(state)


def _scan_packages() -> dict[str, str]:
    out: dict[str, str] = {}
    for dist in importlib.metadata.distributions(path=_installed_paths()):
        meta = _metadata_headers(dist)
        name = _redent(meta.get("name"))
        if name:
            out[name.lower().replace("_", "-")] = _redent(meta.get("version")) or ""
    return dict(sorted(out.items()))


def _installed_paths() -> list[str]:
    """``sys.path`` without the directories a package vendors inside a site directory and puts on the
    path when imported (Ray's ``ray/thirdparty_files``): their copies are that package's, not installed
    distributions, and they would otherwise appear between a training and its re-run in one process."""
    entries = [os.path.abspath(p or ".") for p in sys.path]
    sites = [e for e in entries if os.path.basename(e) in ("site-packages", "dist-packages")]
    return [e for e in entries if not any(e.startswith(site + os.sep) for site in sites)]


def _metadata_headers(dist: importlib.metadata.Distribution) -> dict[str, str]:
    """Name and Version of ``dist`` (keys in lower case), read from its metadata's header block.

    ``dist.metadata`` (and ``dist.version``, which re-reads it) runs the e-mail parser over
    the whole file, README included, and even over the header block alone that parser is
    most of a first environment capture's cost (~25 ms for 170 packages); the two values are
    taken here from the headers the way that parser reads them (:func:`_parse_headers`).
    """
    text = dist.read_text("METADATA") or dist.read_text("PKG-INFO") or dist.read_text("")
    if text is None:
        meta = dist.metadata
        return {key: meta[key] for key in ("name", "version") if key in meta}
    return _parse_headers(text, ("name", "version"))


# What the e-mail parser (``email.feedparser``) takes for a header line, and its line breaks.
_HEADER_LINE = re.compile(r"From |[\041-\071\073-\176]*:|[\t ]")
_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+\Z")


def _parse_headers(text: str, wanted: tuple[str, ...]) -> dict[str, str]:
    """The first value of each ``wanted`` header (lower-case names) as ``email.message_from_string(text)
    .get(name)`` gives it (policy compat32): the headers end at the first line that is not one; a line
    starting with a space or tab continues the header before it, its line break kept (:func:`_redent`
    then folds it as ``importlib.metadata`` does); the value is what follows the colon, leading blanks
    and trailing line breaks stripped. A ``From `` line and a line starting with a colon are no header.
    Reading stops once every wanted value is complete (Name and Version are near the top).
    """
    found: dict[str, str] = {}
    name: str | None = None
    value: list[str] = []
    for match in _LINE.finditer(text):
        line = match.group()
        if not _HEADER_LINE.match(line):
            break
        if line[0] in " \t":
            if name is not None:
                value.append(line)
            continue
        _keep_header(found, name, value, wanted)
        if len(found) == len(wanted):  # the first values are complete: later lines change nothing
            return found
        name, value = None, []
        colon = line.find(":")
        if not line.startswith("From ") and colon > 0:
            name, value = line[:colon].lower(), [line[colon + 1 :].lstrip(" \t")]
    _keep_header(found, name, value, wanted)
    return found


def _keep_header(found: dict[str, str], name: str | None, value: list[str], wanted: tuple[str, ...]) -> None:
    if name in wanted and name not in found:
        found[name] = "".join(value).rstrip("\r\n")


def _redent(value: str | None) -> str | None:
    """What ``importlib.metadata`` does to a folded (multi-line) header value."""
    if not value or "\n" not in value:
        return value
    return textwrap.dedent(" " * 8 + value)


# Instruction-set extensions that change which kernels torch, its BLAS and oneDNN run (x86, then Arm).
ISA_FLAGS: tuple[str, ...] = (
    "sse4_1",
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512dq",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "neon",
    "asimd",
    "asimdhp",
    "asimddp",
    "sve",
    "sve2",
    "bf16",
    "i8mm",
)

# Environment variables that change thread counts or the kernels chosen, so bits.
NUMERIC_ENV_VARS: tuple[str, ...] = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "BLIS_NUM_THREADS",
    "OMP_DYNAMIC",
    "MKL_DYNAMIC",
    "MKL_CBWR",
    "MKL_ENABLE_INSTRUCTIONS",
    "KMP_DETERMINISTIC_REDUCTION",
    "ATEN_CPU_CAPABILITY",
    "ONEDNN_MAX_CPU_ISA",
    "DNNL_MAX_CPU_ISA",
    "OPENBLAS_CORETYPE",
    "NVIDIA_TF32_OVERRIDE",
    "TORCH_ALLOW_TF32_CUBLAS_OVERRIDE",
)


def cpu_description(cpuinfo: str | None = None) -> tuple[str | None, list[str]]:
    """(CPU model, its :data:`ISA_FLAGS`) from ``/proc/cpuinfo`` (or the text given).

    Outside Linux the model is ``platform.processor()`` and the flags are unknown (empty).
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            cpuinfo = ""
    model: str | None = None
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model", "hardware") and model is None and value.strip():
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return model or platform.processor() or None, [f for f in ISA_FLAGS if f in flags]


def blas_description(config: str) -> dict[str, str | None]:
    """BLAS, its version line, LAPACK and oneDNN, read from ``torch.__config__.show()``'s text."""

    def setting(name: str) -> str | None:
        found = re.search(rf"\b{name}=([^,\s]+)", config)
        return found.group(1) if found else None

    def line_with(*words: str) -> str | None:
        for line in config.splitlines():
            text = line.strip().removeprefix("- ").strip()
            if any(w.lower() in text.lower() for w in words) and not text.startswith("Build settings"):
                return text
        return None

    blas = setting("BLAS_INFO")
    names = {"mkl": ("Math Kernel Library",), "open": ("OpenBLAS",), "blis": ("BLIS",), "accelerate": ("Accelerate",)}
    version = line_with(*names.get(blas or "", (blas,))) if blas else None
    return {
        "blas": blas,
        "blas_version": version,
        "lapack": setting("LAPACK_INFO"),
        "onednn": line_with("MKL-DNN", "oneDNN"),
    }


def capture_compute() -> ComputeProfile:
    """The :class:`ComputeProfile` of this process: CPU, ISA, BLAS, threads, GPU stack."""
    import torch

    model, flags = cpu_description()
    parallel = re.search(r"ATen parallel backend: *(.+)", torch.__config__.parallel_info())
    capability = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", None)
    return ComputeProfile(
        cpu_model=model,
        cpu_flags=flags,
        cpu_capability=capability() if capability is not None else None,
        **blas_description(torch.__config__.show()),
        parallel_backend=parallel.group(1).strip() if parallel else None,
        num_threads=torch.get_num_threads(),
        num_interop_threads=torch.get_num_interop_threads(),
        thread_env={name: os.environ[name] for name in NUMERIC_ENV_VARS if name in os.environ},
        tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
        tf32_cudnn=torch.backends.cudnn.allow_tf32,
        float32_matmul_precision=torch.get_float32_matmul_precision(),
        **(_cuda_stack() if torch.cuda.is_available() else {}),
    )


def _cuda_stack() -> dict[str, Any]:
    """The CUDA driver, NCCL and cuBLAS versions, each GPU's compute capability, SM count and MIG mode, and
    the SDPA backends enabled (None for each version that cannot be told)."""
    import torch

    driver: str | None = None
    get_driver = getattr(torch._C, "_cuda_getDriverVersion", None)
    if get_driver is not None:
        try:
            number = int(get_driver())
            driver = f"{number // 1000}.{number % 1000 // 10}"
        except (RuntimeError, TypeError, ValueError):
            driver = None
    nccl: str | None = None
    try:
        version = torch.cuda.nccl.version()
        nccl = ".".join(str(v) for v in version) if isinstance(version, tuple) else str(version)
    except (AttributeError, RuntimeError, TypeError):
        nccl = None
    return {"cuda_driver": driver, "nccl": nccl, "cublas": _cublas_version(), **_gpu_facts()}


def _gpu_facts() -> dict[str, Any]:
    """Each visible GPU's compute capability, SM count and MIG mode; the SDPA backends enabled."""
    import torch

    capability, sms, mig = [], [], []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        capability.append(f"{props.major}.{props.minor}")
        sms.append(int(props.multi_processor_count))
        mig.append(" MIG " in f" {props.name} " or visible.startswith("MIG-"))
    backends = torch.backends.cuda
    sdpa = {
        name: bool(getattr(backends, f"{name}_sdp_enabled")())
        for name in ("flash", "mem_efficient", "math", "cudnn")
        if hasattr(backends, f"{name}_sdp_enabled")
    }
    return {"gpu_compute_capability": capability, "gpu_sm_count": sms, "gpu_mig": mig, "sdpa_backends": sdpa}


def _cublas_version() -> str | None:
    """cuBLAS's version: its pip package's (nvidia-cublas-cu12...), else asked of the library torch loaded."""
    for name, version in installed_packages().items():
        if name.startswith("nvidia-cublas"):
            return version

    try:
        maps = Path("/proc/self/maps").read_text(encoding="utf-8", errors="replace")
        path = next(line.split()[-1] for line in maps.splitlines() if "libcublas.so" in line)
        value = ctypes.c_int()
        parts = []
        lib = ctypes.CDLL(path)
        for prop in (0, 1, 2):  # MAJOR_VERSION, MINOR_VERSION, PATCH_LEVEL
            if lib.cublasGetProperty(prop, ctypes.byref(value)) != 0:
                return None
            parts.append(str(value.value))
        return ".".join(parts)
    except (OSError, StopIteration, AttributeError):
        return None


def capture_environment() -> Environment:
    """Python, platform, CPU/GPU, torch/CUDA/cuDNN and numpy versions, installed packages, compute profile."""
    import numpy
    import torch

    cuda = torch.version.cuda
    gpus: list[str] = []
    if torch.cuda.is_available():
        gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return Environment(
        python=platform.python_version(),
        implementation=platform.python_implementation(),
        platform=platform.platform(),
        machine=platform.machine(),
        processor=platform.processor(),
        cpu_count=os.cpu_count(),
        torch=torch.__version__,
        cuda=cuda,
        cudnn=cudnn,
        gpus=gpus,
        numpy=numpy.__version__,
        reprodl=__version__,
        packages=installed_packages(),
        compute=capture_compute(),
        placement=capture_placement(),
    )
