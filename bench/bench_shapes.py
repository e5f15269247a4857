"""Capture and reproduce cost on six training-script shapes, each against its plain script.

The shapes (``bench/_shapes.py``, small data, one thread): a GAN with two models and two
optimisers; an LSTM language model updated by hand (no optimiser, lr divided by 4 per epoch);
LBFGS with a closure; a nanoGPT-like loop (gradient accumulation, bf16 autocast, lr set by hand,
clipping); Lightning with manual optimisation (two optimisers); an ``IterableDataset``. Each is a
whole script in a git repository of its own on a temporary directory, run as a subprocess end to
end, as a user runs it.

Per shape, three contenders, interleaved in alternating order (A B C, C B A, ...):

- plain: ``python SHAPE.py`` (never imports reprodl): the baseline.
- capture: ``python SHAPE.py --record BASE``: the same script adopting ``reprodl.start_run``
  (Lightning: ``ReprodlCallback``). Target: <= 1.02x the plain process.
- reproduce: ``reprodl.reproduce(uri, trust_code=True)`` of the first recorded run (in this
  process: data check, the code materialised, the script re-executed, weights and trace
  compared). Target: <= 1.10x the capture run it reproduces (the original training process).
  This process imports reprodl's reproduction modules once, in an untimed reproduction before
  the rounds (else the first round alone pays them).
- reproduce, CLI: ``reprodl reproduce URI --trust-code --json`` as a process, as a user runs it
  (for information): it pays, each time, the imports the in-process figure leaves out (torch
  and reprodl's reproduction modules in the parent, beside the re-executed script's own).

Beside the wall-time ratios: CPU time (children included; less sensitive to the other
processes of a busy machine) and the training loop alone (``loop_s`` the script prints: plain
loop vs recorded loop). Step counts are small by default (512 samples, 2 epochs), so the
processes' fixed costs (imports, code and environment capture, writing the model) weigh as they do
on a short run; ``--size``/``--epochs`` run the same scripts longer, where the per-step cost weighs.

Every child Python (the scripts, and the one ``reproduce`` re-executes) runs with compiled
bytecode cached, as an installed package's imports are: PYTHONDONTWRITEBYTECODE is dropped from
their environment and PYTHONPYCACHEPREFIX points to a directory under the bench's temporary
directory (``_common.compiled_bytecode``). The first run of a shape (the warm-up, also the run
reproduced) compiles; plain and recorded children get the same environment. Without it, a source
tree under PYTHONDONTWRITEBYTECODE=1 recompiles reprodl in every recorded process (~70 ms), a
cost no pip-installed user pays.

    .venv/bin/python bench/bench_shapes.py [--quick] [--repeats N] [--shapes gan lbfgs ...]
        [--size 512] [--epochs 2] [--no-cli]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
# _common first: it sets OMP_NUM_THREADS before torch loads (E402 is ignored under bench/).
import _common as C
import _timing as T
from _shapes import SHAPES

import reprodl

NAME = "shapes"
CAPTURE_TARGET = 1.02
REPRODUCE_TARGET = 1.10


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one round per shape")
    parser.add_argument("--repeats", type=int, default=None, help="rounds per shape (default 3, --quick 1)")
    parser.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=list(SHAPES), help="which shapes")
    parser.add_argument("--size", type=int, default=512, help="samples per shape (default 512)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per shape (default 2)")
    parser.add_argument("--no-cli", action="store_true", help="leave out the `reprodl reproduce` process")
    parser.add_argument("--output-dir", type=Path, default=C.OUTPUT_DIR, help="where shapes.json goes")
    return parser.parse_args()


def child_env(tmp: Path) -> dict[str, str]:
    """This process's environment with the reprodl it imported first on PYTHONPATH, one thread."""
    src = str(Path(reprodl.__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return C.compiled_bytecode(env, tmp)


def make_repo(tmp: Path, shapes: list[str]) -> Path:
    """A user's repository with the shapes' scripts committed (models/ ignored)."""
    repo = tmp / "user-repo"
    repo.mkdir()
    for args in (["init", "-q"], ["config", "user.email", "bench@example.org"], ["config", "user.name", "bench"]):
        subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)
    (repo / ".gitignore").write_text("models-*/\n")
    for shape in shapes:
        (repo / f"{shape}.py").write_text(SHAPES[shape])
    subprocess.run(["git", "add", "."], cwd=repo, check=True, capture_output=True)
    subprocess.run(["git", "commit", "-q", "-m", "the user's scripts"], cwd=repo, check=True, capture_output=True)
    return repo


def run_script(repo: Path, shape: str, env: dict[str, str], record: Path | None, length: list[str]) -> dict[str, Any]:
    """One script run end to end (``length``: its --size/--epochs); what its last line says (``loop_s``, ``uri``)."""
    command = [sys.executable, f"{shape}.py", *length] + (["--record", str(record)] if record else [])
    res = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"{shape}.py {'--record' if record else ''} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def reproduce_cli(uri: str, env: dict[str, str]) -> str:
    """``reprodl reproduce URI --trust-code --json`` as a process; its verdict."""
    command = [sys.executable, "-m", "reprodl.cli", "reproduce", uri, "--trust-code", "--json"]
    res = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if not res.stdout.strip():
        raise RuntimeError(f"reprodl reproduce {uri} printed no report (exit {res.returncode}):\n{res.stderr[-3000:]}")
    return str(json.loads(res.stdout)["verdict"])


def bench_shape(
    repo: Path, tmp: Path, shape: str, repeats: int, length: list[str], cli: bool
) -> tuple[list[dict[str, Any]], dict[str, Any], str]:
    """Plain, capture and reproduce of one shape, interleaved; its comparisons, figures and verdict line."""
    env = child_env(tmp)
    counter = iter(range(1_000_000))
    first = run_script(repo, shape, env, repo / f"models-{shape}-first", length)  # the run reproduced; a warm-up
    verdicts: list[str] = []
    with C.children_compiled(tmp):
        reprodl.reproduce(first["uri"], trust_code=True, on_output=lambda _line: None)  # this process's imports

    def plain() -> dict[str, float]:
        return {"loop_s": run_script(repo, shape, env, None, length)["loop_s"]}

    def capture() -> dict[str, float]:
        return {"loop_s": run_script(repo, shape, env, repo / f"models-{shape}-{next(counter)}", length)["loop_s"]}

    def reproduce() -> None:
        with C.children_compiled(tmp):  # the re-executed script reads the same bytecode cache
            report = reprodl.reproduce(first["uri"], trust_code=True, on_output=lambda _line: None)
        verdicts.append(report.verdict)

    def reproduce_process() -> None:
        verdicts.append(reproduce_cli(first["uri"], env))

    def show(r: int, t: dict[str, float]) -> None:
        times = ", ".join(f"{k} {v:.2f}s" for k, v in t.items())
        print(f"[{NAME}] {shape} round {r + 1}/{repeats}: {times}", flush=True)

    runs = {"plain": plain, "capture": capture, "reproduce": reproduce}
    if cli:
        runs["reproduce_cli"] = reproduce_process
    res = T.alternating(runs, repeats, warmup=0, on_round=show)
    base, cand, rep = res["plain"], res["capture"], res["reproduce"]
    loops = {k: [e["loop_s"] for e in res[k]["extra"]] for k in ("plain", "capture")}
    comparisons = [
        T.overhead(f"{shape}: capture, wall", "python SHAPE.py --record", "plain script", cand["wall"], base["wall"],
                   CAPTURE_TARGET, "whole process"),
        T.overhead(f"{shape}: capture, CPU", "python SHAPE.py --record", "plain script", cand["cpu"], base["cpu"],
                   None, "children's CPU time"),
        T.overhead(f"{shape}: capture, loop only", "recorded loop", "plain loop", loops["capture"], loops["plain"],
                   None, "the training loop's wall time, as the script measures it"),
        T.overhead(f"{shape}: reproduce, wall", "reproduce(uri, trust_code=True)", "capture run", rep["wall"],
                   cand["wall"], REPRODUCE_TARGET, f"verdicts: {sorted(set(verdicts))}"),
        T.overhead(f"{shape}: reproduce, CPU", "reproduce(uri, trust_code=True)", "capture run", rep["cpu"],
                   cand["cpu"], None, "this process's and the script's CPU time"),
    ]  # fmt: skip
    if cli:
        comparisons.append(
            T.overhead(f"{shape}: reproduce, CLI process, wall", "reprodl reproduce --trust-code", "capture run",
                       res["reproduce_cli"]["wall"], cand["wall"], None, "the parent's imports included")
        )  # fmt: skip
    measurements = {k: {m: T.summary(res[k][m]) for m in ("wall", "cpu")} for k in runs}
    for k in loops:
        measurements[k]["loop"] = T.summary(loops[k])
    return comparisons, measurements, f"{shape}: reproduce verdicts {verdicts}"


def main() -> None:
    args = parse_args()
    repeats = args.repeats or (1 if args.quick else 3)
    comparisons: list[dict[str, Any]] = []
    measurements: dict[str, Any] = {}
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="reprodl-bench-") as tmp:
        repo = make_repo(Path(tmp), args.shapes)
        for shape in args.shapes:
            length = ["--size", str(args.size), "--epochs", str(args.epochs)]
            comps, figures, note = bench_shape(repo, Path(tmp), shape, repeats, length, not args.no_cli)
            comparisons += comps
            measurements[shape] = figures
            notes.append(note)
    params = {"shapes": args.shapes, "repeats": repeats, "size": args.size, "epochs": args.epochs, "threads": 1}
    T.write_report(NAME, args, params, comparisons, measurements, notes)


if __name__ == "__main__":
    main()
