"""A dataset of 10^6 items: open time and peak memory, quick verify, ImageDataSet iteration.

The dataset is an ImageDataSet made by ``create_from_dirtree`` from ten 8x8 PNGs (one per
category) and then grown synthetically to N items: every new item is a hard link to its
category's PNG (10^6 real files would take minutes and gigabytes), listed in the manifest
(identifier sha1(relpath), the PNG's size, md5 and modification time, as dtool writes
them) and in the ``category`` overlay. To reprodl and to dtoolcore it is an ordinary
frozen disk dataset of N items.

Each figure runs in a fresh process (``python bench_million.py --probe WHAT``), which
reports its wall time and peak RSS (``VmHWM``: the interpreter, imports and all):

- ``open``: ``open_dataset`` + ``len`` + one ``item_path``, first (reads manifest.json and
  writes the compact index into the cache) and again (reads the index). Targets: the
  second open < 2 s and < 1 GiB at 10^6. Baseline: dtoolcore's
  ``DataSet.from_uri(uri).identifiers`` (what a dtool user's script does to start).
- ``image``: ``ImageDataSet(uri)`` (the category overlay read too).
- ``verify``: quick verify of every item (a stat each, and the walk for unlisted files).
- ``iterate``: after one batch (the one-time work, reported), 5,000 other random samples
  read through a DataLoader from the N-item ImageDataSet vs the same from a 10,000-item
  one: equal rates mean no per-sample work grows with N (target >= 0.9x).

    .venv/bin/python bench/bench_million.py [--quick] [--items N]
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

NAME = "million"
N_FULL = 1_000_000
N_QUICK = 100_000
N_SMALL = 10_000
SAMPLES = 5_000
BATCH = 128
CATEGORIES = [f"c{k}" for k in range(10)]
OPEN_TARGET_S = 2.0
OPEN_TARGET_RSS = 1 << 30


def build(base: Path, name: str, n: int) -> str:
    """The N-item ImageDataSet described in the module docstring; returns its path."""
    import numpy as np
    from PIL import Image

    from reprodl.data.creators import create_from_dirtree

    tree = base / f"{name}-tree"
    rng = np.random.default_rng(0)
    for c in CATEGORIES:
        (tree / c).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(tree / c / "0000000.png")
    uri = create_from_dirtree(tree, str(base), name)
    root = base / name
    items, categories = {}, {}
    for k in range(n):
        c = CATEGORIES[k % len(CATEGORIES)]
        j = k // len(CATEGORIES)
        rel = f"{c}/{j:07d}.png"
        # A new source file every 50,000 links (ext4 allows 65,000 links to one file).
        src = root / "data" / c / f"{j - j % 50_000:07d}.png"
        if not src.exists():
            shutil.copy2(root / "data" / c / "0000000.png", src)
        if not (root / "data" / rel).exists():
            os.link(src, root / "data" / rel)
        st = src.stat()
        idn = hashlib.sha1(rel.encode()).hexdigest()
        items[idn] = {
            "relpath": rel,
            "size_in_bytes": st.st_size,
            "hash": _md5(src),
            "utc_timestamp": st.st_mtime,
        }
        categories[idn] = c
    manifest_path = root / ".dtool" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["items"] = items
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    overlay = root / ".dtool" / "overlays" / "category.json"
    overlay.write_text(json.dumps(categories, indent=2))
    shutil.rmtree(tree)
    return uri


_MD5: dict[Path, str] = {}


def _md5(path: Path) -> str:
    if path not in _MD5:
        _MD5[path] = hashlib.md5(path.read_bytes()).hexdigest()
    return _MD5[path]


# --- probes: one measurement in this (fresh) process ----------------------------------------
def probe(what: str, uri: str) -> dict[str, Any]:
    start = time.perf_counter()
    out: dict[str, Any] = {}
    if what == "open":
        from reprodl.store import open_dataset

        ds = open_dataset(uri)
        out["n"] = len(ds)
        ds.item_path(ds.identifiers[-1])
    elif what == "dtoolcore":
        import dtoolcore

        out["n"] = len(dtoolcore.DataSet.from_uri(uri).identifiers)
    elif what == "image":
        from reprodl.data.datasets import ImageDataSet

        out["n"] = len(ImageDataSet(uri))
    elif what == "verify":
        from reprodl.store import open_dataset

        report = open_dataset(uri).verify()
        assert report.ok, report.problems()[:5]
        out["n"] = report.n_items
    elif what == "iterate":
        out.update(iterate(uri))
    out["seconds"] = time.perf_counter() - start
    out["peak_rss_bytes"] = peak_rss()
    return out


def peak_rss() -> int:
    """This process's peak resident memory: VmHWM (ru_maxrss would include the parent's
    peak on Linux, which a fresh process inherits through fork)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def iterate(uri: str) -> dict[str, Any]:
    """One batch (the one-time work: the identifier map is built on the first lookup), then
    SAMPLES other random samples through a DataLoader, timed: the steady per-sample rate."""
    import torch
    from torch.utils.data import DataLoader, Subset

    from reprodl.data.datasets import ImageDataSet, collate

    ds = ImageDataSet(uri)
    picks = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0)).tolist()
    start = time.perf_counter()
    ds.__getitems__(picks[:BATCH])
    first = time.perf_counter() - start
    loader = DataLoader(Subset(ds, picks[BATCH : BATCH + SAMPLES]), batch_size=BATCH, collate_fn=collate)
    start = time.perf_counter()
    n = sum(len(y) for _x, y in loader)
    return {"samples": n, "iterate_seconds": time.perf_counter() - start, "first_batch_seconds": first}


