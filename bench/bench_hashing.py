"""Hashing throughput: creating an image dataset (dtool's manifest) and deep verify vs md5sum.

Data: 200 files of 1-2 MB of random bytes (30 with --quick) in one category, written as
binary PGM images (a header and raw 8-bit pixels) so that ``create_from_dirtree`` (what
``reprodl dataset create-from-dirtree`` runs) accepts them; about 300 MB in all.

Measured in the same run, interleaved, all files in the page cache:
  * baseline: ``find DIR -type f -print0 | xargs -0 md5sum > /dev/null`` over the same
    files (the source tree for creation; the dataset's data directory for verify);
  * create: ``create_from_dirtree`` end to end (decode check, copy into the proto dataset,
    freeze with dtool's md5 manifest, overlays, rename into place), and within it the
    freeze's manifest generation (the hashing) timed on its own;
  * verify: ``StoredDataSet.verify(deep=True)`` (every item re-hashed against the manifest).

Targets: manifest hashing (freeze: the items hashed on every core, then dtool's manifest) and
deep verify each >= 1.9x one md5sum process's bytes/s on a machine with 2 or more CPUs
(0.8x on one). The end-to-end
creation rate is reported against md5sum too, without a target (it also decodes and copies
every file).

    .venv/bin/python bench/bench_hashing.py [--quick]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C
import _timing as T
import dtoolcore
import numpy as np

from reprodl.data import creators
from reprodl.data.creators import create_from_dirtree
from reprodl.store import create as store_create
from reprodl.store import open_dataset

NAME = "hashing"
# Items are hashed on every core (freeze and deep verify): >= 1.9x one md5sum process on 2+ cores.
TARGET = 1.9 if len(os.sched_getaffinity(0)) >= 2 else 0.8
WIDTH = 1024  # PGM rows of 1 KiB; 1024-2047 rows -> 1-2 MiB per file


def write_pgms(root: Path, n_files: int, seed: int = 0) -> int:
    """``n_files`` random 8-bit PGMs in ``root/noise``; returns the total bytes written."""
    rng = np.random.default_rng(seed)
    d = root / "noise"
    d.mkdir(parents=True)
    total = 0
    for i in range(n_files):
        height = int(rng.integers(1024, 2048))
        header = f"P5\n{WIDTH} {height}\n255\n".encode()
        body = rng.integers(0, 256, size=WIDTH * height, dtype=np.uint8).tobytes()
        (d / f"{i:04d}.pgm").write_bytes(header + body)
        total += len(header) + len(body)
    return total


def md5sum_tree(directory: Path) -> None:
    subprocess.run(f"find '{directory}' -type f -print0 | xargs -0 md5sum > /dev/null", shell=True, check=True)


# The phases of creation: the decode check of every image (``open_image`` as
# ``create_from_dirtree`` calls it), copying items into the proto dataset
# (``ProtoDataSet.put_item``) and the freeze's manifest generation, where dtool hashes
# every item (``ProtoDataSet.generate_manifest``).
CREATE_PHASES = [
    (creators, "open_image", "decode_check"),
    (dtoolcore.ProtoDataSet, "put_item", "copy_items"),
    (store_create, "prehash_items", "parallel_hashing"),
    (dtoolcore.ProtoDataSet, "generate_manifest", "manifest_generation"),
]


def main() -> None:
    args = C.parse_args(__doc__.splitlines()[0])
    n_files = 30 if args.quick else 200
    repeats = args.repeats or (3 if args.quick else 5)
    with tempfile.TemporaryDirectory(prefix="reprodl-bench-") as tmp:
        tree = Path(tmp) / "tree"
        total = write_pgms(tree, n_files)
        base = Path(tmp) / "datasets"
        base.mkdir()
        uri = create_from_dirtree(tree, str(base), "noise-ref")
        ds = open_dataset(uri)
        assert ds.total_size() == total and len(ds) == n_files
        data_dir = Path(str(ds._data_dir))
        assert ds.verify(deep=True).ok

        counter = iter(range(1_000_000))
        phases: list[dict[str, float]] = []
        watches = T.Stopwatches()

        def create() -> None:
            name = f"noise-{next(counter)}"
            with watches.patched(CREATE_PHASES):
                created = create_from_dirtree(tree, str(base), name)
            phases.append(watches.take())
            assert created.endswith(name)

        def cleanup_created() -> None:
            for p in base.iterdir():
                if p.name.startswith("noise-") and p.name != "noise-ref":
                    shutil.rmtree(p)

        def verify() -> None:
            report = ds.verify(deep=True)
            assert report.ok and report.n_items == n_files

        runs = {
            "md5sum_source_tree": lambda: md5sum_tree(tree),
            "reprodl_create_from_dirtree": create,
            "md5sum_dataset_items": lambda: md5sum_tree(data_dir),
            "reprodl_verify_deep": verify,
        }
        # Created datasets are removed between rounds (outside the timings), so the disk
        # does not fill and writeback of earlier copies does not pile up.
        times: dict[str, list[float]] = {k: [] for k in runs}
        for fn in runs.values():  # warm-up round: page cache, imports
            fn()
        cleanup_created()
        phases.clear()
        for r in range(repeats):
            order = list(runs) if r % 2 == 0 else list(runs)[::-1]
            for k in order:
                times[k].append(C.timed(runs[k]))
            cleanup_created()

    stats = {k: C.rate_stats(total, t) for k, t in times.items()}
    hashing_s = [p["parallel_hashing"] + p["manifest_generation"] for p in phases]
    stats["reprodl_create_manifest_hashing"] = C.rate_stats(total, hashing_s)
    create_s = stats["reprodl_create_from_dirtree"]["median_s"]
    manifest_s = stats["reprodl_create_manifest_hashing"]["median_s"]
    breakdown = {k: C.median([p[k] for p in phases]) for k in phases[0]}
    breakdown["other"] = create_s - sum(breakdown.values())
    stats["create_phases_median_s"] = breakdown
    print(
        f"[{NAME}] create-from-dirtree phases (median s of {create_s:.3f} s): "
        + ", ".join(f"{k} {v:.3f}" for k, v in breakdown.items())
    )
    md5_src = stats["md5sum_source_tree"]["median_rate"]
    md5_items = stats["md5sum_dataset_items"]["median_rate"]
    comparisons = [
        C.comparison(
            "create-from-dirtree: manifest hashing (freeze)",
            "reprodl_create_manifest_hashing",
            "md5sum",
            stats["reprodl_create_manifest_hashing"]["median_rate"],
            md5_src,
            TARGET,
            "bytes/s",
            f"hashing is {manifest_s / create_s:.0%} of the creation's wall time",
        ),
        C.comparison(
            "verify(deep=True)",
            "reprodl_verify_deep",
            "md5sum",
            stats["reprodl_verify_deep"]["median_rate"],
            md5_items,
            TARGET,
            "bytes/s",
        ),
        C.comparison(
            "create-from-dirtree: end to end",
            "reprodl_create_from_dirtree",
            "md5sum",
            stats["reprodl_create_from_dirtree"]["median_rate"],
            md5_src,
            None,
            "bytes/s",
            "informational: also decodes and copies every file",
        ),
    ]
    C.report(
        NAME,
        args,
        {
            "n_files": n_files,
            "total_bytes": total,
            "repeats": repeats,
            "hashing_share_of_create": manifest_s / create_s,
        },
        comparisons,
        stats,
    )


if __name__ == "__main__":
    main()
