"""Throughput of ``reprodl compare``: a 2x4-run compare on the digits, sequential against a pool.

Workload: scikit-learn's digits split 80/20, GenNet at 8x8, SGD lr 0.05 against lr 0.0005,
10 epochs (3 with --quick), 4 paired seeds: 8 trainings. Baseline: ``--jobs 1`` (one process,
runs one after another). Candidate: ``--jobs J`` with J the CPU count (a pool of spawned
processes with one thread each; each pays for importing torch). The figure is runs per second
(the ratio is the pool's speed-up); also reported: the sum of the runs' own training times
divided by J, the wall time an ideal pool would take. No target: on a small shared machine the
speed-up says more about the machine than about reprodl.

    .venv/bin/python bench/bench_compare_pool.py [--quick]
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
# _common first: it sets OMP_NUM_THREADS before torch loads (E402 is ignored under bench/).
import _common as C

from reprodl.data.creators import create_digits
from reprodl.data.ops import split_dataset
from reprodl.modeldataset.read import load_record
from reprodl.reproduction.claims import compare

NAME = "compare_pool"
SEEDS = 4


def config(data_uri: str, output: Path, epochs: int) -> dict:
    return {
        "name": "digits",
        "output": str(output),
        "data": {"train": {"uri": data_uri, "usetype": "train"}, "valid": {"uri": data_uri, "usetype": "test"}},
        "model": {"class": "GenNet", "init_params": {"input_channels": 1, "input_dim": 8}},
        "optimizer": {"class": "SGD", "momentum": 0.9},
        "params": {"batch_size": 32, "learning_rate": 0.05, "n_epochs": epochs, "seed": 0},
    }


def main() -> None:
    args = C.parse_args(__doc__.splitlines()[0])
    C.set_torch_threads()
    epochs = 3 if args.quick else 10
    repeats = args.repeats or (1 if args.quick else 3)
    jobs = max(2, os.cpu_count() or 1)
    train_times: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        (base / "data").mkdir()
        (base / "out").mkdir()
        data = create_digits(str(base / "data"), "digits")
        split_dataset(data, test=0.2, seed=0)
        cfg = config(data, base / "out", epochs)

        def run(j: int) -> None:
            result = compare(cfg, seeds=SEEDS, set_b=["lr=0.0005"], jobs=j)
            for side in result.runs.values():
                for r in side:
                    train_times.append(load_record(r.uri, check=False).results.wall_time_s)

        times = C.interleaved({"jobs=1": lambda: run(1), f"jobs={jobs}": lambda: run(jobs)}, repeats, warmup=0)
    n_runs = 2 * SEEDS
    seq, pool = C.median(times["jobs=1"]), C.median(times[f"jobs={jobs}"])
    per_run = C.median(train_times) if train_times else 0.0
    comparisons = [
        C.comparison(
            f"2x{SEEDS}-run compare, {epochs} epochs",
            f"--jobs {jobs}",
            "--jobs 1",
            n_runs / pool,
            n_runs / seq,
            None,
            "runs/s",
            note=f"ideal pool wall time (sum of training times / jobs): {n_runs * per_run / jobs:.2f} s",
        )
    ]
    measurements = {
        "wall_s": times,
        "median_training_time_s": per_run,
        "jobs": jobs,
        "runs": n_runs,
    }
    print(f"[{NAME}] sequential {seq:.2f} s, pool of {jobs} {pool:.2f} s, median training {per_run:.2f} s per run")
    C.report(NAME, args, {"epochs": epochs, "seeds": SEEDS, "repeats": repeats}, comparisons, measurements)


if __name__ == "__main__":
    main()
