"""An item path names a regular file inside the dataset, or is refused before anything reads it.

A dataset handed over as a directory may hold, in place of an item, a named pipe (opening it waits
for ever), a link to ``/dev/zero`` (read for ever) or a link to a file outside the dataset (read as
if it were the item). ``item_path`` refuses each, naming the item, without opening it; every reader
of items (images, arrays, records, claims, summaries) gets its path there. ``verify`` still reports
such items instead of refusing the dataset, and ``copy`` still refuses a symlinked source.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hostile_items import SPECIAL, bounded_call, make_special

from reprodl.errors import DatasetFormatError
from reprodl.store import create_dataset, local_path, open_dataset


def make_small(base: Path) -> Path:
    with create_dataset(str(base), "small", readme="name: small\n") as writer:
        writer.put_bytes(b"hello world\n", "a/hello.txt")
        writer.put_bytes(b"0123456789", "b/digits.txt")
    path = local_path(writer.uri)
    assert path is not None
    return path


# What a reader does: the item's path from the dataset, then a plain read.
READ_ITEM = """
from reprodl.store import open_dataset
ds = open_dataset(args[0])
with open(ds.item_path(ds.identifier_of(args[1])), "rb") as fh:
    fh.read()
"""


@pytest.mark.parametrize("what", [*SPECIAL, "a directory"])
def test_an_item_that_is_not_a_regular_file_in_the_dataset_is_refused_by_name(base_dir: Path, what: str) -> None:
    dataset = make_small(base_dir)
    item = dataset / "data" / "a" / "hello.txt"
    if what == "a directory":
        item.unlink()
        item.mkdir()
    else:
        make_special(item, what)
    ds = open_dataset(str(dataset))
    with pytest.raises(DatasetFormatError, match=r"'a/hello\.txt' of dataset .*refused, nothing read"):
        ds.item_path(ds.identifier_of("a/hello.txt"))
    assert ds.item_path(ds.identifier_of("b/digits.txt")).endswith("digits.txt")  # the others are read


@pytest.mark.parametrize("what", SPECIAL)
def test_a_reader_given_the_item_path_of_a_special_item_is_refused_quickly(base_dir: Path, what: str) -> None:
    dataset = make_small(base_dir)
    make_special(dataset / "data" / "a" / "hello.txt", what)
    out = bounded_call(READ_ITEM, str(dataset), "a/hello.txt", timeout=30)
    assert out.startswith("DatasetFormatError") and "'a/hello.txt'" in out, out


def test_an_item_under_a_directory_linked_out_of_the_dataset_is_refused(base_dir: Path, tmp_path: Path) -> None:
    dataset = make_small(base_dir)
    (dataset / "data" / "a").rename(tmp_path / "outside")
    (dataset / "data" / "a").symlink_to(tmp_path / "outside", target_is_directory=True)
    ds = open_dataset(str(dataset))
    with pytest.raises(DatasetFormatError, match=r"'a/hello\.txt' .*outside the dataset.*refused, nothing read"):
        ds.item_path(ds.identifier_of("a/hello.txt"))


def test_a_link_to_another_item_of_the_dataset_and_a_missing_item_keep_their_paths(base_dir: Path) -> None:
    dataset = make_small(base_dir)
    item = dataset / "data" / "b" / "digits.txt"
    item.unlink()
    item.symlink_to(os.path.join("..", "a", "hello.txt"))
    (dataset / "data" / "a" / "hello.txt").rename(dataset / "data" / "a" / "gone.txt")
    ds = open_dataset(str(dataset))
    assert ds.item_path(ds.identifier_of("b/digits.txt")) == str(item)
    assert ds.item_path(ds.identifier_of("a/hello.txt")).endswith("hello.txt")  # its reader says it is missing


@pytest.mark.parametrize("what", SPECIAL[:2])
def test_verify_reports_a_special_item_instead_of_refusing_the_dataset(base_dir: Path, what: str) -> None:
    dataset = make_small(base_dir)
    make_special(dataset / "data" / "a" / "hello.txt", what)
    report = open_dataset(str(dataset)).verify(deep=True)
    assert report.altered == ["a/hello.txt"], report.problems()
