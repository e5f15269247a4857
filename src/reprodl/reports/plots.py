"""The report's plots, drawn with matplotlib (Agg) as PNG bytes, and sample thumbnails.

matplotlib is the ``report`` extra: without it :func:`pyplot` raises
:class:`MissingDependencyError` and the report shows the numbers without the plots.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from reprodl.errors import MissingDependencyError

DPI = 90
MAX_TRACE_POINTS = 4000  # points per plotted trace line (thinned evenly beyond)
TRACE_TENSORS = 4  # fingerprints plotted: the tensors that moved most
CURVES = ("train_loss", "valid_loss", "valid_accuracy", "learning_rate", "wall_time_s")
MAX_LOGGED_METRICS = 8


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display), or a clear error naming the extra."""
    try:
        import matplotlib
    except ImportError:
        raise MissingDependencyError("plots in a report need matplotlib: pip install 'reprodl[report]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plain(text: Any) -> str:
    """``text`` shown as it is: a ``$`` would start matplotlib's mathtext, which a recorded name
    can use to fail the plot (``$\\frac{$``) or exhaust the recursion limit (braces nested 400 deep)."""
    return str(text).replace("$", r"\$")


def to_png(fig: Any) -> bytes:
    """The figure as PNG bytes (and closed)."""
    plt = pyplot()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Tight layout not applied": a long recorded name
        fig.tight_layout()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def _series(history: Sequence[Any], name: str) -> tuple[list[int], list[float]]:
    points = [(m.epoch, getattr(m, name)) for m in history if getattr(m, name, None) is not None]
    return [p[0] for p in points], [float(p[1]) for p in points]


def curves_png(history: Sequence[Any]) -> bytes:
    """Loss (train and validation) and validation accuracy per epoch; the learning rate when it changed."""
    plt = pyplot()
    lrs = _series(history, "learning_rate")[1]
    accuracy = bool(_series(history, "valid_accuracy")[0])
    panels = ["loss"] + (["accuracy"] if accuracy else []) + (["learning rate"] if len(set(lrs)) > 1 else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.0), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        names = {"loss": ["train_loss", "valid_loss"], "accuracy": ["valid_accuracy"]}.get(panel, ["learning_rate"])
        for name in names:
            x, y = _series(history, name)
            if x:
                ax.plot(x, y, marker="o", ms=3, label=name)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_title(panel, fontsize=10)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    return to_png(fig)


def logged_series(logged: Sequence[dict[str, Any]]) -> dict[tuple[str, str], tuple[list[float], list[float]]]:
    """(x axis, metric) -> (xs, ys) of the numbers logged with run.log, by step where given, else by epoch."""
    series: dict[tuple[str, str], tuple[list[float], list[float]]] = {}
    for entry in logged:
        axis = "step" if "step" in entry else "epoch"
        x = entry.get(axis)
        if not isinstance(x, (int, float)):
            continue
        for name, value in entry.items():
            if name not in ("step", "epoch") and isinstance(value, (int, float)) and not isinstance(value, bool):
                xs, ys = series.setdefault((axis, str(name)), ([], []))
                xs.append(float(x))
                ys.append(float(value))
    return dict(list(series.items())[:MAX_LOGGED_METRICS])


def logged_png(series: dict[tuple[str, str], tuple[list[float], list[float]]]) -> bytes:
    """One panel per x axis (step, epoch), a line per metric logged against it."""
    plt = pyplot()
    axes_names = sorted({axis for axis, _ in series}, reverse=True)
    fig, axes = plt.subplots(1, len(axes_names), figsize=(4.2 * len(axes_names), 3.0), squeeze=False)
    for ax, axis in zip(axes[0], axes_names):
        for (where, name), (xs, ys) in series.items():
            if where == axis:
                ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, ms=3, lw=1, label=plain(name))
        ax.set_xlabel(axis)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return to_png(fig)


def _thin(n: int) -> np.ndarray:
    return np.unique(np.linspace(0, n - 1, MAX_TRACE_POINTS).astype(int)) if n > MAX_TRACE_POINTS else np.arange(n)


