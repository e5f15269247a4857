"""reprodl vs the original dtoolAI 0.2.0 (unmodified, in its own virtualenv), head to head.

Needs a dtoolAI venv: ``$DTOOLAI_VENV``, else ``.venv-dtoolai`` in the repository root
(``make bench-dtoolai`` builds it once: dtoolai==0.2.0, torch 2.14.1, torchvision 0.29.1).
Without one it writes a result with no comparisons, marked skipped, and exits 0.

Every figure runs each side as its own process with its own venv's python, interleaved in
alternating order (A B, B A, ...), with OMP_NUM_THREADS=1; the figures are medians:

  1. provenance CLI start to finish on the same dtoolAI-made model (GenNet trained by
     dtoolAI's ``train_model_with_metadata_capture`` into a ``DerivedDataSetCreator``):
     dtoolAI's ``dtoolai-provenance MODEL_URI`` vs ``reprodl provenance MODEL_URI`` (which
     reads dtoolAI 0.2.0 models); wall time and peak RSS (the child's ru_maxrss, by wait4);
  2. training: the same MNIST 28x28 digits TensorDataSet (made by reprodl's
     ``create_from_arrays``; dtoolAI's TensorDataSet reads it), dtoolAI's GenNet(1, 28) on both
     sides (reprodl trains a copy of its layout, bench/_dtoolai_gennet.py), SGD lr 0.01,
     NLLLoss, batch 64, 2 epochs (1 with --quick), seeded weights: each side's ``train_model_with_metadata_capture``
     (dtoolAI's into a DerivedDataSetCreator; reprodl's into a DerivedDataSet, progress=False)
     and, in the same process, a plain loop over its own TensorDataSet (each side's own overhead);
  3. image loading: the same ImageDataSet of MNIST PNGs (made by reprodl's
     ``create_from_dirtree``; dtoolAI's ImageDataSet reads its category overlay and
     category_encoding annotation), opened and iterated once with ``DataLoader(batch_size=128,
     shuffle=True)``: items/s.

    .venv/bin/python bench/bench_dtoolai.py [--quick]      (DTOOLAI_VENV=/path/to/venv)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
# _common first: it sets OMP_NUM_THREADS before torch loads (E402 is ignored under bench/).
import _common as C
import _timing as T

NAME = "dtoolai"
BATCH_TRAIN = 64
BATCH_IMAGES = 128
LR = 0.01
SKIP_NOTE = "run `make bench-dtoolai` first (it builds .venv-dtoolai once), or set DTOOLAI_VENV"

# Run with each side's own python: argv data_uri out_base name epochs batch lr order; prints JSON.
_TRAIN_COMMON = """
import contextlib, io, json, sys, time
t0 = time.perf_counter()
import torch
from torch.utils.data import DataLoader
torch.set_num_threads(1)
{imports}
import_s = time.perf_counter() - t0
data_uri, out_base, name, epochs, batch, lr, order = sys.argv[1:]
epochs, batch, lr = int(epochs), int(batch), float(lr)
INIT = {{"input_channels": 1, "input_dim": 28}}
ds = TensorDataSet(data_uri)
import dtoolcore, numpy as np
_src = dtoolcore.DataSet.from_uri(data_uri)
_npy = lambda rel: np.load(_src.item_content_abspath(dtoolcore.utils.generate_identifier(rel)))
raw = torch.utils.data.TensorDataset(
    torch.from_numpy(_npy("data.npy")).float().div(255).reshape(-1, 1, 28, 28), torch.from_numpy(_npy("labels.npy"))
)

def fresh():
    torch.manual_seed(0)
    model = GenNet(**INIT)
    return model, torch.optim.SGD(model.parameters(), lr=lr), torch.nn.NLLLoss()

def plain(data):
    model, opt, loss_fn = fresh()
    t, c = time.perf_counter(), time.process_time()
    loader = DataLoader(data, batch_size=batch, shuffle=True)
    model.train()
    for _ in range(epochs):
        for x, y in loader:
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
    return time.perf_counter() - t, time.process_time() - c

def capture():
    model, opt, loss_fn = fresh()
    t, c = time.perf_counter(), time.process_time()
    uri = train(model, opt, loss_fn)
    return time.perf_counter() - t, time.process_time() - c, uri

