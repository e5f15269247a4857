"""Capturing what a training needs to be redone: code, environment, determinism, components.

The seeds are planned, applied and recorded by :mod:`reprodl.training.seeding`.

Example:
    >>> info = capture_environment()            # doctest: +SKIP
    >>> info.torch                              # doctest: +SKIP
    '2.13.0+cpu'
"""

from __future__ import annotations

import email
import fnmatch
import functools
import hashlib
import importlib.metadata
import inspect
import os
import platform
import re
import subprocess
import sys
import textwrap
import warnings
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from reprodl import __version__, keys
from reprodl.errors import DirtyCodeError, NondeterministicOperationError, ParametersError
from reprodl.provenance import (
    Architecture,
    CallableInfo,
    CodeInfo,
    ComputeProfile,
    Determinism,
    Environment,
    GitInfo,
    OptimizerInfo,
)
from reprodl.training.placement import capture_placement

# --- environment -----------------------------------------------------------------------
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
        name = _redent(meta.get("Name"))
        if name:
            out[name.lower().replace("_", "-")] = _redent(meta.get("Version")) or ""
    return dict(sorted(out.items()))


def _installed_paths() -> list[str]:
    """``sys.path`` without the directories a package vendors inside a site directory and puts on the
    path when imported (Ray's ``ray/thirdparty_files``): their copies are that package's, not installed
    distributions, and they would otherwise appear between a training and its re-run in one process."""
    entries = [os.path.abspath(p or ".") for p in sys.path]
    sites = [e for e in entries if os.path.basename(e) in ("site-packages", "dist-packages")]
    return [e for e in entries if not any(e.startswith(site + os.sep) for site in sites)]


