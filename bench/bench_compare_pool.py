"""Throughput of ``reprodl compare``: a 2x4-run compare on the digits, sequential against a pool.

Workload: scikit-learn's digits split 80/20, GenNet at 8x8, SGD lr 0.05 against lr 0.0005,
10 epochs (3 with --quick), 4 paired seeds: 8 trainings. Baseline: ``--jobs 1`` (one process,
runs one after another). Candidate: ``--jobs J`` (default 2): a pool of J single-threaded
workers forked from a forkserver that imported torch once. Measured twice: ``reprodl compare``
run as a command (a fresh process each time: its imports and the pool's start included), and
``compare()`` called again in one process (the pool kept warm, as in a notebook or an
ablation). The figure is runs per second (the ratio is the pool's speed-up); also reported: the
sum of the runs' own training times divided by J, the wall time an ideal pool would take. No
target: on a small shared machine the speed-up says more about the machine than about reprodl.

    .venv/bin/python bench/bench_compare_pool.py [--quick] [--jobs J]
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
# _common first: it sets OMP_NUM_THREADS before torch loads (E402 is ignored under bench/).
import _common as C

from reprodl.data.creators import create_digits
from reprodl.data.ops import split_dataset
from reprodl.modeldataset.read import load_record
from reprodl.reproduction.claims import compare, shutdown_pools

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
    jobs = _jobs_arg()
    args = C.parse_args(__doc__.splitlines()[0])
    C.set_torch_threads()
    epochs = 3 if args.quick else 10
    repeats = args.repeats or (1 if args.quick else 3)
    train_times: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        (base / "data").mkdir()
        (base / "out").mkdir()
        data = create_digits(str(base / "data"), "digits")
        split_dataset(data, test=0.2, seed=0)
        cfg = config(data, base / "out", epochs)
        cfg_file = base / "digits.yaml"
        cfg_file.write_text(yaml.safe_dump(cfg))

        def run(j: int) -> None:
            result = compare(cfg, seeds=SEEDS, set_b=["lr=0.0005"], jobs=j)
            for side in result.runs.values():
                for r in side:
                    train_times.append(load_record(r.uri, check=False).results.wall_time_s)

        cli = {f"cli jobs={j}": functools.partial(_cli_compare, cfg_file, j) for j in (1, jobs)}
        times = C.interleaved(cli, repeats, warmup=0)
        run(1)  # untimed: this process imports torch and the trainer, and starts the kept pool
        run(jobs)
        times.update(C.interleaved({"jobs=1": lambda: run(1), f"jobs={jobs} warm": lambda: run(jobs)}, repeats, 0))
        shutdown_pools()
    n_runs = 2 * SEEDS
    per_run = C.median(train_times) if train_times else 0.0
    ideal = f"ideal pool wall time (sum of training times / jobs): {n_runs * per_run / jobs:.2f} s"
    pairs = {
        "`reprodl compare` in a fresh process (imports and pool start included)": ("cli jobs=1", f"cli jobs={jobs}"),
        "`compare()` again in one process (the pool kept warm)": ("jobs=1", f"jobs={jobs} warm"),
    }
    comparisons = [
        C.comparison(
            f"2x{SEEDS}-run compare, {epochs} epochs: {what}",
            f"--jobs {jobs}",
            "--jobs 1",
            n_runs / C.median(times[pool]),
            n_runs / C.median(times[seq]),
            None,
            "runs/s",
            note=ideal,
        )
        for what, (seq, pool) in pairs.items()
    ]
    measurements = {"wall_s": times, "median_training_time_s": per_run, "jobs": jobs, "runs": n_runs}
    walls = ", ".join(f"{name} {C.median(t):.2f} s" for name, t in times.items())
    print(f"[{NAME}] median wall times: {walls}; median training {per_run:.2f} s per run")
    C.report(NAME, args, {"epochs": epochs, "seeds": SEEDS, "repeats": repeats}, comparisons, measurements)


def _cli_compare(cfg_file: Path, jobs: int) -> None:
    """``reprodl compare`` in a new Python process, as a user runs it (one thread per process)."""
    command = [sys.executable, "-c", "from reprodl.cli import main; main()", "compare", str(cfg_file)]
    command += ["--seeds", str(SEEDS), "--set-b", "lr=0.0005", "--jobs", str(jobs), "--json"]
    subprocess.run(command, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def _jobs_arg() -> int:
    """``--jobs J`` (default 2), taken out of sys.argv before the common arguments are parsed."""
    jobs = 2
    if "--jobs" in sys.argv:
        i = sys.argv.index("--jobs")
        jobs = int(sys.argv[i + 1])
        del sys.argv[i : i + 2]
    return max(1, jobs)


if __name__ == "__main__":
    main()
