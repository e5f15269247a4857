"""Run every benchmark in bench/ (``bench_*.py``) and print a summary table.

Each script runs in its own process, one after another (the machine is small and noisy),
with ``OMP_NUM_THREADS=1``, and writes ``bench-output/<name>.json`` (``bench_<name>.py``).
The table lists each comparison's figures, the ratio against its named baseline, the
target and PASS/FAIL; ``bench-output/summary.json`` keeps the same. The exit status is 1
when a target fails or a script errs, else 0.

    .venv/bin/python bench/run_all.py [--quick] [--only NAME ...] [--timeout S]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
OUTPUT_DIR = ROOT / "bench-output"


def discover() -> list[tuple[str, Path]]:
    return [(p.stem[len("bench_") :], p) for p in sorted(BENCH_DIR.glob("bench_*.py"))]


def fmt_value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "bytes/s":
        return f"{value / 1e6:,.0f} MB/s"
    if unit == "items/s":
        return f"{value:,.0f}/s"
    if unit == "s":
        return f"{value * 1000:,.0f} ms" if value < 1 else f"{value:,.2f} s"
    return f"{value:,.4g} {unit}"


def rows_of(name: str, doc: dict[str, Any]) -> list[dict[str, str]]:
    """Table rows for one benchmark's comparisons (rates: higher is better; times: lower)."""
    rows = []
    for c in doc.get("comparisons", []):
        unit = c.get("unit", "")
        if "target_max_ratio" in c:  # a time ratio: the target is a ceiling
            cand, base, target = c.get("candidate_median_s"), c.get("baseline_median_s"), c.get("target_max_ratio")
            target_s = "-" if target is None else f"<= {target:g}x"
        else:  # a rate ratio: the target is a floor
            cand, base, target = c.get("candidate_rate"), c.get("baseline_rate"), c.get("target")
            target_s = "-" if target is None else f">= {target:g}x"
        rows.append(
            {
                "bench": name,
                "comparison": c.get("name", "?"),
                "candidate": fmt_value(cand, unit),
                "baseline": f"{c.get('baseline', '?')}: {fmt_value(base, unit)}",
                "ratio": f"{c['ratio']:.2f}x" if isinstance(c.get("ratio"), (int, float)) else "-",
                "target": target_s,
                "status": c.get("status") or "info",
            }
        )
    return rows


def print_table(rows: list[dict[str, str]]) -> None:
    cols = ["bench", "comparison", "candidate", "baseline", "ratio", "target", "status"]
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols}
    line = "  ".join(c.upper().ljust(widths[c]) for c in cols)
    print(line)
    print("-" * len(line))
    for r in rows:
        print("  ".join(r[c].ljust(widths[c]) for c in cols))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="pass --quick to every benchmark")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these (e.g. hashing)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per benchmark")
    args = parser.parse_args()

    benches = discover()
    if args.only:
        unknown = sorted(set(args.only) - {n for n, _ in benches})
        if unknown:
            parser.error(f"no such benchmark {unknown}; have {[n for n, _ in benches]}")
        benches = [(n, p) for n, p in benches if n in args.only]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)

    rows: list[dict[str, str]] = []
    runs: list[dict[str, Any]] = []
    failed = False
    for name, script in benches:
        cmd = [sys.executable, str(script)] + (["--quick"] if args.quick else [])
        print(f"=== {name}: {' '.join(cmd[1:])}", flush=True)
        start = time.time()
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, timeout=args.timeout)
            rc: int | str = proc.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
        wall = time.time() - start
        out = OUTPUT_DIR / f"{name}.json"
        doc = None
        if out.is_file() and out.stat().st_mtime >= start - 1:
            doc = json.loads(out.read_text())
        runs.append({"bench": name, "returncode": rc, "wall_s": round(wall, 1), "output": str(out) if doc else None})
        print(f"=== {name}: exit {rc} after {wall:.1f} s", flush=True)
        if rc != 0 or doc is None:
            failed = True
            rows.append(
                {
                    "bench": name,
                    "comparison": f"(script failed: exit {rc})" if rc != 0 else "(no results written)",
                    "candidate": "-",
                    "baseline": "-",
                    "ratio": "-",
                    "target": "-",
                    "status": "ERROR",
                }
            )
            continue
        bench_rows = rows_of(name, doc)
        failed |= any(r["status"] == "FAIL" for r in bench_rows)
        rows.extend(bench_rows)

    print()
    print(
        f"Summary ({'quick' if args.quick else 'full'} run; ratios are medians against the named "
        "baseline measured in the same run)"
    )
    print_table(rows)
    (OUTPUT_DIR / "summary.json").write_text(
        json.dumps({"quick": args.quick, "runs": runs, "rows": rows, "ok": not failed}, indent=2) + "\n"
    )
    n_pass = sum(r["status"] == "PASS" for r in rows)
    n_fail = sum(r["status"] in ("FAIL", "ERROR") for r in rows)
    print(f"\n{n_pass} PASS, {n_fail} FAIL/ERROR; details in {OUTPUT_DIR}/<name>.json")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
