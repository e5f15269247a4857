"""Run every benchmark in bench/ (``bench_*.py``), print a summary table and write docs/benchmarks.md.

Each script runs in its own process, one after another (the machine is small and noisy),
with ``OMP_NUM_THREADS=1``, and writes ``bench-output/<name>.json`` (``bench_<name>.py``).
The table lists each comparison's figures, the ratio against its named baseline, the
target and PASS/FAIL; ``bench-output/summary.json`` keeps the same. The exit status is 1
when a target fails or a script errs, else 0.

A full run (not ``--quick``) regenerates ``docs/benchmarks.md`` (``--doc PATH`` writes it
elsewhere, or after a quick run): a table per benchmark from its ``bench-output/<name>.json``,
with the machine and the date. With ``--only``, only those benchmarks' sections are replaced
in the existing report; the others stay as they are (and the summary line is recounted).
A benchmark that cannot run here (bench_dtoolai.py without its venv) writes a result
marked ``skipped``: shown as such, never as a failure.

    .venv/bin/python bench/run_all.py [--quick] [--only NAME ...] [--timeout S] [--doc PATH]
"""

from __future__ import annotations

import argparse
import ast
import datetime
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
OUTPUT_DIR = ROOT / "bench-output"
DOC = ROOT / "docs" / "benchmarks.md"


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


def fmt_ratio(ratio: float | None, digits: int) -> str:
    """A ratio with enough digits to judge it against its target (3 for time overheads: 1.01x)."""
    return f"{ratio:.{digits}f}x" if isinstance(ratio, (int, float)) else "-"


def rows_of(name: str, doc: dict[str, Any]) -> list[dict[str, str]]:
    """Table rows for one benchmark's comparisons (rates: higher is better; times: lower)."""
    if doc.get("skipped"):
        return [
            {"bench": name, "comparison": f"(skipped: {doc['skipped']})", "candidate": "-", "baseline": "-"}
            | {"ratio": "-", "paired": "-", "target": "-", "status": "skipped"}
        ]
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
                "candidate": f"{c.get('candidate', '?')}: {fmt_value(cand, unit)}",
                "baseline": f"{c.get('baseline', '?')}: {fmt_value(base, unit)}",
                "ratio": fmt_ratio(c.get("ratio"), 3 if "target_max_ratio" in c else 2),
                "paired": fmt_ratio(c.get("paired_ratio_median"), 3),
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
    parser.add_argument("--doc", type=Path, help=f"write the Markdown report here (default after a full run: {DOC})")
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
                    "paired": "-",
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
    doc_path = args.doc or (None if args.quick else DOC)
    if doc_path is not None:
        by_name = {r["bench"]: r for r in runs}
        if args.only and doc_path.is_file():
            doc_path.write_text(splice(doc_path.read_text(), discover(), by_name))
        else:
            doc_path.write_text(markdown(discover(), by_name))
        print(f"wrote {doc_path}")
    return 1 if failed else 0


# --- docs/benchmarks.md -------------------------------------------------------------------
DOC_INTRO = """\
# Benchmarks

Generated by `make bench` (`bench/run_all.py`); do not edit by hand, run it again.

Each benchmark measures reprodl (the candidate) and a named baseline in the same run,
interleaved in alternating order (A B, B A, ...) so that the drift and slow spells of a shared,
noisy machine fall on both, and repeats each several times. The figures are medians. A time
ratio is median(candidate) / median(baseline), lower is better and its target a ceiling
(`<= 1.03x`); a rate ratio (items/s, MB/s) is candidate / baseline, higher is better and its
target a floor (`>= 0.9x`); the target is judged on the ratio. Beside a time ratio, the
median of the per-round ratios (each candidate run over the baseline run next to it) is a
second estimate, robust to drift over the run. Read the ratios, not the absolute figures: those depend on the
machine and on what else ran on it. Each benchmark's script (`bench/bench_NAME.py`) says in
its docstring what it runs; its full figures are in `bench-output/NAME.json`.
"""


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]


def _when(doc: dict[str, Any], path: Path) -> str:
    date = doc.get("environment", {}).get("date")
    if date:
        return str(date)
    mtime = datetime.datetime.fromtimestamp(path.stat().st_mtime, datetime.timezone.utc)
    return mtime.isoformat(timespec="seconds")


