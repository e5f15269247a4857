"""Remote storage against real servers on 127.0.0.1: dtool-http's server and s3rver.

The servers are started and stopped by the fixtures in ``remote_servers.py``. Nothing is
mocked except, in two tests, a failure injected into a real upload.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest
import torch
from remote_servers import *  # noqa: F403 - the server fixtures
from remote_servers import HTTPServer, S3Bucket, closed_port, configure_bucket, write_dirtree

from reprodl import store
from reprodl.data.datasets import ImageDataSet, TensorDataSet
from reprodl.errors import DatasetExistsError, DatasetNotFoundError, InvalidURIError, StorageError

FAST = 5.0  # seconds within which an unreachable server must be reported


def all_samples(ds) -> tuple[torch.Tensor, torch.Tensor]:
    batch = ds.__getitems__(list(range(len(ds))))
    return batch.inputs, batch.labels


def assert_same_samples(remote, local) -> None:
    assert len(remote) == len(local)
    (x_remote, y_remote), (x_local, y_local) = all_samples(remote), all_samples(local)
    assert torch.equal(x_remote, x_local)
    assert torch.equal(y_remote, y_local)
    assert remote.cat_encoding == local.cat_encoding


def cached_files(cache: Path) -> list[Path]:
    return sorted(p for p in cache.rglob("*") if p.is_file())


def flip_first_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[0] ^= 0xFF
    path.write_bytes(bytes(data))


# --- http:// ---------------------------------------------------------------------------
def test_http_dataset_has_the_identity_and_metadata_of_the_served_one(http_server: HTTPServer, dtool_cache):
    local = store.open_dataset(http_server.root / "digits")
    remote = store.open_dataset(http_server.uri("digits"))
    assert remote.uri == http_server.uri("digits")
    assert not remote.is_local
    assert (remote.name, remote.uuid) == (local.name, local.uuid)
    assert remote.identifiers == local.identifiers
    assert remote.manifest_digest() == local.manifest_digest()
    assert remote.get_readme_content() == local.get_readme_content()
    assert remote.annotation_names() == local.annotation_names()
    assert "dtoolAI.inputtype" in remote.annotation_names()
    assert remote.get_annotation("category_encoding") == local.get_annotation("category_encoding")
    assert remote.get_annotation("no-such-annotation", "default") == "default"


def test_tensor_dataset_over_http_gives_the_local_tensors(http_server: HTTPServer, dtool_cache):
    remote = TensorDataSet(http_server.uri("digits"))
    local = TensorDataSet(http_server.root / "digits")
    assert_same_samples(remote, local)
    assert remote.provenance_info()["manifest_digest"] == local.provenance_info()["manifest_digest"]


def test_image_dataset_over_http_gives_the_local_tensors(http_server: HTTPServer, dtool_cache):
    remote = ImageDataSet(http_server.uri("images"))
    local = ImageDataSet(http_server.root / "images")
    assert_same_samples(remote, local)
    assert remote.mode == local.mode == "RGB"
    assert remote.categories == ["cat", "dog", "owl"]


def test_http_items_are_fetched_once_into_the_dtool_cache(http_server: HTTPServer, dtool_cache: Path):
    before = http_server.item_gets("images")
    first = ImageDataSet(http_server.uri("images"))
    x_first, _ = all_samples(first)
    n_items = len(first)
    assert http_server.item_gets("images") - before == n_items
    files = cached_files(dtool_cache)
    assert len(files) == n_items
    assert {f.parent.name for f in files} == {first.uuid}  # cached under the dataset's UUID
    mtimes = {f: f.stat().st_mtime_ns for f in files}

    again = ImageDataSet(http_server.uri("images"))  # a new handle: only the cache remembers
    x_again, _ = all_samples(again)
    all_samples(again)
    assert torch.equal(x_first, x_again)
    assert http_server.item_gets("images") - before == n_items
    assert {f: f.stat().st_mtime_ns for f in cached_files(dtool_cache)} == mtimes


def test_prefetch_over_http_fills_the_cache_in_parallel(http_server: HTTPServer, dtool_cache: Path):
    ds = store.open_dataset(http_server.uri("images"))
    done = []
    report = ds.prefetch(workers=4, progress=done.append)
    assert sum(done) == ds.total_size()  # progress counts bytes
    assert (report.n_items, report.fetched, report.cached) == (len(ds), len(ds), 0)
    assert len(cached_files(dtool_cache)) == len(ds)
    assert all(Path(ds.item_path(i)).is_file() for i in ds.identifiers)


def test_deep_verify_over_http_passes_for_an_untouched_dataset(http_server: HTTPServer, dtool_cache):
    for name in ("digits", "images"):
        report = store.open_dataset(http_server.uri(name)).verify(deep=True)
        assert report.ok, report.problems()
        assert report.deep and report.n_items > 0


def test_deep_verify_over_http_detects_a_tampered_served_item(http_server: HTTPServer, tmp_path, monkeypatch):
    shutil.copytree(http_server.root / "images", http_server.root / "tampered")
    ds = store.open_dataset(http_server.root / "tampered")
    victim = ds.identifiers[1]
    relpath = ds.relpath(victim)
    flip_first_byte(Path(ds.item_path(victim)))  # same size, different bytes

    monkeypatch.setenv("DTOOL_CACHE_DIRECTORY", str(tmp_path / "cache-1"))
    remote = store.open_dataset(http_server.uri("tampered"))
    # Items are hashed as they arrive, so even the quick check sees it (and caches nothing of it).
    assert remote.verify(deep=False).altered == [relpath]
    report = remote.verify(deep=True)
    assert not report.ok
    assert report.altered == [relpath]
    assert report.problems() == [f"content altered: {relpath}"]

    # A good copy already in the cache does not hide the server's damage: deep re-fetches.
    monkeypatch.setenv("DTOOL_CACHE_DIRECTORY", str(tmp_path / "cache-2"))
    assert store.open_dataset(http_server.uri("images")).verify(deep=True).ok  # same UUID
    assert store.open_dataset(http_server.uri("tampered")).verify(deep=True).altered == [relpath]


def test_verify_over_http_reports_resized_and_missing_items(http_server: HTTPServer, dtool_cache):
    shutil.copytree(http_server.root / "images", http_server.root / "damaged")
    ds = store.open_dataset(http_server.root / "damaged")
    resized, missing = ds.identifiers[0], ds.identifiers[2]
    path = Path(ds.item_path(resized))
    path.write_bytes(path.read_bytes() + b"extra")
    os.unlink(ds.item_path(missing))

    report = store.open_dataset(http_server.uri("damaged")).verify()
    assert report.resized == [ds.relpath(resized)]
    assert report.missing == [ds.relpath(missing)]


def test_damaged_cached_copy_is_replaced_by_deep_verify(http_server: HTTPServer, dtool_cache: Path):
    ds = store.open_dataset(http_server.uri("digits"))
    ds.prefetch()
    cached = Path(ds.item_path(ds.identifiers[0]))
    flip_first_byte(cached)
    assert store.open_dataset(http_server.uri("digits")).verify(deep=True).ok
    assert store.file_md5(cached) == ds.item_properties(ds.identifiers[0])["hash"]


def test_unreachable_http_server_is_a_quick_storage_error(dtool_cache):
    uri = f"http://127.0.0.1:{closed_port()}/digits"
    start = time.monotonic()
    pattern = r"could not reach the dataset at http://127\.0\.0\.1:\d+/digits.*server is running"
    with pytest.raises(StorageError, match=pattern):
        store.open_dataset(uri)
    with pytest.raises(StorageError, match="could not reach"):
        TensorDataSet(uri)
    assert time.monotonic() - start < FAST


def test_missing_http_dataset_is_not_found(http_server: HTTPServer, dtool_cache):
    pattern = r"no dataset at http://.*/no-such-dataset: the server answered HTTP 4\d\d"
    with pytest.raises(DatasetNotFoundError, match=pattern):
        store.open_dataset(http_server.uri("no-such-dataset"))


def test_http_is_read_only(http_server: HTTPServer, dtool_cache, tmp_path):
    with pytest.raises(InvalidURIError, match="read-only"):
        store.copy_dataset(http_server.root / "digits", f"http://127.0.0.1:{http_server.port}")


def test_cli_dataset_info_reads_an_http_dataset(http_server: HTTPServer, dtool_cache, cli):
    result = cli("dataset", "info", http_server.uri("images"), "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    local = store.open_dataset(http_server.root / "images")
    assert info["uri"] == http_server.uri("images")
    assert (info["name"], info["uuid"]) == ("images", local.uuid)
    assert info["manifest_digest"] == local.manifest_digest()
    assert info["classes"] == ["cat", "dog", "owl"]
    assert info["class_counts"] == {"cat": 4, "dog": 4, "owl": 4}

    text = cli("dataset", "info", http_server.uri("digits"))
    assert text.exit_code == 0, text.output
    assert "name:" in text.stdout and "digits" in text.stdout


def test_cli_reports_an_unreachable_http_server_on_stderr(cli, dtool_cache):
    result = cli("dataset", "info", f"http://127.0.0.1:{closed_port()}/digits")
    assert result.exit_code != 0
    assert "could not reach" in result.stderr


def test_copy_from_http_to_disk_keeps_the_dataset(http_server: HTTPServer, dtool_cache, tmp_path):
    dest = tmp_path / "copies"
    dest.mkdir()
    uri = store.copy_dataset(http_server.uri("images"), str(dest))
    copy, original = store.open_dataset(uri), store.open_dataset(http_server.root / "images")
    assert (copy.uuid, copy.manifest_digest()) == (original.uuid, original.manifest_digest())
    assert copy.get_overlay("category") == original.get_overlay("category")
    assert copy.verify(deep=True).ok


# --- s3:// -----------------------------------------------------------------------------
@pytest.fixture
def local_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Route the system temp dir (where remote creation stages) into ``tmp_path``."""
    path = tmp_path / "systmp"
    path.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(path))
    return path


