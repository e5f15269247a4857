"""reprodl.store.create: a dataset is created atomically (staged, then frozen and moved into place) or not at all."""

from __future__ import annotations

import os

import dtoolcore
import dtoolcore.utils
import pytest
from conftest import snapshot, staging_dirs
from test_store import _make_small  # the store tests' one small dataset

from reprodl.errors import (
    DatasetExistsError,
    InvalidNameError,
    InvalidURIError,
    StorageError,
)
from reprodl.store import create_dataset, open_dataset


def test_exception_inside_create_leaves_no_dataset_and_no_staging(base_dir):
    before = snapshot(base_dir)
    with pytest.raises(RuntimeError, match="boom"):
        with create_dataset(str(base_dir), "doomed") as writer:
            writer.put_bytes(b"partial", "part.txt")
            assert staging_dirs(base_dir), "items should be staged in a hidden directory"
            raise RuntimeError("boom")
    assert snapshot(base_dir) == before
    assert not (base_dir / "doomed").exists()
    assert staging_dirs(base_dir) == []


def test_created_dataset_is_frozen_and_staging_is_gone(base_dir):
    uri = _make_small(base_dir)
    assert sorted(os.listdir(base_dir)) == ["small"]
    assert dtoolcore.DataSet.from_uri(uri).admin_metadata["type"] == "dataset"


def test_existing_name_is_refused_and_original_untouched(base_dir):
    uri = _make_small(base_dir)
    original = open_dataset(uri)
    digest, uuid = original.manifest_digest(), original.uuid
    before = snapshot(base_dir)
    with pytest.raises(DatasetExistsError, match="'small' already exists.*never overwrites"):
        with create_dataset(str(base_dir), "small") as writer:
            writer.put_bytes(b"other", "other.txt")
    assert snapshot(base_dir) == before
    again = open_dataset(uri)
    assert (again.uuid, again.manifest_digest()) == (uuid, digest)
    assert again.verify(deep=True).ok


@pytest.mark.parametrize("name", ["has space", "slash/name", "", "x" * 81, "star*"])
def test_invalid_name_is_refused_before_anything_is_written(base_dir, name):
    with pytest.raises(InvalidNameError, match="not allowed by dtool"):
        with create_dataset(str(base_dir), name):
            pass
    assert snapshot(base_dir) == []


def test_base_that_does_not_exist_is_a_storage_error(tmp_path):
    with pytest.raises(StorageError, match="not an existing directory"):
        with create_dataset(str(tmp_path / "missing-base"), "x"):
            pass
    assert not (tmp_path / "missing-base").exists()


def test_create_on_http_is_refused_as_read_only():
    with pytest.raises(InvalidURIError, match="read-only"):
        with create_dataset("http://localhost:1/base", "x"):
            pass
