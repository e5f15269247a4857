"""Reading a dataset from s3:// (a local s3rver): parallel fetch, first and later epochs.

Data: an ImageDataSet of N 8x8 grey PNGs (10 categories; N = 10,000, 2,000 with --quick),
made on disk with ``create_from_dirtree`` and copied to a bucket of a local s3rver (the
server the tests use: ``make test`` installs it; without node/s3rver this benchmark is
skipped). Every figure starts from an empty dtool cache unless it says otherwise.

- parallel fetch: ``open_dataset(s3_uri).prefetch()`` (8 downloads at a time, one GET
  each, checked against the manifest as it arrives) vs dtoolcore's own per-item path:
  ``DataSet.from_uri(s3_uri).item_content_abspath(idn)`` item after item (dtool-s3's
  ``get_item_abspath``: a GET for the item's metadata, then boto3's ``download_file``, a
  HEAD and a GET; nothing checked), timed over the first K items (K = 200, 100 with
  --quick). Target: >= 5x (items/s).
- first epoch: ``ImageDataSet(s3_uri)`` and one ``DataLoader(batch_size=64)`` epoch
  (the batch's items fetched in parallel) vs the same from the dataset on disk.
- later epochs: further epochs of the same s3 ImageDataSet (items cached) vs epochs on
  disk, interleaved. Target: >= 0.95x.

    .venv/bin/python bench/bench_remote_fetch.py [--quick]
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import _common as C

NAME = "remote_fetch"
BATCH = 64
S3_KEY = "S3RVER"


def make_tree(root: Path, n: int) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for k in range(n):
        folder = root / f"c{k % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(folder / f"{k:06d}.png")
    return root


def configure(bucket: str, endpoint: str, tmp: Path) -> None:
    """dtool-s3's settings for ``bucket``, and no AWS settings of the developer's."""
    for var in ("AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        os.environ.pop(var, None)
    os.environ.update(
        {
            f"DTOOL_S3_ENDPOINT_{bucket}": endpoint,
            f"DTOOL_S3_ACCESS_KEY_ID_{bucket}": S3_KEY,
            f"DTOOL_S3_SECRET_ACCESS_KEY_{bucket}": S3_KEY,
            "AWS_CONFIG_FILE": str(tmp / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "no-aws-credentials"),
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }
    )


def fresh_cache(tmp: Path, name: str) -> None:
    os.environ["DTOOL_CACHE_DIRECTORY"] = str(tmp / f"cache-{name}")


def epoch(ds: Any) -> int:
    from torch.utils.data import DataLoader

    from reprodl.data.datasets import collate

    return sum(len(y) for _x, y in DataLoader(ds, batch_size=BATCH, shuffle=False, collate_fn=collate))


def measure(uri: str, local: str, tmp: Path, k: int, repeats: int) -> dict[str, Any]:
    import dtoolcore

    from reprodl.data.datasets import ImageDataSet
    from reprodl.store import open_dataset

    m: dict[str, Any] = {}
    fresh_cache(tmp, "parallel")
    t = time.perf_counter()
    report = open_dataset(uri).prefetch()
    m["parallel_fetch_s"] = time.perf_counter() - t
    m["parallel_fetch_items"] = report.fetched

    fresh_cache(tmp, "dtoolcore")
    ds = dtoolcore.DataSet.from_uri(uri)
    ids = sorted(ds.identifiers)[:k]
    t = time.perf_counter()
    for idn in ids:
        ds.item_content_abspath(idn)
    m["dtoolcore_seq_s"] = time.perf_counter() - t

    fresh_cache(tmp, "epochs")
    t = time.perf_counter()
    remote = ImageDataSet(uri)
    n = epoch(remote)
    m["first_epoch_s3_s"] = time.perf_counter() - t
    t = time.perf_counter()
    on_disk = ImageDataSet(local)
    assert epoch(on_disk) == n
    m["first_epoch_disk_s"] = time.perf_counter() - t
    m["later_epochs"] = C.interleaved({"s3": lambda: epoch(remote), "disk": lambda: epoch(on_disk)}, repeats)
    t = time.perf_counter()
    m["new_handle_epoch_s3_s"] = (epoch(ImageDataSet(uri)), time.perf_counter() - t)[1]
    m["n_items"] = n
    return m


def main() -> None:
    args = C.parse_args(__doc__.splitlines()[0])
    C.set_torch_threads()
    from remote_servers import s3rver_command, s3rver_running

    n = 2_000 if args.quick else 10_000
    k = 100 if args.quick else 200
    repeats = args.repeats or 3
    command = s3rver_command()
    if command is None:
        print(f"[{NAME}] skipped: s3rver (node) is not installed; `make test` installs it")
        return
    with tempfile.TemporaryDirectory(prefix="reprodl-bench-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "s3").mkdir()
        (tmp / "disk").mkdir()
        with s3rver_running(tmp / "s3", command) as endpoint:
            import boto3

            from reprodl.data.creators import create_from_dirtree
            from reprodl.store import copy_dataset

            configure("bench", endpoint, tmp)
            boto3.client(
                "s3", endpoint_url=endpoint, aws_access_key_id=S3_KEY, aws_secret_access_key=S3_KEY
            ).create_bucket(Bucket="bench")
            local = create_from_dirtree(make_tree(tmp / "tree", n), str(tmp / "disk"), "pngs")
            t = time.perf_counter()
            uri = copy_dataset(local, "s3://bench")
            upload_s = time.perf_counter() - t
            m = measure(uri, local, tmp, k, repeats)
    m["upload_s"] = upload_s
    report(args, n, k, repeats, m)


def report(args: Any, n: int, k: int, repeats: int, m: dict[str, Any]) -> None:
    parallel = m["parallel_fetch_items"] / m["parallel_fetch_s"]
    later = {key: C.median(v) for key, v in m["later_epochs"].items()}
    comparisons = [
        C.comparison(
            f"fetch {n:,} items from s3:// in parallel vs dtoolcore item by item",
            "StoredDataSet.prefetch (8 at a time)",
            "dtoolcore item_content_abspath, sequential",
            parallel,
            k / m["dtoolcore_seq_s"],
            5.0,
            "items/s",
            f"dtoolcore timed over {k} items, one after another (3 requests each, nothing checked); "
            "ours checks each item's size and md5 as it arrives",
        ),
        C.comparison(
            f"first epoch of {n:,} items from s3:// (empty cache) vs on disk",
            "ImageDataSet(s3://...), open + epoch",
            "ImageDataSet(disk), open + epoch",
            n / m["first_epoch_s3_s"],
            n / m["first_epoch_disk_s"],
            None,
            "items/s",
            "informational: the first epoch downloads every item (each batch's in parallel)",
        ),
        C.comparison(
            "later epochs from s3:// (items cached) vs on disk",
            "ImageDataSet(s3://...) epoch",
            "ImageDataSet(disk) epoch",
            n / later["s3"],
            n / later["disk"],
            0.95,
            "items/s",
            f"median of {repeats}, interleaved; a new handle over the filled cache: "
            f"{n / m['new_handle_epoch_s3_s']:,.0f} items/s",
        ),
    ]
    params = {"n_items": n, "dtoolcore_items_timed": k, "batch_size": BATCH, "upload_s": m["upload_s"]}
    C.report(NAME, args, params, comparisons, m)


if __name__ == "__main__":
    main()