def test_create_digits_directly_on_s3(s3_bucket: S3Bucket, local_tmp: Path, tmp_path):
    from reprodl.data.creators import create_digits

    uri = create_digits(s3_bucket.base_uri, "digits")
    assert uri.startswith(f"s3://{s3_bucket.name}/")
    assert list(local_tmp.iterdir()) == []  # the staging copy is gone

    (tmp_path / "local").mkdir()
    local_uri = create_digits(str(tmp_path / "local"), "digits")
    remote = store.open_dataset(uri)
    assert remote.name == "digits"
    assert remote.manifest_digest() == store.open_dataset(local_uri).manifest_digest()
    report = remote.verify(deep=True)
    assert report.ok, report.problems()
    assert remote.get_annotation("dtoolAI.inputtype") == "TensorDataSet"  # a dotted name
    assert_same_samples(TensorDataSet(uri), TensorDataSet(local_uri))
    assert store.list_datasets(s3_bucket.base_uri) == [uri]


def test_image_dataset_created_on_s3_gives_the_local_tensors(s3_bucket: S3Bucket, local_tmp, tmp_path, dtool_cache):
    from reprodl.data.creators import create_from_dirtree

    tree = write_dirtree(tmp_path / "tree")
    uri = create_from_dirtree(tree, s3_bucket.base_uri, "images")
    (tmp_path / "local").mkdir()
    local_uri = create_from_dirtree(tree, str(tmp_path / "local"), "images")
    remote = ImageDataSet(uri)
    assert_same_samples(remote, ImageDataSet(local_uri))
    assert sorted(remote.dataset.overlay_names()) == ["category"]
    remote.dataset.prefetch(workers=4)
    assert len(cached_files(dtool_cache)) == len(remote)
    report = store.open_dataset(uri).verify(deep=True)
    assert report.ok, report.problems()


