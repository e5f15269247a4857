"""A freeze hashes its items on every core (dtool's own freeze hashes one after another).

The manifest must be exactly dtool's: each item's md5, as ``md5sum`` gives it; the speed is
measured in ``bench/bench_hashing.py`` against md5sum.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from reprodl.store import create_dataset, hashing, open_dataset


def _make(tmp_path: Path, n: int = 8) -> tuple[str, dict[str, str]]:
    blobs = {f"item{i}.bin": os.urandom(300_000 + i) for i in range(n)}
    (tmp_path / "out").mkdir()
    with create_dataset(str(tmp_path / "out"), "blobs") as writer:
        for rel, data in blobs.items():
            writer.put_bytes(data, rel)
    assert writer.uri is not None
    return writer.uri, {rel: hashlib.md5(data).hexdigest() for rel, data in blobs.items()}


def test_the_manifest_of_a_parallel_freeze_is_dtools(tmp_path: Path):
    uri, expected = _make(tmp_path)
    ds = open_dataset(uri)
    assert {rel: e["hash"] for rel, e in ds.manifest_entries().items()} == expected
    assert ds.verify(deep=True).ok
    import dtoolcore

    proto_hashes = {
        p["relpath"]: p["hash"] for p in dtoolcore.DataSet.from_uri(uri).generate_manifest()["items"].values()
    }
    assert proto_hashes == expected  # dtool's own serial hashing of the same files


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="one CPU: nothing to hash in parallel")
def test_a_freeze_hashes_on_more_than_one_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    threads: list[int] = []
    original, lock, other = hashing.file_md5, threading.Lock(), threading.Event()

    def recording(path):
        me = threading.get_ident()
        with lock:
            if me not in threads:
                threads.append(me)
        if me == threads[0]:
            other.wait(timeout=5)  # a second thread hashing meanwhile proves parallelism; serial times out
        else:
            other.set()
        return original(path)

    monkeypatch.setattr(hashing, "file_md5", recording)
    _make(tmp_path)
    assert len(threads) >= 2 and other.is_set()
