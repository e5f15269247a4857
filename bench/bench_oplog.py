"""The operation log's cost: one optimiser step with and without it, and its size.

Workloads (one thread): the digits CNN (reprodl.zoo.GenNet at 8x8, batch 32, SGD momentum 0.9)
and an MNIST-sized one (GenNet at 28x28, batch 64). A step is forward, NLLLoss, backward and the
optimiser's step; the logged step runs under :class:`reprodl.training.oplog.OpLogger` (every
operation's output digested with torch.hash_tensor, its module and source line noted) and ends
with the log's entries made and written as JSON lines. Steps alternate between plain and logged;
reported: the median plain step, the median logged step, their ratio, and the log's operations
and bytes. By default a run logs its first step and the step before each checkpoint, so it
pays this once, plus once per checkpoint.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_oplog.py [--quick]
"""

from __future__ import annotations

import os
import statistics
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch
from torch import nn

from reprodl.training.oplog import OpLogger, to_jsonl
from reprodl.zoo import GenNet

WORKLOADS = {"digits CNN (8x8, batch 32)": (8, 32), "MNIST-sized (28x28, batch 64)": (28, 64)}


def measure(size: int, batch: int, repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = GenNet(input_channels=1, input_dim=size)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(batch, 1, size, size), torch.randint(0, 10, (batch,))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        nn.functional.nll_loss(model(x), y).backward()
        opt.step()

    plain, logged, n_ops, n_bytes = [], [], 0, 0
    for _ in range(3):
        step()
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        plain.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        logger = OpLogger(1).start()
        step()
        logger.stop()
        entries = logger.entries()
        data = to_jsonl(entries)
        logged.append(time.perf_counter() - t0)
        n_ops, n_bytes = len(entries), len(data)
    p, q = statistics.median(plain), statistics.median(logged)
    return {"plain_ms": p * 1e3, "logged_ms": q * 1e3, "ratio": q / p, "ops": n_ops, "bytes": n_bytes}


def main() -> None:
    repeats = 10 if "--quick" in sys.argv else 50
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {repeats} steps of each kind")
    for name, (size, batch) in WORKLOADS.items():
        r = measure(size, batch, repeats)
        print(
            f"{name}: plain step {r['plain_ms']:.2f} ms, logged step {r['logged_ms']:.2f} ms "
            f"(x{r['ratio']:.1f}, +{r['logged_ms'] - r['plain_ms']:.2f} ms per logged step); "
            f"{r['ops']} operations, {r['bytes']} bytes"
        )


if __name__ == "__main__":
    main()