def run_probe(what: str, uri: str, env: dict[str, str]) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--probe", what, "--uri", uri]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"probe {what} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    if "--probe" in sys.argv:
        what, uri = sys.argv[sys.argv.index("--probe") + 1], sys.argv[sys.argv.index("--uri") + 1]
        print(json.dumps(probe(what, uri)))
        return
    items_arg = None
    if "--items" in sys.argv:
        i = sys.argv.index("--items")
        items_arg = int(sys.argv[i + 1])
        del sys.argv[i : i + 2]
    args = C.parse_args(__doc__.splitlines()[0])
    n = items_arg or (N_QUICK if args.quick else N_FULL)
    with tempfile.TemporaryDirectory(prefix="reprodl-bench-") as tmp:
        base = Path(tmp)
        env = {**os.environ, "DTOOL_CACHE_DIRECTORY": str(base / "cache"), "OMP_NUM_THREADS": "1"}
        t0 = time.perf_counter()
        big, small = build(base, "big", n), build(base, "small", N_SMALL)
        build_s = time.perf_counter() - t0
        m = {
            "open_first": run_probe("open", big, env),
            "open_again": run_probe("open", big, env),
            "dtoolcore_open": run_probe("dtoolcore", big, env),
            "image_open": run_probe("image", big, env),
            "verify_quick": run_probe("verify", big, env),
            "iterate_big": run_probe("iterate", big, env),
            "iterate_small": run_probe("iterate", small, env),
        }
    report(args, n, build_s, m)


def report(args: Any, n: int, build_s: float, m: dict[str, Any]) -> None:
    gib = 1 << 30
    for key, v in m.items():
        print(f"[{NAME}] {key}: {v['seconds']:.2f} s, peak RSS {v['peak_rss_bytes'] / gib:.2f} GiB")
    again = m["open_again"]
    ok = again["seconds"] < OPEN_TARGET_S and again["peak_rss_bytes"] < OPEN_TARGET_RSS
    rate = {k: m[k]["samples"] / m[k]["iterate_seconds"] for k in ("iterate_big", "iterate_small")}
    comparisons = [
        C.comparison(
            f"open {n:,} items (index cached) vs dtoolcore's open",
            "reprodl open_dataset",
            "dtoolcore DataSet.from_uri + identifiers",
            1 / again["seconds"],
            1 / m["dtoolcore_open"]["seconds"],
            None,
            "opens/s",
            f"reprodl {again['seconds']:.2f} s, peak RSS {again['peak_rss_bytes'] / gib:.2f} GiB "
            f"(target < {OPEN_TARGET_S:g} s and < 1 GiB: {'PASS' if ok else 'FAIL'}); first open "
            f"{m['open_first']['seconds']:.2f} s, {m['open_first']['peak_rss_bytes'] / gib:.2f} GiB; dtoolcore "
            f"{m['dtoolcore_open']['peak_rss_bytes'] / gib:.2f} GiB",
        ),
        C.comparison(
            f"ImageDataSet reads from {n:,} items vs {N_SMALL:,}",
            f"ImageDataSet of {n:,}",
            f"ImageDataSet of {N_SMALL:,}",
            rate["iterate_big"],
            rate["iterate_small"],
            0.9,
            "items/s",
            f"{SAMPLES:,} random samples each, after a first batch ({m['iterate_big']['first_batch_seconds']:.2f} s "
            f"at {n:,} items: the identifier map is built on the first lookup); equal rates: no per-sample "
            "work grows with the item count",
        ),
    ]
    comparisons[0]["status"] = "PASS" if ok else "FAIL"
    params = {"n_items": n, "build_seconds": build_s, "synthetic": "hard links + generated manifest"}
    C.report(NAME, args, params, comparisons, m)


if __name__ == "__main__":
    main()
