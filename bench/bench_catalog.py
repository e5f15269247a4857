"""Catalog at scale: index 100,000 synthetic entries, then time each query (p50/p95).

Entries are put through the catalog's own API (``Catalog.put_many``), not made as real
datasets: 2% datasets, 88% models (each trained on one or two datasets, a third of them
fine-tuned from an earlier model, so lineages run several levels deep), 6% reproductions
(with a verdict) and 4% claims (two to four member models each). Every entry has a
generated name, a README of 30 words from a 5,000-word vocabulary and a few annotations;
a model has ten fields (final metrics and hyperparameters). Seeded: the same catalog each run.

Queries, each repeated on random arguments: search (one word; two words of one README; a
word every README holds, informational), models
trained on a dataset (through fine-tuning), lineage of a fine-tuned model, descendants of a
dataset, ``ls --kind model --where 'valid_accuracy>0.95 and epochs>=8'`` (first 100, and all),
reproductions of a model. Target: search p95 < 100 ms at 10^5 entries (ratio = p95 / 100 ms).

    .venv/bin/python bench/bench_catalog.py [--quick]
"""

from __future__ import annotations

import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

from reprodl.catalog import Catalog, Entry, Link, descendants, lineage, ls, models_trained_on, reproductions, search

NAME = "catalog"
SEARCH_BUDGET_S = 0.100
WORDS = 5_000


def vocabulary(rng: random.Random) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return sorted({"".join(rng.choice(letters) for _ in range(rng.randint(4, 9))) for _ in range(WORDS * 2)})[:WORDS]


def _entry(i: int, kind: str, rng: random.Random, vocab: list[str]) -> Entry:
    words = rng.sample(vocab, 30)
    return Entry(
        uuid=f"{kind[:1]}{i:08d}-0000-4000-8000-000000000000",
        kind=kind,
        name=f"{words[0]}-{kind}-{i}",
        manifest_digest=f"sha256:{i:064x}",
        uris=[f"s3://team-bucket/{kind[:1]}{i:08d}"],
        readme="description: " + " ".join(words) + f"\nproject: {words[1]}\n",
        readme_fields={"description": " ".join(words), "project": words[1]},
        annotations={"reprodl.kind": kind, "project": words[1], "owner": f"user{i % 50}"},
        created_at=f"2026-{1 + i % 12:02d}-{1 + i % 28:02d}T00:00:00+00:00",
        creator=f"user{i % 50}",
        record_digest=None if kind == "dataset" else f"sha256:{i:064x}",
    )