def trace_png(rows: np.ndarray, tensors: Sequence[str], *, mark_step: int | None = None) -> bytes:
    """Per optimiser step: the loss, and the tensors whose digest changed (exact trace) or the fingerprint of
    the tensors that moved most, minus their first (sampled trace)."""
    plt = pyplot()
    keep = _thin(len(rows))
    steps = rows["step"][keep]
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.0), squeeze=False)
    loss_ax, fp_ax = axes[0]
    loss = rows["loss"][keep]
    if np.isfinite(loss).any():
        loss_ax.plot(steps, loss, lw=0.8)
    loss_ax.set_title("loss per step", fontsize=10)
    if "fingerprint" in (rows.dtype.names or ()):  # a sampled trace (older records)
        fps = rows["fingerprint"].astype(np.float64)
        moved = np.nan_to_num(np.abs(fps - fps[:1]).max(axis=0)) if len(fps) else np.zeros(0)
        for i in list(np.argsort(-moved)[:TRACE_TENSORS]):
            label = plain(tensors[i]) if i < len(tensors) else f"#{i}"
            fp_ax.plot(steps, fps[keep, i] - fps[0, i], lw=0.8, label=label)
        fp_ax.set_title("parameter fingerprint change", fontsize=10)
    else:  # an exact trace: digests have no distance; count the tensors each step changed
        digests = rows["digest"]
        changed = np.concatenate([[0], (digests[1:] != digests[:-1]).sum(axis=1)]) if len(digests) else digests
        fp_ax.plot(steps, changed[keep], lw=0.8, label="tensors changed by the step")
        fp_ax.set_title("tensors whose digest changed", fontsize=10)
    if fp_ax.lines:
        fp_ax.legend(fontsize=7)
    for ax in (loss_ax, fp_ax):
        ax.set_xlabel("optimiser step")
        ax.grid(alpha=0.3)
        if mark_step is not None:
            ax.axvline(mark_step, color="#c62828", ls="--", lw=1)
    return to_png(fig)


def envelope_png(summary: dict[str, Any], history: Sequence[Any] = ()) -> bytes:
    """The seed envelope (mean ± std, min/max per epoch) of each metric, this model's run drawn over it."""
    plt = pyplot()
    metrics = [m for m, rows in summary.get("per_epoch", {}).items() if isinstance(rows, list) and rows]
    fig, axes = plt.subplots(1, max(1, len(metrics)), figsize=(4.2 * max(1, len(metrics)), 3.0), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        rows = summary["per_epoch"][metric]
        x = [float(r["epoch"]) for r in rows]
        mean, std = np.array([float(r["mean"]) for r in rows]), np.array([float(r["std"]) for r in rows])
        ax.fill_between(x, mean - std, mean + std, alpha=0.3, label="mean ± std")
        ax.plot(x, mean, lw=2, label="mean")
        ax.plot(x, [float(r["min"]) for r in rows], "k--", lw=0.7, label="min / max")
        ax.plot(x, [float(r["max"]) for r in rows], "k--", lw=0.7)
        hx, hy = _series(history, metric)
        if hx:
            ax.plot(hx, hy, color="#c62828", marker="o", ms=3, lw=1.2, label="this model")
        ax.set_title(plain(metric), fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return to_png(fig)


def _as_pixels(array: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, 3) uint8 of a sample array, values scaled to [0, 255] unless already uint8."""
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[-1] not in (1, 3, 4):
        a = np.moveaxis(a, 0, -1)
    if a.ndim == 3:
        a = a[..., 0] if a.shape[-1] == 1 else a[..., :3]
    if a.ndim != 2 and not (a.ndim == 3 and a.shape[-1] == 3) or a.size == 0:
        raise ValueError(f"a sample of shape {list(np.shape(array))} is not an image")
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    f = a.astype(np.float64)
    lo, hi = float(np.nanmin(f)), float(np.nanmax(f))
    scaled = np.zeros_like(f) if not math.isfinite(hi - lo) or hi == lo else (f - lo) / (hi - lo)
    return np.ascontiguousarray((np.nan_to_num(scaled) * 255).astype(np.uint8))


def thumbnail_png(array: np.ndarray, *, side: int = 64) -> bytes:
    """A sample (H, W), (C, H, W) or (H, W, C) array as a PNG of at most ``side`` pixels a side."""
    from PIL import Image

    image = Image.fromarray(_as_pixels(array))
    image.thumbnail((side, side))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