def test_exception_inside_s3_creation_leaves_nothing_in_the_bucket(s3_bucket: S3Bucket, local_tmp):
    with pytest.raises(RuntimeError, match="interrupted"):
        with store.create_dataset(s3_bucket.base_uri, "half") as writer:
            writer.put_bytes(b"1,2,3", "numbers.csv")
            raise RuntimeError("interrupted")
    assert s3_bucket.keys() == []
    assert list(local_tmp.iterdir()) == []


@pytest.mark.parametrize("method", ["put_item", "put_manifest"])
def test_failed_upload_to_s3_leaves_nothing_in_the_bucket(s3_bucket: S3Bucket, local_tmp, monkeypatch, method):
    from dtool_s3.storagebroker import S3StorageBroker

    real = getattr(S3StorageBroker, method)
    calls = []

    def failing(self, *args, **kwargs):  # the first call works, the next one fails
        calls.append(args)
        if len(calls) > 1 or method == "put_manifest":
            raise ConnectionError("connection reset by peer")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(S3StorageBroker, method, failing)
    pattern = r"could not copy .* to s3://.*connection reset.*the partial copy was removed"
    with pytest.raises(StorageError, match=pattern):
        with store.create_dataset(s3_bucket.base_uri, "half") as writer:
            writer.put_bytes(b"1,2,3", "a.csv")
            writer.put_bytes(b"4,5,6", "b.csv")
            writer.put_annotation("dtoolAI.inputtype", "TensorDataSet")
    assert s3_bucket.keys() == []
    assert list(local_tmp.iterdir()) == []


