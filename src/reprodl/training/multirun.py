"""Variance across instantiations (DeepDIVA's multi-run): one model per seed or per split.

A claim about a model rests on many instances, not one. :func:`train_many` trains one model
per seed (initialisation and data order) or per train/test split, then writes a summary
dataset that references them, with mean, std, min and max of every metric per epoch, and a
PNG of the envelope. A reproduction of a statistical-mode model is judged against it.

Example:
    >>> result = train_many(load_config("train.yaml"), seeds=5)   # doctest: +SKIP
    >>> result.summary["final"]["valid_accuracy"]["mean"]          # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from reprodl import __version__, keys
from reprodl.errors import DatasetFormatError, ParametersError
from reprodl.files import read_regular
from reprodl.parsing import load_json
from reprodl.store import create_dataset, open_dataset
from reprodl.training.config import TrainConfig, build_and_train

METRICS = ("train_loss", "valid_loss", "valid_accuracy")


@dataclasses.dataclass
class MultiRunResult:
    summary_uri: str
    model_uris: list[str]
    summary: dict[str, Any]


def _stats(values: list[float]) -> dict[str, float]:
    n = len(values)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return {"mean": mean, "std": math.sqrt(var), "min": min(values), "max": max(values), "n": n}


def summarise(records: list[Any]) -> dict[str, Any]:
    """mean/std/min/max of every metric per epoch and of the final metrics."""
    epochs = min(len(r.results.history) for r in records)
    per_epoch: dict[str, list[dict[str, float]]] = {}
    for metric in METRICS:
        rows = []
        for e in range(epochs):
            values = [getattr(r.results.history[e], metric) for r in records]
            if any(v is None for v in values):
                break
            rows.append({"epoch": e + 1, **_stats([float(v) for v in values])})
        if rows:
            per_epoch[metric] = rows
    final: dict[str, dict[str, float]] = {}
    for metric in sorted({k for r in records for k in r.results.final}):
        values = [r.results.final.get(metric) for r in records]
        if all(isinstance(v, (int, float)) for v in values):
            final[metric] = _stats([float(v) for v in values])
    return {"n_runs": len(records), "per_epoch": per_epoch, "final": final}


def plot_envelope(summary: dict[str, Any], path: str | Path, title: str = "") -> None:
    """PNG of each metric: mean line, shaded mean +/- std, dashed min and max."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = list(summary["per_epoch"])
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        rows = summary["per_epoch"][metric]
        x = [r["epoch"] for r in rows]
        mean = [r["mean"] for r in rows]
        std = [r["std"] for r in rows]
        ax.fill_between(
            x, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], alpha=0.3, label="mean ± std"
        )
        ax.plot(x, mean, lw=2, label="mean")
        ax.plot(x, [r["min"] for r in rows], "k--", lw=0.8, label="min / max")
        ax.plot(x, [r["max"] for r in rows], "k--", lw=0.8)
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{title} ({summary['n_runs']} runs)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def with_split_seed(cfg: TrainConfig, seed: int, test: float = 0.2) -> TrainConfig:
    """A copy of ``cfg`` whose data (the specs with a usetype) are split in memory, stratified, by ``seed``."""
    new = cfg.model_copy(deep=True)
    touched = False
    for role in new.data:
        for spec in new.specs(role):
            if spec.usetype is not None:
                base = dict(spec.split or {"test": test})
                base["seed"] = seed
                spec.split = base
                touched = True
    if not touched:
        raise ParametersError("--splits needs data specs with a usetype (train / test) to split")
    return new


def train_many(
    cfg: TrainConfig,
    *,
    seeds: int = 0,
    splits: int = 0,
    test: float = 0.2,
    progress: Any = False,
    on_run: Callable[[int, str, Any], None] | None = None,
) -> MultiRunResult:
    """Train one model per seed (``seeds=N``) or per stratified split (``splits=N``)."""
    if (seeds > 0) == (splits > 0):
        raise ParametersError("give either seeds=N or splits=N (N >= 2)")
    n = seeds or splits
    if n < 2:
        raise ParametersError(f"a variance needs at least 2 runs, but got {n}")
    uris, records = [], []
    for i, (name, run_cfg) in enumerate(run_configs(cfg, n, by_seed=bool(seeds), test=test)):
        uri, record = build_and_train(run_cfg, progress=progress, name=name)
        uris.append(uri)
        records.append(record)
        if on_run:
            on_run(i, uri, record)
    return write_summary(cfg, uris, records, varied="seed" if seeds else "split")


def run_configs(cfg: TrainConfig, n: int, *, by_seed: bool, test: float) -> list[tuple[str, TrainConfig]]:
    """(model name, config) of each run: seeds base..base+n-1, or splits seeded 0..n-1."""
    base_seed = int(cfg.params.get("seed", 0))
    runs = []
    for i in range(n):
        if by_seed:
            run_cfg = cfg.model_copy(deep=True)
            run_cfg.params = {**cfg.params, "seed": base_seed + i}
            runs.append((f"{cfg.name}.seed{base_seed + i}", run_cfg))
        else:
            runs.append((f"{cfg.name}.split{i}", with_split_seed(cfg, i, test)))
    return runs


def write_summary(cfg: TrainConfig, uris: list[str], records: list[Any], *, varied: str) -> MultiRunResult:
    """The summary dataset referencing the runs (each run is annotated with its URI)."""
    models = [open_dataset(u) for u in uris]
    summary = {
        "kind": keys.KIND_SUMMARY,
        "reprodl_version": __version__,
        "varied": varied,
        "models": [
            {
                "uri": u,
                "uuid": ds.uuid,
                "record_digest": r.digest,
                "seed": r.training.seeds.seed,
                "final": r.results.final,
            }
            for u, ds, r in zip(uris, models, records)
        ],
        **summarise(records),
    }
    text = yaml.safe_dump(
        {"name": f"{cfg.name}.summary", "description": f"{len(uris)} runs of {cfg.name} varying the {varied}"},
        sort_keys=False,
    )
    with create_dataset(cfg.output, f"{cfg.name}.summary", readme=text) as writer:
        writer.put_json(summary, keys.SUMMARY_FILE)
        try:
            with writer.item_file(keys.ENVELOPE_PLOT_FILE) as png:
                plot_envelope(summary, png, title=cfg.name)
        except ImportError:
            pass  # matplotlib is optional: the numbers are what count
        writer.put_annotation(keys.MODEL_KIND, keys.KIND_SUMMARY)
        writer.put_annotation(keys.SUMMARY_MEMBERS, uris)
    assert writer.uri is not None
    for ds in models:
        ds.put_annotation(keys.SUMMARY_URI, writer.uri)
    return MultiRunResult(summary_uri=writer.uri, model_uris=uris, summary=summary)


def load_summary(uri: str) -> dict[str, Any]:
    """The summary (``summary.json``) of the multi-run summary dataset at ``uri``."""
    ds = open_dataset(uri)
    what = f"{ds.uri}: {keys.SUMMARY_FILE}"
    data = read_regular(
        ds.item_path(ds.identifier_of(keys.SUMMARY_FILE)), keys.MAX_METADATA_BYTES, what=what, error=DatasetFormatError
    )
    return load_json(data, what=what, error=DatasetFormatError)