{train}

# Untimed warm-up (one batch forward and backward), so the first timed loop pays no first-call costs.
_m, _o, _l = fresh()
_x, _y = next(iter(DataLoader(raw, batch_size=batch)))
_l(_m(_x), _y).backward()
out = {{"import_s": import_s, "torch": torch.__version__, "n": len(ds)}}
for part in order.split(","):
    if part == "plain":
        out["plain_s"], out["plain_cpu_s"] = plain(ds)
    elif part == "raw":
        out["raw_s"], out["raw_cpu_s"] = plain(raw)
    else:
        out["capture_s"], out["capture_cpu_s"], out["model_uri"] = capture()
print(json.dumps(out))
"""

DTOOLAI_TRAIN = _TRAIN_COMMON.format(
    imports=(
        "from dtoolcore import DerivedDataSetCreator\n"
        "from dtoolai.data import TensorDataSet\n"
        "from dtoolai.models import GenNet\n"
        "from dtoolai.parameters import Parameters\n"
        "from dtoolai.training import train_model_with_metadata_capture"
    ),
    train=(
        "def train(model, opt, loss_fn):\n"
        "    params = Parameters(batch_size=batch, learning_rate=lr, n_epochs=epochs, init_params=INIT)\n"
        "    with contextlib.redirect_stdout(io.StringIO()):  # it prints every 10 batches\n"
        "        with DerivedDataSetCreator(name, out_base, ds) as out:\n"
        "            train_model_with_metadata_capture(model, ds, opt, loss_fn, params, out)\n"
        "    return out.uri"
    ),
)

REPRODL_TRAIN = _TRAIN_COMMON.format(
    imports=(
        "from reprodl.data.datasets import TensorDataSet\n"
        "from reprodl.training.loop import DerivedDataSet, train_model_with_metadata_capture\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})\n"
        "from _dtoolai_gennet import GenNet  # dtoolAI's layout, not reprodl.zoo.GenNet"
    ),
    train=(
        "def train(model, opt, loss_fn):\n"
        "    params = {'batch_size': batch, 'learning_rate': lr, 'n_epochs': epochs, 'init_params': INIT, 'seed': 0}\n"
        "    with DerivedDataSet(out_base, name, ds) as out:\n"
        "        train_model_with_metadata_capture(model, ds, opt, loss_fn, params, out, progress=False)\n"
        "    return out.uri"
    ),
)

# argv uri batch; prints JSON: open + one shuffled epoch with the default collate.
_IMAGES = """
import json, sys, time
import torch
from torch.utils.data import DataLoader
torch.set_num_threads(1)
from {module} import ImageDataSet
uri, batch = sys.argv[1], int(sys.argv[2])
torch.manual_seed(0)
t = time.perf_counter()
ds = ImageDataSet(uri)
n = 0
shape = None
for x, y in DataLoader(ds, batch_size=batch, shuffle=True):
    n += len(y)
    shape = list(x.shape[1:])
print(json.dumps({{"n": n, "seconds": time.perf_counter() - t, "item_shape": shape}}))
"""
DTOOLAI_IMAGES = _IMAGES.format(module="dtoolai.data")
REPRODL_IMAGES = _IMAGES.format(module="reprodl.data.datasets")


def find_venv() -> Path | None:
    """The dtoolAI venv: $DTOOLAI_VENV, else .venv-dtoolai; None unless it has dtoolai-provenance."""
    venv = Path(os.environ.get("DTOOLAI_VENV") or C.ROOT / ".venv-dtoolai")
    return venv if (venv / "bin" / "dtoolai-provenance").is_file() else None


# Runs argv[2:] and writes its wall time and peak RSS to argv[1]: a small parent, so that the
# child's ru_maxrss is its own (a fork of this big bench process would count the copy).
LAUNCHER = """
import json, resource, subprocess, sys, time
t = time.perf_counter()
rc = subprocess.call(sys.argv[2:])
wall = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
with open(sys.argv[1], "w") as fh:
    json.dump({"rc": rc, "wall_s": wall, "peak_rss_bytes": peak}, fh)
