"""Catalog file size: the full-text index without its own copy of every README (schema 2) vs with it (1).

The entries of ``bench_catalog.py`` (READMEs of 30 words), and the same with READMEs of 300
words (a README a person wrote), are put through ``Catalog.put_many``; the file is vacuumed and
its size taken (after). Then a copy is turned into the layout of schema version 1, whose FTS5
table stored the name, README and annotation text again, and vacuumed (before). Ratio =
after / before (lower is better). Here, 10^4 entries: 30.3 -> 27.0 MB (0.89x, 30 words),
114.0 -> 73.0 MB (0.64x, 300 words). Cross-checked against the reprodl before the change (its
own file, not vacuumed): 31.7 -> 28.3 MB and 115.7 -> 74.7 MB. At 10^5, ten times that
(bench_catalog's 318 MB -> about 283 MB, not vacuumed).

    .venv/bin/python bench/bench_catalog_size.py [--quick]
"""

from __future__ import annotations

import random
import shutil
import sqlite3
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C
from bench_catalog import synthetic, vocabulary

from reprodl.catalog import Catalog

NAME = "catalog_size"
V1_SEARCH = "CREATE VIRTUAL TABLE search USING fts5 (name, readme, annotations, tokenize = 'unicode61')"


def _vacuumed_size(path: Path) -> int:
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode = DELETE")
    db.execute("VACUUM")
    db.close()
    return path.stat().st_size


def _as_v1(path: Path) -> None:
    """Schema version 1's layout: the index holds its own copy of its text; entries has no annotation_text."""
    db = sqlite3.connect(path)
    with db:
        db.execute("DROP TABLE search")
        db.execute(V1_SEARCH)
        db.execute("INSERT INTO search (search, rank) VALUES ('rank', 'bm25(10.0, 1.0, 2.0)')")
        db.execute(
            "INSERT INTO search (rowid, name, readme, annotations) "
            "SELECT id, name, readme, annotation_text FROM entries"
        )
        db.execute("ALTER TABLE entries DROP COLUMN annotation_text")
    db.close()


def sizes(n: int, readme_words: int, tmp: Path) -> dict[str, Any]:
    """After and before sizes (bytes) of a catalog of ``n`` entries with READMEs of ``readme_words`` words."""
    entries, _ = synthetic(n)
    rng, vocab = random.Random(2), vocabulary(random.Random(0))
    for e in entries:
        if readme_words > 30:
            e.readme += " ".join(rng.choices(vocab, k=readme_words - 30)) + "\n"
    after, before = tmp / f"after-{readme_words}.sqlite", tmp / f"before-{readme_words}.sqlite"
    with Catalog(after) as cat:
        cat.put_many(entries)
    shutil.copyfile(after, before)
    _as_v1(before)
    readme_bytes = sum(len(e.readme.encode()) for e in entries)
    return {"after": _vacuumed_size(after), "before": _vacuumed_size(before), "readme_bytes": readme_bytes}


def main() -> None:
    args = C.parse_args(__doc__.splitlines()[0])
    n = 2_000 if args.quick else 10_000
    comparisons, measured = [], {}
    with tempfile.TemporaryDirectory(prefix="reprodl-bench-") as tmp:
        for words in (30, 300):
            s = measured[f"readme_{words}_words"] = sizes(n, words, Path(tmp))
            ratio = s["after"] / s["before"]
            print(
                f"[{NAME}] {n:,} entries, READMEs of {words} words ({s['readme_bytes'] / 1e6:.1f} MB of them): "
                f"before {s['before'] / 1e6:.1f} MB, after {s['after'] / 1e6:.1f} MB -> {ratio:.3f}x; "
                f"at 10^5 about {s['before'] * 1e5 / n / 1e6:.0f} -> {s['after'] * 1e5 / n / 1e6:.0f} MB"
            )
            comparisons.append(
                {
                    "name": f"catalog file at {n:,} entries, READMEs of {words} words",
                    "candidate": "index reads entries (schema 2)",
                    "baseline": "index keeps its own copy (schema 1)",
                    "unit": "MB",
                    "candidate_median_s": s["after"] / 1e6,  # run_all's key for the lower-is-better value
                    "baseline_median_s": s["before"] / 1e6,
                    "ratio": ratio,
                    "paired_ratio_median": None,
                    "target_max_ratio": 1.0,
                    "status": "PASS" if ratio < 1.0 else "FAIL",
                    "note": "vacuumed file sizes; before = the same catalog turned into schema 1's layout",
                }
            )
    C.write_doc(NAME, args, {"n_entries": n, "readme_words": [30, 300]}, comparisons, measured)


if __name__ == "__main__":
    main()