def synthetic(n: int, seed: int = 0) -> tuple[list[Entry], dict[str, list[str]]]:
    """``n`` entries and the UUIDs of each kind (models: also those fine-tuned, those reproduced)."""
    rng = random.Random(seed)
    vocab = vocabulary(rng)
    n_data, n_repro, n_claim = max(2, n // 50), n * 6 // 100, n * 4 // 100
    n_model = n - n_data - n_repro - n_claim
    entries, ids = [], {"dataset": [], "model": [], "finetuned": [], "reproduced": [], "words": vocab}
    for i in range(n_data):
        e = _entry(i, "dataset", rng, vocab)
        e.fields = {"n_items": rng.randint(100, 100_000), "input_type": "ImageDataSet"}
        entries.append(e)
        ids["dataset"].append(e.uuid)
    for i in range(n_model):
        e = _entry(i, "model", rng, vocab)
        e.fields = _model_fields(rng)
        e.links = [Link("trained_on", d, role="train") for d in rng.sample(ids["dataset"], rng.randint(1, 2))]
        if ids["model"] and rng.random() < 1 / 3:
            e.links.append(Link("parent", rng.choice(ids["model"][-2000:])))
            ids["finetuned"].append(e.uuid)
        entries.append(e)
        ids["model"].append(e.uuid)
    for i in range(n_repro):
        e = _entry(i, "model", rng, vocab)
        e.uuid = "r" + e.uuid[1:]
        original = rng.choice(ids["model"])
        e.fields, e.verdict = _model_fields(rng), rng.choice(["identical", "within tolerance", "differs"])
        e.links = [Link("reproduces", original), Link("trained_on", rng.choice(ids["dataset"]), role="train")]
        entries.append(e)
        ids["reproduced"].append(original)
    for i in range(n_claim):
        e = _entry(i, "claim", rng, vocab)
        e.verdict = rng.choice(["A better", "B better", "no detectable difference"])
        e.links = [Link("member", m, role=rng.choice("ab")) for m in rng.sample(ids["model"], rng.randint(2, 4))]
        entries.append(e)
    return entries, ids


def _model_fields(rng: random.Random) -> dict[str, Any]:
    return {
        "valid_accuracy": rng.random(),
        "valid_loss": rng.random() * 2,
        "train_loss": rng.random() * 2,
        "epochs": rng.randint(1, 10),
        "batch_size": rng.choice([32, 64, 128]),
        "params.learning_rate": rng.choice([0.1, 0.05, 0.01, 0.001]),
        "architecture": rng.choice(["reprodl.zoo:GenNet", "torchvision.models:resnet18"]),
        "optimizer": rng.choice(["SGD", "Adam"]),
        "seed": rng.randint(0, 9),
        "n_parameters": rng.randint(1_000, 10_000_000),
    }


def latencies(fn: Callable[[Any], Any], args: list[Any]) -> dict[str, Any]:
    """Wall time of ``fn(arg)`` for each arg (after one untimed call): p50, p95, max, and the results' sizes."""
    fn(args[0])
    times, sizes = [], []
    for a in args:
        t0 = time.perf_counter()
        out = fn(a)
        times.append(time.perf_counter() - t0)
        sizes.append(len(out) if hasattr(out, "__len__") else 0)
    times.sort()
    return {
        "n": len(times),
        "p50_s": statistics.median(times),
        "p95_s": times[max(0, int(round(0.95 * len(times))) - 1)],
        "max_s": times[-1],
        "mean_results": statistics.mean(sizes),
    }


def queries(
    cat: Catalog, entries: list[Entry], ids: dict[str, list[str]], rng: random.Random, reps: int
) -> dict[str, dict[str, Any]]:
    words = ids["words"]
    pairs = [" ".join(rng.sample(e.readme.split()[1:], 2)) for e in rng.sample(entries, reps)]  # words of one README
    where = "valid_accuracy>0.95 and epochs>=8"
    return {
        "search (1 word)": latencies(lambda w: search(cat, w), rng.sample(words, reps)),
        "search (2 words)": latencies(lambda w: search(cat, w), pairs),
        "search (a word in every entry)": latencies(lambda w: search(cat, w), ["description"] * max(3, reps // 10)),
        "search --kind claim (that word)": latencies(
            lambda w: search(cat, w, kind="claim"), ["description"] * max(3, reps // 10)
        ),
        "models-trained-on": latencies(lambda d: models_trained_on(cat, d), rng.sample(ids["dataset"], reps)),
        "lineage": latencies(lambda m: lineage(cat, m), rng.sample(ids["finetuned"], reps)),
        "descendants (dataset)": latencies(lambda d: descendants(cat, d), rng.sample(ids["dataset"], reps)),
        "ls --where (first 100)": latencies(lambda w: ls(cat, kind="model", where=w, limit=100), [where] * reps),
        "ls --where (all)": latencies(lambda w: ls(cat, kind="model", where=w), [where] * max(3, reps // 10)),
        "reproductions": latencies(lambda m: reproductions(cat, m), rng.sample(ids["reproduced"], reps)),
    }


def main() -> None:
    args = C.parse_args(__doc__.splitlines()[0])
    n = 10_000 if args.quick else 100_000
    reps = args.repeats or (20 if args.quick else 100)
    entries, ids = synthetic(n)
    with tempfile.TemporaryDirectory(prefix="reprodl-bench-") as tmp, Catalog(Path(tmp) / "catalog.sqlite") as cat:
        t0 = time.perf_counter()
        for i in range(0, n, 10_000):
            cat.put_many(entries[i : i + 10_000])
        cat.resolve_links()
        index_s = time.perf_counter() - t0
        size = (Path(tmp) / "catalog.sqlite").stat().st_size
        results = queries(cat, entries, ids, random.Random(1), reps)
    for name, r in results.items():
        print(
            f"[{NAME}] {name}: p50 {r['p50_s'] * 1000:.1f} ms, p95 {r['p95_s'] * 1000:.1f} ms "
            f"({r['n']} queries, {r['mean_results']:.0f} results on average)"
        )
    print(f"[{NAME}] indexed {n:,} entries in {index_s:.1f} s ({n / index_s:,.0f}/s); file {size / 1e6:.0f} MB")
    p95 = max(results["search (1 word)"]["p95_s"], results["search (2 words)"]["p95_s"])
    ratio = p95 / SEARCH_BUDGET_S
    comparison = {
        "name": f"search p95 at {n:,} entries",
        "candidate": "catalog search p95",
        "baseline": "100 ms budget",
        "unit": "s",
        "candidate_median_s": p95,
        "baseline_median_s": SEARCH_BUDGET_S,
        "ratio": ratio,
        "paired_ratio_median": None,
        "target_max_ratio": 1.0,
        "status": "PASS" if ratio <= 1.0 else "FAIL",
        "note": "p95 of one-word and two-word searches, whichever is slower",
    }
    verdict = f"target <= 1.0x  {comparison['status']}"
    print(f"[{NAME}] {comparison['name']}: {p95 * 1000:.1f} ms vs 100 ms -> {ratio:.3f}x  {verdict}")
    params = {"n_entries": n, "repeats": reps, "vocabulary": WORDS}
    C.write_doc(NAME, args, params, [comparison], {"index_s": index_s, "file_bytes": size, "queries": results})


if __name__ == "__main__":
    main()
