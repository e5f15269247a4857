"""The step trace's cost per optimiser step: a training step with and without tracing.

Workloads (one thread, OMP_NUM_THREADS=1):
  * digits CNN: reprodl.zoo.GenNet at 8x8, batch 32, SGD momentum 0.9 (the demo's training);
  * digits CNN with Adam (twice the optimiser state to digest);
  * MNIST-sized: GenNet at 28x28, batch 64, SGD momentum 0.9.
Each step is a DataLoader batch over an in-memory TensorDataset, zero_grad, forward, NLLLoss,
backward and step. The traced step adds what the built-in trainer calls: ``tracer.batch`` (indices
and inputs, as the loader gives the batch) and ``tracer.step`` (loss, after the optimiser step), with
the trace of the default kind ``words`` (every byte of every parameter and of the optimiser state)
and, for comparison, the older records' kinds: ``exact`` (torch.hash_tensor) and ``sampled``.

Blocks of steps alternate between the variants; reported per workload: the median plain step, the
median time inside the tracer per step (the median step of each block: robust to preemption on
a busy machine; plus the block's flush, which puts its buffered rows together, spread over its
steps), their ratio (the trace's cost as a fraction of a step) and
the median ratio of whole traced steps to plain ones, plus the trace's bytes per step. Each in
wall time and in this thread's CPU time (``time.thread_time``: what other processes of a busy
machine take is not counted).

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_trace.py [--quick] [--output-dir DIR]

Writes ``bench-output/trace.json`` (``make bench`` renders it in docs/benchmarks.md): per workload,
the default trace's time inside the tracer per step over the plain step (target <= 1%), in
microseconds, and the traced step over the plain step, for information.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C
import _timing as T

from reprodl.training.trace import StepTracer, bytes_per_step
from reprodl.zoo import GenNet

WORKLOADS = {
    "digits CNN (8x8, batch 32, SGD momentum)": (8, 32, "sgd"),
    "digits CNN (8x8, batch 32, Adam)": (8, 32, "adam"),
    "MNIST-sized (28x28, batch 64, SGD momentum)": (28, 64, "sgd"),
}


def _setup(dim: int, batch: int, opt: str) -> tuple[torch.nn.Module, torch.optim.Optimizer, DataLoader]:
    torch.manual_seed(0)
    model = GenNet(input_channels=1, input_dim=dim)
    if opt == "adam":
        optimizer: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    n = 64 * batch
    data = TensorDataset(torch.rand(n, 1, dim, dim), torch.randint(0, 10, (n,)), torch.arange(n))
    return model, optimizer, DataLoader(data, batch_size=batch, shuffle=True)


def _block(model, optimizer, loader, tracer: StepTracer | None, n_steps: int) -> dict[str, float]:
    """Seconds per step and median seconds inside the tracer per step over ``n_steps`` steps (wall and CPU)."""
    loss_fn = torch.nn.NLLLoss()
    inside: list[float] = []
    inside_cpu: list[float] = []
    done = 0
    t0, c0 = time.perf_counter(), time.thread_time()
    while done < n_steps:
        for x, y, idx in loader:
            if tracer is not None:  # where reprodl notes a batch: as the loader gives it (run.loader, the trainer)
                t, c = time.perf_counter(), time.thread_time()
                tracer.batch(indices=idx, inputs=x)
                in_wall, in_cpu = time.perf_counter() - t, time.thread_time() - c
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            if tracer is not None:
                t, c = time.perf_counter(), time.thread_time()
                tracer.step(loss=loss, epoch=1, batch=done + 1)
                inside.append(in_wall + time.perf_counter() - t)
                inside_cpu.append(in_cpu + time.thread_time() - c)
            done += 1
            if done == n_steps:
                break
    flush_wall = flush_cpu = 0.0
    if tracer is not None:  # the rows the block's steps buffered, put together now: counted, spread over its steps
        t, c = time.perf_counter(), time.thread_time()
        tracer.flush()
        flush_wall, flush_cpu = time.perf_counter() - t, time.thread_time() - c
    return {
        "wall": (time.perf_counter() - t0) / n_steps,
        "cpu": (time.thread_time() - c0) / n_steps,
        "in_wall": (statistics.median(inside) + flush_wall / n_steps) if inside else 0.0,
        "in_cpu": (statistics.median(inside_cpu) + flush_cpu / n_steps) if inside_cpu else 0.0,
    }


def measure(dim: int, batch: int, opt: str, *, blocks: int, steps: int) -> dict[str, Any]:
    model, optimizer, loader = _setup(dim, batch, opt)
    tracers = {kind: StepTracer(model, optimizers=[optimizer], kind=kind) for kind in KINDS}
    _block(model, optimizer, loader, None, 20)  # warm up (the optimiser state is made)
    blocks_out: dict[str, list[dict[str, float]]] = {"plain": [], **{k: [] for k in KINDS}}
    for _ in range(blocks):
        for name in ("plain", *KINDS):
            blocks_out[name].append(_block(model, optimizer, loader, tracers.get(name), steps))
    out: dict[str, Any] = {}
    for clock in ("wall", "cpu"):
        plain = statistics.median(b[clock] for b in blocks_out["plain"])
        out[f"plain_{clock}_us"] = plain * 1e6
        for kind in KINDS:
            ratios = [t[clock] / p[clock] for t, p in zip(blocks_out[kind], blocks_out["plain"])]
            inside = statistics.median(b[f"in_{clock}"] for b in blocks_out[kind])
            out[f"{kind}_{clock}_us"] = inside * 1e6
            out[f"{kind}_{clock}_cost"] = inside / plain
            out[f"{kind}_{clock}_ratio"] = statistics.median(ratios)
    for kind in KINDS:
        out[f"{kind}_bytes"] = bytes_per_step(len(tracers[kind].names), kind)
    out["blocks"] = blocks_out  # per block: seconds per step, inside the tracer
    return out


TRACE_TARGET = 0.01  # of a step
KINDS = ("words", "exact", "sampled")  # the default kind first; the older records' kinds, for comparison


def comparisons_of(label: str, r: dict[str, Any]) -> list[dict[str, Any]]:
    """The default (``words``) trace's cost (median time inside the tracer per step / median plain step, per
    block) and the traced step over the plain step, in microseconds; the ``exact`` kind's cost beside it."""
    blocks = r["blocks"]
    plain = [b["wall"] * 1e6 for b in blocks["plain"]]
    out = []
    for kind, target in (("words", TRACE_TARGET), ("exact", None)):
        inside = [b["in_wall"] * 1e6 for b in blocks[kind]]
        traced = [b["wall"] * 1e6 for b in blocks[kind]]
        name = "trace (words, the default)" if kind == "words" else "trace of kind exact (torch.hash_tensor)"
        out.append(T.overhead(f"{label}: {name}, time inside the tracer per step", "tracer per step", "plain step",
                              inside, plain, target, f"{r[kind + '_bytes']} bytes/step"))  # fmt: skip
        if kind == "words":
            out.append(T.overhead(f"{label}: traced step vs plain step", "traced step", "plain step", traced, plain,
                                  None))  # fmt: skip
    for c in out:
        c["unit"] = "us"
    return out