"""


def run_child(cmd: list[str], env: dict[str, str]) -> tuple[str, dict[str, Any]]:
    """Run ``cmd`` under the launcher; its stdout, and its wall time and peak RSS."""
    with tempfile.TemporaryDirectory() as tmp:
        stats = Path(tmp) / "stats.json"
        res = subprocess.run(
            [sys.executable, "-c", LAUNCHER, str(stats), *cmd], capture_output=True, text=True, env=env
        )
        info = json.loads(stats.read_text()) if stats.is_file() else {"rc": res.returncode}
        if res.returncode != 0 or info["rc"] != 0:
            raise SystemExit(f"[{NAME}] {' '.join(cmd[:3])}... failed ({info['rc']}): {res.stderr[-2000:]}")
        return res.stdout, info


def child_json(cmd: list[str], env: dict[str, str]) -> dict[str, Any]:
    stdout, info = run_child(cmd, env)
    return {**json.loads(stdout.strip().splitlines()[-1]), "peak_rss_bytes": info["peak_rss_bytes"]}


def rounds(runs: dict[str, Callable[[], Any]], repeats: int, warmup: int) -> dict[str, list[Any]]:
    """What each callable returns, ``repeats`` rounds in alternating order after ``warmup`` rounds."""
    names = list(runs)
    for _ in range(warmup):
        for name in names:
            runs[name]()
    out: dict[str, list[Any]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            out[name].append(runs[name]())
        print(f"[{NAME}] round {r + 1}/{repeats}", flush=True)
    return out


def mib(values: list[int]) -> float:
    return C.median([v / 2**20 for v in values])


def bench_training(venv: Path, data_uri: str, tmp: Path, env: dict[str, str], sizes: dict[str, int]) -> dict:
    """Training with capture and a plain loop, each side in its own venv; the first dtoolAI model's URI."""
    out_base = tmp / "models"
    out_base.mkdir()

    def side(label: str, python: str, code: str) -> Callable[[], dict[str, Any]]:
        counter = iter(range(10_000))  # per side: its runs alternate the order of the three loops

        def once() -> dict[str, Any]:
            i = next(counter)
            order = "plain,raw,capture" if i % 2 == 0 else "capture,raw,plain"
            name = f"{label}-model-{i}"
            args = [data_uri, str(out_base), name, str(sizes["epochs"]), str(BATCH_TRAIN), str(LR), order]
            return child_json([python, "-c", code, *args], env)

        return once

    runs = {
        "dtoolai": side("dtoolai", str(venv / "bin" / "python"), DTOOLAI_TRAIN),
        "reprodl": side("reprodl", sys.executable, REPRODL_TRAIN),
    }
    model_uri = runs["dtoolai"]()["model_uri"]  # the model the provenance figure reads; also a warm-up
    return {"model_uri": model_uri, "results": rounds(runs, sizes["train_repeats"], warmup=0)}


def bench_provenance(venv: Path, model_uri: str, env: dict[str, str], repeats: int) -> dict[str, list[Any]]:
    """Both provenance commands on the dtoolAI model: (wall s, peak RSS bytes) per run."""
    ours = Path(sys.executable).parent / "reprodl"
    ours_cmd = [str(ours), "provenance"] if ours.is_file() else [sys.executable, "-m", "reprodl.cli", "provenance"]
    commands = {"dtoolai": [str(venv / "bin" / "dtoolai-provenance"), model_uri], "reprodl": [*ours_cmd, model_uri]}
    for cmd in commands.values():  # both answer, and name the model's architecture
        assert "simpleScalingCNN" in run_child(cmd, env)[0], cmd

    def once(cmd: list[str]) -> tuple[float, int]:
        info = run_child(cmd, env)[1]
        return info["wall_s"], info["peak_rss_bytes"]

    return rounds({k: (lambda c=c: once(c)) for k, c in commands.items()}, repeats, warmup=0)


def make_images(tmp: Path, n: int) -> str:
    from bench_image_loader import write_pngs

    from reprodl.data.creators import create_from_dirtree

    images, labels, _ = C.mnist_arrays(n)
    write_pngs(tmp / "tree", images, labels)
    (tmp / "images").mkdir()
    return create_from_dirtree(tmp / "tree", str(tmp / "images"), "mnist-png")