def _machine(doc: dict[str, Any]) -> str:
    env = doc.get("environment", {})
    parts = [
        env.get("platform"),
        f"{env['cpu_count']} CPUs" if env.get("cpu_count") else None,
        f"Python {env['python']}" if env.get("python") else None,
        f"torch {env['torch']} ({env.get('torch_threads')} thread(s))" if env.get("torch") else None,
        f"OMP_NUM_THREADS={env['omp_num_threads']}" if env.get("omp_num_threads") else None,
    ]
    return ", ".join(p for p in parts if p)


def _section(name: str, script: Path, run: dict[str, Any] | None) -> list[str]:
    """The Markdown section of one benchmark: its table, when and where, and its notes."""
    summary = (ast.get_docstring(ast.parse(script.read_text())) or "").splitlines()
    lines = [f"## {name}", "", summary[0] if summary else f"`{script.name}`", ""]
    path = OUTPUT_DIR / f"{name}.json"
    if run is not None and (run["returncode"] != 0 or run["output"] is None):
        return lines + [f"**ERROR**: `{script.name}` exited with {run['returncode']} and wrote no results.", ""]
    if not path.is_file():
        return lines + ["Not run yet: `make bench` (or `bench/run_all.py --only " + name + "`) measures it.", ""]
    doc = json.loads(path.read_text())
    if doc.get("skipped"):
        return lines + [f"Not measured here: {doc['skipped']}.", ""]
    rows = [
        [r["comparison"], r["candidate"], r["baseline"], r["ratio"], r["paired"], r["target"], r["status"]]
        for r in rows_of(name, doc)
    ]
    lines += _md_table(["what", "candidate", "baseline", "ratio", "paired ratio", "target", "status"], rows)
    lines += ["", f"Measured {_when(doc, path)}{' (--quick sizes)' if doc.get('quick') else ''} on {_machine(doc)}."]
    notes = [str(n) for n in doc.get("notes", [])]
    return lines + ([""] + [f"- {_cell(n)}" for n in notes] if notes else []) + [""]


def markdown(benches: list[tuple[str, Path]], runs: dict[str, dict[str, Any]]) -> str:
    """docs/benchmarks.md: the introduction, a summary, and a section per benchmark."""
    sections = [line for name, script in benches for line in _section(name, script, runs.get(name))]
    docs = {
        n: json.loads((OUTPUT_DIR / f"{n}.json").read_text())
        for n, _ in benches
        if (OUTPUT_DIR / f"{n}.json").is_file()
    }
    statuses = [
        r["status"] for n, d in docs.items() for r in rows_of(n, d) if runs.get(n, {}).get("returncode", 0) == 0
    ]
    errors = sum(1 for r in runs.values() if r["returncode"] != 0 or r["output"] is None)
    summary = (
        f"Summary: {statuses.count('PASS')} PASS, {statuses.count('FAIL')} FAIL, {errors} ERROR, "
        f"{statuses.count('info')} figures for information (no target)."
    )
    return "\n".join([DOC_INTRO, summary, "", *sections]).rstrip("\n") + "\n"


def splice(old: str, benches: list[tuple[str, Path]], runs: dict[str, dict[str, Any]]) -> str:
    """The existing report with the sections of the benchmarks in ``runs`` replaced, the rest kept."""
    head, *parts = re.split(r"(?m)^(?=## )", old)
    sections = {p.split("\n", 1)[0][3:].strip(): p for p in parts}
    for name, script in benches:
        if name in runs:
            sections[name] = "\n".join(_section(name, script, runs[name]))
    known = [n for n, _ in benches]
    order = [n for n in known if n in sections] + [n for n in sections if n not in known]
    body = "".join(sections[n].rstrip("\n") + "\n\n" for n in order)
    statuses = re.findall(r"(?m)\| (PASS|FAIL|info) \|$", body)
    summary = (
        f"Summary: {statuses.count('PASS')} PASS, {statuses.count('FAIL')} FAIL, {body.count('**ERROR**')} ERROR, "
        f"{statuses.count('info')} figures for information (no target)."
    )
    head = re.sub(r"(?m)^Summary: .*$", lambda _: summary, head)
    return (head + body).rstrip("\n") + "\n"


if __name__ == "__main__":
    sys.exit(main())
