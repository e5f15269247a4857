"""Remote reads at speed, and their faults, against real servers (dtool-http's server, s3rver).

Items are fetched once, in parallel, streamed to disk and checked against the manifest as
they arrive; an interrupted fetch resumes; a damaged cached item is fetched again; a server
that goes down mid-download leaves nothing in the cache that is later trusted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
from remote_servers import *  # noqa: F403 - the server fixtures
from remote_servers import HOST, S3_KEY, HTTPServer, S3Bucket, configure_bucket, s3rver_command, s3rver_running

from reprodl import store
from reprodl.data.datasets import ImageDataSet
from reprodl.errors import StorageError

BIG = 32 << 20  # bytes: more than the sockets between a server and its client buffer


def cache_files(cache: Path) -> list[Path]:
    return sorted(p for p in cache.rglob("*") if p.is_file())


def make_big_dataset(base: Path, name: str, size: int = BIG) -> str:
    """A dataset with one item of ``size`` random bytes and one small item."""
    with store.create_dataset(base, name) as writer:
        writer.put_bytes(os.urandom(size), "big.bin")
        writer.put_bytes(b"small", "small.txt")
    return name


class Interrupt(Exception):
    pass


# --- resuming, damage, streaming -----------------------------------------------------------
def test_an_interrupted_fetch_resumes_keeping_the_items_already_cached(http_server: HTTPServer, dtool_cache: Path):
    uri = http_server.uri("images")
    ds = store.open_dataset(uri)
    seen = []

    def stop_after_five_items(n: int) -> None:
        seen.append(n)
        if len(seen) == 5:
            raise Interrupt("Ctrl-C")

    with pytest.raises(Interrupt):
        ds.prefetch(workers=2, progress=stop_after_five_items)
    kept = cache_files(dtool_cache)
    assert 0 < len(kept) < len(ds)
    assert not [p for p in kept if p.name.endswith(".tmp")]  # no half-written download is left

    before = http_server.item_gets("images")
    report = store.open_dataset(uri).prefetch()
    assert report.cached == len(kept) and report.fetched == len(ds) - len(kept)
    assert http_server.item_gets("images") - before == report.fetched  # the kept ones were not fetched again
    assert len(cache_files(dtool_cache)) == len(ds)


def test_a_damaged_cached_item_is_detected_by_its_hash_and_fetched_again(http_server: HTTPServer, dtool_cache: Path):
    uri = http_server.uri("images")
    store.open_dataset(uri).prefetch()
    ds = store.open_dataset(uri)
    victim = ds.identifiers[3]
    cached = Path(ds._cache_path(victim))
    data = bytearray(cached.read_bytes())
    data[-1] ^= 0xFF  # same size, other bytes
    cached.write_bytes(bytes(data))

    before = http_server.item_gets("images")
    sample = ImageDataSet(uri)[3]  # the same item, through a new handle
    assert http_server.item_gets("images") - before == 1
    assert store.file_md5(cached) == ds.item_properties(victim)["hash"]
    assert sample[0].shape == ImageDataSet(http_server.root / "images")[3][0].shape


def test_a_large_item_streams_to_disk_in_bounded_memory(http_server: HTTPServer, dtool_cache: Path):
    make_big_dataset(http_server.root, "big-stream", 16 << 20)
    ds = store.open_dataset(http_server.uri("big-stream"))
    chunks: list[int] = []
    tracemalloc.start()
    try:
        ds.prefetch(progress=chunks.append)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 6 << 20  # a 16 MiB item never held in memory whole
    assert max(chunks) <= 1 << 20 and sum(chunks) == ds.total_size()
    big = ds.identifier_of("big.bin")
    assert store.file_md5(ds.item_path(big)) == ds.item_properties(big)["hash"]


def test_a_served_item_with_other_bytes_is_refused_and_not_cached(http_server: HTTPServer, dtool_cache: Path):
    make_big_dataset(http_server.root, "tampered-big", 1 << 16)
    ds = store.open_dataset(http_server.root / "tampered-big")
    path = Path(ds.item_path(ds.identifier_of("small.txt")))
    path.write_bytes(b"SMALL")  # same size, other bytes
    remote = store.open_dataset(http_server.uri("tampered-big"))
    with pytest.raises(StorageError, match=r"item 'small.txt' of http://.* does not match its manifest .*not cached"):
        remote.prefetch()
    assert not [p for p in cache_files(dtool_cache) if p.suffix == ".txt" or p.name.endswith(".tmp")]


# --- faults -------------------------------------------------------------------------------
def test_a_server_going_down_mid_download_leaves_nothing_trusted(tmp_path: Path, dtool_cache: Path):
    pytest.importorskip("dtool_http")
    root = tmp_path / "served"
    root.mkdir()
    make_big_dataset(root, "big")
    server = Path(__file__).resolve().parents[1] / "remote_servers.py"
    proc = subprocess.Popen(
        [sys.executable, "-u", str(server), "http", str(root)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        line = proc.stdout.readline().decode()  # "serving on 127.0.0.1:PORT"
        port = int(line.rsplit(":", 1)[1])
        ds = store.open_dataset(f"http://{HOST}:{port}/big")

        def kill_the_server(n: int) -> None:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)

        with pytest.raises(StorageError, match=r"failed part-way|could not reach") as info:
            ds.prefetch(workers=1, progress=kill_the_server)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        proc.stdout.close()
    assert "http://127.0.0.1" in str(info.value) and "Check the server is running" in str(info.value)
    big = ds.identifier_of("big.bin")
    assert not os.path.exists(ds._cache_path(big))
    assert not [p for p in cache_files(dtool_cache) if p.name.endswith(".tmp")]


def test_an_s3_server_going_down_mid_download_leaves_nothing_trusted(s3_bucket: S3Bucket, tmp_path: Path, monkeypatch):
    command = s3rver_command()
    assert command is not None  # s3_bucket would have been skipped
    (tmp_path / "own-s3").mkdir()
    procs: list = []
    with s3rver_running(tmp_path / "own-s3", command, procs=procs) as endpoint:
        import boto3

        boto3.client(
            "s3", endpoint_url=endpoint, aws_access_key_id=S3_KEY, aws_secret_access_key=S3_KEY, region_name="us-east-1"
        ).create_bucket(Bucket="doomed")
        configure_bucket(monkeypatch, "doomed", endpoint)
        (tmp_path / "local").mkdir()
        make_big_dataset(tmp_path / "local", "big")
        ds = store.open_dataset(store.copy_dataset(tmp_path / "local" / "big", "s3://doomed"))

        def kill_the_server(n: int) -> None:
            if procs[0].poll() is None:
                procs[0].kill()
                procs[0].wait(timeout=10)

        with pytest.raises(StorageError, match=r"failed part-way|could not reach") as info:
            ds.prefetch(workers=1, progress=kill_the_server)
    assert "s3://doomed/" in str(info.value)
    big = ds.identifier_of("big.bin")
    assert not os.path.exists(ds._cache_path(big))
    assert not [p for p in cache_files(Path(os.environ["DTOOL_CACHE_DIRECTORY"])) if p.name.endswith(".tmp")]


def test_wrong_s3_credentials_are_refused_naming_the_settings(s3_bucket: S3Bucket, digits_uri, monkeypatch, cli):
    uri = store.copy_dataset(digits_uri, s3_bucket.base_uri)
    # s3rver checks the key id (not the signature): a wrong id is what it can refuse.
    monkeypatch.setenv(f"DTOOL_S3_ACCESS_KEY_ID_{s3_bucket.name}", "NOT-THE-KEY")
    result = cli("dataset", "fetch", uri)
    assert result.exit_code != 0
    assert f"access to bucket '{s3_bucket.name}' was refused (InvalidAccessKeyId)" in result.stderr
    assert f"DTOOL_S3_ACCESS_KEY_ID_{s3_bucket.name}" in result.stderr


def test_fetching_from_a_missing_bucket_says_it_does_not_exist(s3_bucket: S3Bucket, monkeypatch, cli):
    configure_bucket(monkeypatch, "no-such-bucket", s3_bucket.endpoint)
    result = cli("dataset", "fetch", "s3://no-such-bucket/00000000-0000-0000-0000-000000000000")
    assert result.exit_code != 0
    assert "the bucket 'no-such-bucket'" in result.stderr and "does not exist" in result.stderr


def test_cli_fetch_from_s3_fills_the_cache_once(s3_bucket: S3Bucket, image_uri: str, dtool_cache: Path, cli):
    uri = store.copy_dataset(image_uri, s3_bucket.base_uri)
    first = cli("dataset", "fetch", uri, "--json")
    assert first.exit_code == 0, first.stderr
    report = json.loads(first.stdout)
    n = len(store.open_dataset(image_uri))
    assert (report["n_items"], report["fetched"], report["cached"]) == (n, n, 0)
    again = json.loads(cli("dataset", "fetch", uri, "--json").stdout)
    assert (again["fetched"], again["cached"]) == (0, n)
    assert len(cache_files(dtool_cache)) == n


def test_a_model_whose_weights_were_deleted_on_s3_names_the_missing_item(s3_bucket: S3Bucket, digits_uri: str):
    from test_remote_workflow import train

    from reprodl import TensorDataSet, TrainedTorchModel

    model_uri = train(TensorDataSet(digits_uri), s3_bucket.base_uri, "weights-gone")
    ds = store.open_dataset(model_uri)
    key = f"{ds.uuid}/data/{ds.identifier_of('model.safetensors')}"
    s3_bucket.client.delete_object(Bucket=s3_bucket.name, Key=key)
    with pytest.raises(StorageError, match=r"item 'model.safetensors' of s3://.* is missing on the server"):
        TrainedTorchModel(model_uri)