def bench_images(venv: Path, uri: str, env: dict[str, str], repeats: int) -> dict[str, list[Any]]:
    pythons = {"dtoolai": (str(venv / "bin" / "python"), DTOOLAI_IMAGES), "reprodl": (sys.executable, REPRODL_IMAGES)}
    runs = {
        k: (lambda p=p, c=c: child_json([p, "-c", c, uri, str(BATCH_IMAGES)], env)) for k, (p, c) in pythons.items()
    }
    return rounds(runs, repeats, warmup=0)


def training_comparisons(res: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    def col(side: str, key: str) -> list[float]:
        return [r[key] for r in res[side]]

    return [
        T.overhead(
            "training with capture: reprodl vs dtoolAI (total)",
            "reprodl train_model_with_metadata_capture",
            "dtoolAI train_model_with_metadata_capture",
            col("reprodl", "capture_s"),
            col("dtoolai", "capture_s"),
            None,
            "the whole call, into a new model dataset",
        ),
        T.overhead(
            "training with capture: reprodl vs dtoolAI (CPU time)",
            "reprodl train_model_with_metadata_capture",
            "dtoolAI train_model_with_metadata_capture",
            col("reprodl", "capture_cpu_s"),
            col("dtoolai", "capture_cpu_s"),
            None,
            "the process's CPU seconds in the call: less sensitive to a busy machine",
        ),
        T.overhead(
            "training script imports (torch and the library)",
            "reprodl imports",
            "dtoolAI imports",
            col("reprodl", "import_s"),
            col("dtoolai", "import_s"),
            None,
            "in each training process, before the dataset opens",
        ),
        T.overhead(
            "plain loop over each side's TensorDataSet",
            "plain loop, reprodl TensorDataSet",
            "plain loop, dtoolAI TensorDataSet",
            col("reprodl", "plain_s"),
            col("dtoolai", "plain_s"),
            None,
            "the same loop; the datasets' __getitem__ and the torch versions differ",
        ),
        T.overhead(
            "plain loop over in-memory tensors: reprodl venv vs dtoolAI venv",
            "plain loop, torch TensorDataset (reprodl venv)",
            "plain loop, torch TensorDataset (dtoolAI venv)",
            col("reprodl", "raw_s"),
            col("dtoolai", "raw_s"),
            None,
            "the same code and data: only the torch versions differ",
        ),
        T.overhead(
            "reprodl's own capture overhead",
            "reprodl capture",
            "plain loop, reprodl TensorDataSet",
            col("reprodl", "capture_s"),
            col("reprodl", "plain_s"),
            None,
        ),
        T.overhead(
            "dtoolAI's own capture overhead",
            "dtoolAI capture",
            "plain loop, dtoolAI TensorDataSet",
            col("dtoolai", "capture_s"),
            col("dtoolai", "plain_s"),
            None,
        ),
        T.overhead(
            "reprodl's own capture overhead (CPU time)",
            "reprodl capture",
            "plain loop, reprodl TensorDataSet",
            col("reprodl", "capture_cpu_s"),
            col("reprodl", "plain_cpu_s"),
            None,
        ),
        T.overhead(
            "dtoolAI's own capture overhead (CPU time)",
            "dtoolAI capture",
            "plain loop, dtoolAI TensorDataSet",
            col("dtoolai", "capture_cpu_s"),
            col("dtoolai", "plain_cpu_s"),
            None,
        ),
    ]


def provenance_comparisons(res: dict[str, list[tuple[float, int]]]) -> list[dict[str, Any]]:
    wall = {k: [t for t, _ in v] for k, v in res.items()}
    rss = {k: [m for _, m in v] for k, v in res.items()}
    return [
        T.overhead(
            "provenance CLI on a dtoolAI model: wall time",
            "reprodl provenance",
            "dtoolai-provenance",
            wall["reprodl"],
            wall["dtoolai"],
            None,
            "start to finish, subprocess",
        ),
        C.comparison(
            "provenance CLI on a dtoolAI model: peak RSS",
            "reprodl provenance",
            "dtoolai-provenance",
            mib(rss["reprodl"]),
            mib(rss["dtoolai"]),
            None,
            "MiB",
            "the child's ru_maxrss; lower is better",
        ),
    ]


def image_comparison(res: dict[str, list[dict[str, Any]]], n: int) -> dict[str, Any]:
    rates = {k: C.median([r["n"] / r["seconds"] for r in v]) for k, v in res.items()}
    return C.comparison(
        "ImageDataSet + DataLoader(128): one epoch from opening",
        "reprodl ImageDataSet",
        "dtoolAI ImageDataSet",
        rates["reprodl"],
        rates["dtoolai"],
        None,
        "items/s",
        f"{n} PNGs; dtoolAI resizes each to 3x256x256, reprodl keeps 1x28x28",
    )


def skip(args: Any) -> None:
    print(f"[{NAME}] skipped: no dtoolAI venv; {SKIP_NOTE}")
    C.write_doc(NAME, args, {}, [], {}, notes=[SKIP_NOTE], skipped=SKIP_NOTE)


def main() -> None:
    args = C.parse_args(__doc__.splitlines()[0])
    venv = find_venv()
    if venv is None:
        skip(args)
        return
    q = args.quick
    sizes = {
        "n_train": 1_000 if q else 10_000,
        "epochs": 1 if q else 2,
        "train_repeats": args.repeats or (1 if q else 7),
        "prov_repeats": args.repeats or (2 if q else 7),
        "n_images": 300 if q else 2_000,
        "image_repeats": args.repeats or (1 if q else 5),
    }
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NO_COLOR": "1"}
    from reprodl.data.creators import create_from_arrays

    with tempfile.TemporaryDirectory(prefix="reprodl-bench-") as name:
        tmp = Path(name)
        images, labels, source = C.mnist_arrays(sizes["n_train"])
        (tmp / "data").mkdir()
        data_uri = create_from_arrays(images, labels, str(tmp / "data"), "digits28", image_dimensions=[1, 28, 28])
        train = bench_training(venv, data_uri, tmp, env, sizes)
        prov = bench_provenance(venv, train["model_uri"], env, sizes["prov_repeats"])
        imgs = bench_images(venv, make_images(tmp, sizes["n_images"]), env, sizes["image_repeats"])
    report(args, venv, sizes, source, train["results"], prov, imgs)


def report(args: Any, venv: Path, sizes: dict, source: str, train: dict, prov: dict, imgs: dict) -> None:
    comparisons = [
        *provenance_comparisons(prov),
        *training_comparisons(train),
        image_comparison(imgs, sizes["n_images"]),
    ]
    torch_versions = {k: v[0]["torch"] for k, v in train.items()}
    shapes = {k: v[0]["item_shape"] for k, v in imgs.items()}
    rss = {k: mib([m for _, m in v]) for k, v in prov.items()}
    notes = [
        f"dtoolAI 0.2.0 unmodified in {venv.name} with torch {torch_versions['dtoolai']}; "
        f"reprodl with torch {torch_versions['reprodl']}: the in-memory-tensors row shows what the torch "
        "versions alone do",
        f"provenance peak RSS: reprodl {rss['reprodl']:.0f} MiB, dtoolai-provenance {rss['dtoolai']:.0f} MiB "
        "(dtoolAI imports torch and torchvision and loads the weights; reprodl reads the annotations only)",
        f"training: {sizes['n_train']} MNIST digits ({source.split()[0]}), {sizes['epochs']} epoch(s), "
        f"batch {BATCH_TRAIN}, SGD lr {LR}, a fresh process per run (its first-call costs included)",
        f"image loading item shapes: dtoolAI {shapes['dtoolai']}, reprodl {shapes['reprodl']} (not the same work)",
    ]
    measurements = {"training": train, "provenance": prov, "images": imgs}
    for c in comparisons:
        if "target_max_ratio" in c:
            figures = f"{T.fmt_s(c['candidate_median_s'])} vs {T.fmt_s(c['baseline_median_s'])}"
        else:
            figures = f"{c['candidate_rate']:,.0f} vs {c['baseline_rate']:,.0f} {c['unit']}"
        print(f"[{NAME}] {c['name']}: {figures} -> {c['ratio']:.3f}x")
    for line in notes:
        print(f"[{NAME}] {line}")
    params = {**sizes, "venv": str(venv), "source": source}
    C.write_doc(NAME, args, params, comparisons, measurements, notes=notes)


if __name__ == "__main__":
    main()