def test_copy_to_s3_keeps_uuid_and_manifest_digest_and_back(s3_bucket: S3Bucket, digits_uri, tmp_path):
    local = store.open_dataset(digits_uri)
    done = []
    uri = store.copy_dataset(digits_uri, s3_bucket.base_uri, progress=done.append)
    assert sum(done) == len(local)
    remote = store.open_dataset(uri)
    assert uri == f"s3://{s3_bucket.name}/{local.uuid}"
    assert (remote.name, remote.uuid) == (local.name, local.uuid)
    assert remote.manifest_digest() == local.manifest_digest()
    assert remote.readme() == local.readme()
    assert remote.annotation_names() == local.annotation_names()
    assert remote.admin_metadata["frozen_at"] == pytest.approx(local.admin_metadata["frozen_at"])
    assert remote.verify(deep=True).ok

    with pytest.raises(DatasetExistsError, match="never overwrites"):
        store.copy_dataset(digits_uri, s3_bucket.base_uri)
    assert store.open_dataset(uri).verify(deep=True).ok  # the refused copy touched nothing

    back_dir = tmp_path / "back"
    back_dir.mkdir()
    back = store.open_dataset(store.copy_dataset(uri, str(back_dir)))
    assert back.manifest_digest() == local.manifest_digest()
    assert back.get_annotation("dtoolAI.inputtype") == "TensorDataSet"
    assert back.verify(deep=True).ok


def test_deep_verify_on_s3_detects_a_tampered_object(s3_bucket: S3Bucket, digits_uri, dtool_cache):
    uri = store.copy_dataset(digits_uri, s3_bucket.base_uri)
    ds = store.open_dataset(uri)
    ds.prefetch()  # a good copy in the cache must not hide the damage
    victim = ds.identifier_of("labels.npy")
    key = f"{ds.uuid}/data/{victim}"
    head = s3_bucket.client.head_object(Bucket=s3_bucket.name, Key=key)
    body = bytearray(s3_bucket.client.get_object(Bucket=s3_bucket.name, Key=key)["Body"].read())
    body[-1] ^= 0xFF
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key=key, Body=bytes(body), Metadata=head["Metadata"])
    report = store.open_dataset(uri).verify(deep=True)
    assert report.altered == ["labels.npy"]


def test_missing_s3_dataset_and_bucket_are_told_apart(s3_bucket: S3Bucket, monkeypatch):
    with pytest.raises(DatasetNotFoundError, match=f"bucket '{s3_bucket.name}' has no dataset with UUID"):
        store.open_dataset(f"{s3_bucket.base_uri}/00000000-0000-0000-0000-000000000000")
    configure_bucket(monkeypatch, "no-such-bucket", s3_bucket.endpoint)
    with pytest.raises(StorageError, match="'no-such-bucket' .* does not exist"):
        store.open_dataset("s3://no-such-bucket/00000000-0000-0000-0000-000000000000")
    with pytest.raises(InvalidURIError, match="names a bucket, not a dataset"):
        store.open_dataset(s3_bucket.base_uri)


def test_unconfigured_s3_bucket_says_which_settings_to_make(s3_bucket: S3Bucket):
    with pytest.raises(StorageError, match="set DTOOL_S3_ENDPOINT_unconfigured, DTOOL_S3_ACCESS_KEY_ID_unconfigured"):
        store.open_dataset("s3://unconfigured/00000000-0000-0000-0000-000000000000")


def test_unreachable_s3_endpoint_is_a_quick_storage_error(s3_bucket: S3Bucket, monkeypatch, local_tmp, digits_uri):
    from reprodl.data.creators import create_digits

    configure_bucket(monkeypatch, "dead", f"http://127.0.0.1:{closed_port()}")
    start = time.monotonic()
    with pytest.raises(StorageError, match=r"could not reach the dataset at s3://dead/.*Could not connect"):
        store.open_dataset("s3://dead/00000000-0000-0000-0000-000000000000")
    with pytest.raises(StorageError, match="could not reach .*s3://dead"):
        create_digits("s3://dead", "digits")
    with pytest.raises(StorageError, match="could not reach .*s3://dead"):
        store.copy_dataset(digits_uri, "s3://dead")
    assert time.monotonic() - start < 3 * FAST
    assert list(local_tmp.iterdir()) == []
