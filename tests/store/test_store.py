"""The storage layer: opening by path or URI, digests and verification (atomic creation: test_create.py).

A dataset once opened is a reprodl.store.dataset.StoredDataSet.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import dtoolcore
import dtoolcore.utils
import pytest

from reprodl.errors import (
    DatasetExistsError,
    DatasetNotFoundError,
    DatasetNotFrozenError,
    InvalidNameError,
    InvalidURIError,
    ReprodlError,
    StorageError,
)
from reprodl.store import create_dataset, local_path, normalise_uri, open_dataset


def _make_small(base: Path, name: str = "small") -> str:
    with create_dataset(str(base), name, readme="name: small\n") as writer:
        writer.put_bytes(b"hello world\n", "a/hello.txt")
        writer.put_bytes(b"0123456789", "b/digits.txt")
        writer.put_json({"x": 1}, "meta.json")
        writer.set_item_label("category", "a/hello.txt", "greeting")
        writer.put_annotation("purpose", "tests")
    assert writer.uri is not None
    return writer.uri


def _item_path(uri: str, relpath: str) -> Path:
    path = local_path(uri)
    assert path is not None
    return path / "data" / relpath


def _flip_first_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[0] ^= 0xFF
    path.write_bytes(bytes(data))


# --- opening ---------------------------------------------------------------------------


def test_open_by_plain_path_and_file_uri_give_the_same_dataset(base_dir):
    uri = _make_small(base_dir)
    path = local_path(uri)
    by_path = open_dataset(str(path))
    by_uri = open_dataset(f"file://{path}")
    by_pathlike = open_dataset(path)
    assert by_path.uuid == by_uri.uuid == by_pathlike.uuid
    assert by_path.uri == by_uri.uri == uri
    assert by_path.name == "small"
    assert len(by_path) == 3
    assert [by_path.relpath(i) for i in by_path.identifiers] == ["a/hello.txt", "b/digits.txt", "meta.json"]
    assert Path(by_uri.item_path(by_uri.identifier_of("a/hello.txt"))).read_bytes() == b"hello world\n"
    assert by_uri.get_annotation("purpose") == "tests"
    assert by_uri.readme() == {"name": "small"}


def test_label_overlay_covers_every_item(base_dir):
    ds = open_dataset(_make_small(base_dir))
    overlay = ds.get_overlay("category")
    assert set(overlay) == set(ds.identifiers)
    assert overlay[ds.identifier_of("a/hello.txt")] == "greeting"
    assert overlay[ds.identifier_of("meta.json")] is None


def test_missing_path_is_dataset_not_found(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        open_dataset(tmp_path / "nothing-here")


def test_directory_that_is_not_a_dataset_is_not_found(tmp_path):
    (tmp_path / "plain").mkdir()
    with pytest.raises(DatasetNotFoundError, match="not a dtool dataset"):
        open_dataset(tmp_path / "plain")


def test_not_found_is_also_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        open_dataset(tmp_path / "nothing-here")


def test_proto_dataset_is_refused_as_not_frozen(tmp_path):
    proto = dtoolcore.create_proto_dataset("unfinished", normalise_uri(str(tmp_path)))
    with pytest.raises(DatasetNotFrozenError, match="proto dataset.*did not finish.*Remove it") as info:
        open_dataset(proto.uri)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("uri", ["ftp://example.org/data/x", "gopher://host/x"])
def test_unsupported_scheme_is_an_invalid_uri(uri):
    with pytest.raises(InvalidURIError, match="unsupported URI scheme .*use a path or one of"):
        open_dataset(uri)


def test_empty_uri_is_refused():
    with pytest.raises(InvalidURIError, match="empty URI"):
        open_dataset("")


# --- errors (creating a dataset: test_create.py) -----------------------------------------


def test_errors_share_one_base_class():
    for cls in (
        DatasetExistsError,
        DatasetNotFoundError,
        DatasetNotFrozenError,
        InvalidNameError,
        InvalidURIError,
        StorageError,
    ):
        assert issubclass(cls, ReprodlError)


# --- digests -----------------------------------------------------------------------------


def test_manifest_digest_is_stable_for_a_copy(base_dir, tmp_path):
    uri = _make_small(base_dir)
    other = tmp_path / "elsewhere"
    other.mkdir()
    copy_uri = dtoolcore.copy(uri, normalise_uri(str(other)))
    original, copy = open_dataset(uri), open_dataset(copy_uri)
    assert copy.uri != original.uri
    assert copy.manifest_digest() == original.manifest_digest()
    assert original.manifest_digest().startswith("sha256:")


def test_manifest_digest_differs_for_different_content(base_dir):
    a = open_dataset(_make_small(base_dir, "one"))
    with create_dataset(str(base_dir), "two") as writer:
        writer.put_bytes(b"hello world!\n", "a/hello.txt")
    b = open_dataset(writer.uri)
    assert a.manifest_digest() != b.manifest_digest()


# --- verification ------------------------------------------------------------------------


@pytest.mark.parametrize("deep", [False, True])
def test_untouched_dataset_verifies(base_dir, deep):
    report = open_dataset(_make_small(base_dir)).verify(deep=deep)
    assert report.ok
    assert report.problems() == []
    assert report.n_items == 3


@pytest.mark.parametrize("deep", [False, True])
def test_verify_finds_a_missing_item(base_dir, deep):
    uri = _make_small(base_dir)
    _item_path(uri, "b/digits.txt").unlink()
    report = open_dataset(uri).verify(deep=deep)
    assert not report.ok
    assert report.missing == ["b/digits.txt"]
    assert report.problems() == ["missing: b/digits.txt"]


@pytest.mark.parametrize("deep", [False, True])
def test_verify_finds_an_added_file(base_dir, deep):
    uri = _make_small(base_dir)
    _item_path(uri, "a/intruder.txt").write_bytes(b"not in the manifest")
    report = open_dataset(uri).verify(deep=deep)
    assert report.added == ["a/intruder.txt"]
    assert (report.missing, report.altered, report.resized) == ([], [], [])


@pytest.mark.parametrize("deep", [False, True])
def test_verify_finds_a_resized_item(base_dir, deep):
    uri = _make_small(base_dir)
    with open(_item_path(uri, "a/hello.txt"), "ab") as fh:
        fh.write(b"more")
    report = open_dataset(uri).verify(deep=deep)
    assert report.resized == ["a/hello.txt"]
    assert report.problems() == ["size changed: a/hello.txt"]


@pytest.mark.parametrize("deep", [False, True])
def test_verify_finds_a_same_size_edit(base_dir, deep):
    uri = _make_small(base_dir)
    path = _item_path(uri, "b/digits.txt")
    size = path.stat().st_size
    time.sleep(0.02)  # a real edit happens later than the freeze: let the clock move on
    _flip_first_byte(path)
    assert path.stat().st_size == size
    report = open_dataset(uri).verify(deep=deep)
    assert report.altered == ["b/digits.txt"]
    assert report.resized == []
    assert report.problems() == ["content altered: b/digits.txt"]


def test_deep_verify_finds_a_same_size_edit_with_mtime_restored(base_dir):
    uri = _make_small(base_dir)
    path = _item_path(uri, "b/digits.txt")
    st = path.stat()
    _flip_first_byte(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_mtime_ns == st.st_mtime_ns
    report = open_dataset(uri).verify(deep=True)
    assert report.altered == ["b/digits.txt"]


def test_verify_progress_counts_bytes(base_dir):
    ds = open_dataset(_make_small(base_dir))
    done: list[int] = []
    ds.verify(deep=True, progress=done.append)
    assert sum(done) == ds.total_size()


def test_verify_report_to_dict_is_json_ready(base_dir):
    uri = _make_small(base_dir)
    _item_path(uri, "meta.json").unlink()
    d = open_dataset(uri).verify().to_dict()
    assert d["ok"] is False
    assert d["missing"] == ["meta.json"]
    assert d["uri"] == uri


def test_identifier_of_unknown_relpath_names_it(base_dir):
    ds = open_dataset(_make_small(base_dir))
    assert ds.identifier_of("meta.json") == dtoolcore.utils.generate_identifier("meta.json")
    with pytest.raises(KeyError, match="nope.txt"):
        ds.identifier_of("nope.txt")