def _metadata_headers(dist: importlib.metadata.Distribution) -> Any:
    """The headers of ``dist.metadata``, parsed once and without the long description.

    ``dist.metadata`` (and ``dist.version``, which re-reads it) runs the e-mail parser over
    the whole file, README included; the headers end at the first blank line, so parsing
    only up to there gives the same Name and Version several times faster.
    """
    text = dist.read_text("METADATA") or dist.read_text("PKG-INFO") or dist.read_text("")
    if text is None:
        return dist.metadata
    # Keep up to the first blank line ("\n\n" or "\r\n\r\n"), the first line break included.
    ends = [i + len(blank) // 2 for blank in ("\n\n", "\r\n\r\n") if (i := text.find(blank)) >= 0]
    if ends:
        text = text[: min(ends)]
    return email.message_from_string(text)


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
    import ctypes

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


# --- code ------------------------------------------------------------------------------
def _git(args: list[str], cwd: Path) -> str | None:
    try:
        res = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout if res.returncode == 0 else None


def _git_many(commands: dict[str, list[str]], cwd: Path) -> dict[str, str | None]:
    """:func:`_git` for several commands, run concurrently; None for each that failed."""
    procs: dict[str, subprocess.Popen[str] | None] = {}
    for key, args in commands.items():
        try:
            procs[key] = subprocess.Popen(
                ["git", *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        except (OSError, subprocess.SubprocessError):
            procs[key] = None
    out: dict[str, str | None] = {}
    for key, proc in procs.items():
        if proc is None:
            out[key] = None
            continue
        try:
            stdout, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            out[key] = None
            continue
        out[key] = stdout if proc.returncode == 0 else None
    return out


def entry_script() -> Path | None:
    """The running script (``__main__``'s file), if there is one."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if path and os.path.isfile(path):
        return Path(path).resolve()
    return None


# Untracked files are kept with the model (DeepDIVA's "backup" of uncommitted code) up to
# these sizes; larger ones are named in the record but not stored.
MAX_UNTRACKED_FILE = 1 << 20
MAX_UNTRACKED_TOTAL = 8 << 20

# Untracked files whose names mark them as secrets are never stored with a model (a model is
# made to be shared): matched case-insensitively against the file name, or against the path's
# tail for a pattern with a "/". Git-ignored files are never stored either.
SECRET_FILE_PATTERNS: tuple[str, ...] = (
    ".env",
    ".env.*",
    "id_rsa*",
    "id_dsa*",
    "id_ecdsa*",
    "id_ed25519*",
    "*.pem",
    "*.key",
    "*.p12",
    "*.pfx",
    "*.kdbx",
    "credentials",
    "credentials.json",
    ".netrc",
    ".pypirc",
    ".git-credentials",
    ".aws/credentials",
    ".ssh/*",
    ".pgpass",
    ".npmrc",
    ".docker/config.json",
    ".htpasswd",
    "secrets",
    "secrets.*",
    # Token files (token, token.json, .token, hf_token, api_token.txt, x.token), but not code
    # or vocabularies: tokenizer.py, token_utils.py, tokens.txt and token.py are stored.
    "token",
    ".token",
    "*.token",
    "token.[!p]*",
    "*_token",
    "*_token.[!p]*",
)

SKIP_SECRET = "secret"
SKIP_TOO_LARGE = "too large"
SKIP_SYMLINK = "symbolic link"
SKIP_OUTSIDE = "outside the repository"
SKIP_OPTED_OUT = "opted out"  # store_untracked=False


def secret_pattern(relpath: str) -> str | None:
    """The deny-list pattern (:data:`SECRET_FILE_PATTERNS`) that ``relpath`` matches, or None."""
    parts = [p.lower() for p in Path(relpath).parts]
    for pattern in SECRET_FILE_PATTERNS:
        tail = pattern.lower().split("/")
        if len(parts) >= len(tail) and all(fnmatch.fnmatchcase(p, t) for p, t in zip(parts[-len(tail) :], tail)):
            return pattern
    return None


def _skip_reason(root: Path, rel: str, size_so_far: int) -> tuple[str | None, int]:
    """(why ``root/rel`` is not stored, or None; its size) for one untracked file."""
    path = root / rel
    if ".." in Path(rel).parts:
        return SKIP_OUTSIDE, 0
    if secret_pattern(rel) is not None:
        return SKIP_SECRET, 0
    if path.is_symlink():
        return SKIP_SYMLINK, 0
    size = path.stat().st_size
    if size > MAX_UNTRACKED_FILE or size_so_far + size > MAX_UNTRACKED_TOTAL:
        return SKIP_TOO_LARGE, size
    return None, size


def capture_code(
    where: str | os.PathLike[str] | None = None, *, store_untracked: bool = True
) -> tuple[CodeInfo, str | None, dict[str, Path]]:
    """Code version of the entry script's repository (or ``where``).

    Returns (info, patch, files): the patch is ``git diff HEAD`` (staged and unstaged changes
    to tracked files), and files maps item relpaths to the untracked files (and, outside git,
    the entry script) to keep beside the model, so the exact code can be rebuilt.

    Untracked files that git ignores are never listed; those named like secrets
    (:data:`SECRET_FILE_PATTERNS`), symbolic links and files too large are not stored, and
    the record names each with the reason (never its content). ``store_untracked=False``
    stores none of them.
    """
    script = entry_script()
    base = Path(where) if where else (script.parent if script else Path.cwd())
    info = CodeInfo(
        entry_script=str(script) if script else None,
        entry_script_sha256=_sha256_file(script) if script else None,
        argv=list(sys.argv),
        working_directory=os.getcwd(),
    )
    root = _git(["rev-parse", "--show-toplevel"], base)
    if root is None:
        files: dict[str, Path] = {}
        if script is not None:
            info.entry_script_item = f"{keys.CODE_DIR}entry/{script.name}"
            files[info.entry_script_item] = script
        return info, None, files
    info.git, patch, files = _capture_git(Path(root.strip()), store_untracked=store_untracked)
    return info, patch, files


def _capture_git(root: Path, *, store_untracked: bool) -> tuple[GitInfo, str | None, dict[str, Path]]:
    """(git info, patch, untracked files to store) of the repository at ``root``."""
    # Independent read-only queries: run them at once rather than one after another.
    res = _git_many(
        {
            "commit": ["rev-parse", "HEAD"],
            "branch": ["rev-parse", "--abbrev-ref", "HEAD"],
            "remote": ["config", "--get", "remote.origin.url"],
            "patch": ["diff", "HEAD", "--binary"],
            "changed": ["diff", "HEAD", "--name-only", "--no-renames", "-z"],
            # Untracked files, git-ignored ones left out (.gitignore, .git/info/exclude, core.excludesFile).
            "untracked": ["ls-files", "--others", "--exclude-standard", "-z", "--full-name"],
        },
        root,
    )
    commit = (res["commit"] or "").strip() or None
    patch = res["patch"] if commit else None
    # A tracked file named like a secret (a committed .env, edited since) stays out of the patch.
    patch_skipped = sorted(rel for rel in (res["changed"] or "").split("\0") if rel and secret_pattern(rel))
    if patch and patch_skipped:
        patch = _git(
            ["diff", "HEAD", "--binary", "--", ".", *(f":(exclude,literal){rel}" for rel in patch_skipped)], root
        )
    untracked = sorted(e for e in (res["untracked"] or "").split("\0") if e)
    # Datasets and models (and the one being written) inside the repository are data, not code.
    untracked = [rel for rel in untracked if not _inside_dataset(root, rel)]
    files, reasons = _select_untracked(root, untracked, store_untracked=store_untracked)
    skipped = list(reasons)[:200]
    git = GitInfo(
        commit=commit,
        branch=(res["branch"] or "").strip() or None,
        dirty=bool(patch) or bool(patch_skipped) or bool(untracked),
        remote=(res["remote"] or "").strip() or None,
        root=str(root),
        untracked=untracked[:200],
        untracked_items=list(files),
        untracked_skipped=skipped,
        untracked_skipped_reasons={rel: reasons[rel] for rel in skipped},
        store_untracked=store_untracked,
        patch_skipped=patch_skipped[:200],
        patch_sha256=hashlib.sha256(patch.encode()).hexdigest() if patch else None,
    )
    return git, (patch or None), files


def _select_untracked(
    root: Path, untracked: list[str], *, store_untracked: bool
) -> tuple[dict[str, Path], dict[str, str]]:
    """(item relpath -> file, for the untracked files stored; relpath -> why, for those not)."""
    files: dict[str, Path] = {}
    reasons: dict[str, str] = {}
    total = 0
    for rel in untracked:
        try:
            why, size = _skip_reason(root, rel, total)
            if not store_untracked and why != SKIP_SECRET:
                why = SKIP_OPTED_OUT
        except OSError:
            continue
        if why is not None:
            reasons[rel] = why
            continue
        total += size
        files[f"{keys.CODE_DIR}untracked/{rel}"] = root / rel
    return files, reasons


def untracked_summary(git: GitInfo | None) -> str | None:
    """One line for people: what untracked files were stored with a model and what was skipped.

    Example: ``stored 2 untracked files: a.py, b.py (skipped: .env [secret])``; None when the
    training ran outside git or found no untracked file.
    """
    if git is None or not (git.untracked_items or git.untracked_skipped or git.patch_skipped):
        return None
    prefix = f"{keys.CODE_DIR}untracked/"
    names = [item.removeprefix(prefix) for item in git.untracked_items]
    line = f"stored {len(names)} untracked file{'' if len(names) == 1 else 's'}"
    if names:
        line += ": " + ", ".join(names)
    if git.untracked_skipped:
        why = git.untracked_skipped_reasons
        line += (
            " ("
            + ("store_untracked=False; " if not git.store_untracked else "")
            + "skipped: "
            + ", ".join(f"{n} [{why.get(n, SKIP_TOO_LARGE)}]" for n in git.untracked_skipped)
            + ")"
        )
    if git.patch_skipped:
        line += f"; left out of the code patch: {', '.join(git.patch_skipped)} [secret]"
    return line


def _inside_dataset(root: Path, rel: str) -> bool:
    """Is ``root/rel`` inside a dtool dataset (a directory holding ``.dtool``) or reprodl's staging?"""
    parts = Path(rel).parts
    if any(p.startswith(".reprodl-staging-") or p == ".dtool" for p in parts):
        return True
    current = root
    for part in parts[:-1]:
        current = current / part
        if (current / ".dtool").is_dir():
            return True
    return False


def require_clean(info: CodeInfo) -> None:
    """DeepDIVA's version-control enforcement: refuse to train on uncommitted code."""
    git = info.git
    if git is None or not git.commit:
        raise DirtyCodeError(
            "refusing to train: the code is not in a git repository with a commit "
            "(require_clean_code=True). Commit it, or train without --require-clean"
        )
    if git.dirty:
        changed = "tracked files changed" if git.patch_sha256 else ""
        extra = f"{len(git.untracked)} untracked file(s): {', '.join(git.untracked[:5])}" if git.untracked else ""
        raise DirtyCodeError(
            f"refusing to train: the repository at {git.root} has uncommitted changes "
            f"({'; '.join(x for x in (changed, extra) if x)}). Commit them (or train without --require-clean, "
            "and reprodl stores the patch and untracked files with the model)"
        )


def _sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- determinism ------------------------------------------------------------------------
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
    from reprodl.provenance.record import NondeterministicUse

    usage = record.nondeterministic_usage = record.nondeterministic_usage or []
    for use in usage:
        if use.operation == op:
            use.count += 1
            return
    usage.append(NondeterministicUse(operation=op, count=1, first_frame=_first_frame_outside_torch()))


def _first_frame_outside_torch() -> str:
    """``file.py:line in function`` of the innermost frame outside torch, warnings and this module."""
    import sys

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


# --- components ----------------------------------------------------------------------------
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