def large_state(rounds: int) -> dict[str, Any]:
    """The state digest alone of a larger model (four 1024x1024 linear layers and eight 64-channel 3x3
    convolutions: 4.5M parameters, with SGD momentum 9.0M elements), words against exact, warm, interleaved:
    where the work per element, not a call's overhead, is the cost."""
    from reprodl.training.statedigest import StateDigests
    from reprodl.training.worddigest import WordLayout

    torch.manual_seed(0)
    layers = [torch.nn.Linear(1024, 1024) for _ in range(4)] + [torch.nn.Conv2d(64, 64, 3) for _ in range(8)]
    model = torch.nn.Sequential(*layers)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    optimizer.step()  # the momentum buffers made
    params = list(model.parameters())
    digests = {
        "words": StateDigests(params, [], [optimizer], torch.device("cpu"), WordLayout),
        "exact": StateDigests(params, [], [optimizer], torch.device("cpu")),
    }
    times: dict[str, list[float]] = {k: [] for k in digests}
    for d in digests.values():
        d.stage()  # the layout built
    for i in range(rounds):
        for kind in ("words", "exact") if i % 2 == 0 else ("exact", "words"):
            t = time.perf_counter()
            digests[kind].stage()
            times[kind].append(time.perf_counter() - t)
    n = sum(p.numel() for p in params)
    return {"parameters": n, "words_s": times["words"], "exact_s": times["exact"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 blocks of 40 steps (else 15 of 60)")
    parser.add_argument("--output-dir", type=Path, default=C.OUTPUT_DIR, help="where trace.json goes")
    args = parser.parse_args()
    torch.set_num_threads(1)
    blocks, steps = (5, 40) if args.quick else (15, 60)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); {blocks} blocks of {steps} steps each")
    comparisons: list[dict[str, Any]] = []
    measurements: dict[str, Any] = {}
    for label, (dim, batch, opt) in WORKLOADS.items():
        r = measure(dim, batch, opt, blocks=blocks, steps=steps)
        print(f"{label}: plain step {r['plain_wall_us']:.0f} us wall, {r['plain_cpu_us']:.0f} us CPU")
        for kind in KINDS:
            for clock in ("wall", "cpu"):
                print(
                    f"  {kind:7s} trace ({clock:4s}): {r[f'{kind}_{clock}_us']:.1f} us/step inside the tracer = "
                    f"{100 * r[f'{kind}_{clock}_cost']:.2f}% of a step; traced/plain step median ratio "
                    f"{r[f'{kind}_{clock}_ratio']:.3f}; {r[f'{kind}_bytes']} bytes/step"
                )
        comparisons += comparisons_of(label, r)
        measurements[label] = {k: v for k, v in r.items() if k != "blocks"}
    big = large_state(10 if args.quick else 30)
    print(
        f"state digest of {big['parameters']:,} parameters and their momentum: words "
        f"{statistics.median(big['words_s']) * 1e3:.2f} ms, exact {statistics.median(big['exact_s']) * 1e3:.2f} ms"
    )
    large = T.overhead(
        f"larger model ({big['parameters'] / 1e6:.1f}M parameters, SGD momentum): the state digest, words vs exact",
        "words digest",
        "exact digest (torch.hash_tensor)",
        big["words_s"],
        big["exact_s"],
        None,
    )
    comparisons.append(large)
    measurements["large state"] = {"parameters": big["parameters"]}
    params = {"blocks": blocks, "steps_per_block": steps, "threads": 1}
    C.write_doc("trace", args, params, comparisons, measurements, notes=[])


if __name__ == "__main__":
    main()
