"""Item relpaths never reach outside a dataset: refused on open, on copy and on write.

A dataset's manifest comes from wherever its URI points, and its relpaths become paths on
this machine (the item path map, a copy's destination, the remote-item cache). Each test
builds a real dataset, then edits its ``.dtool/manifest.json`` as an attacker would. The
datasets sit two directories below ``tmp_path`` so that, were a check missing, even
``../../evil`` would land inside ``tmp_path``, where the snapshots would show it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import dtoolcore.utils
import pytest
from conftest import snapshot
from remote_servers import *  # noqa: F403 - the http server fixtures
from remote_servers import HTTPServer

from reprodl.errors import DatasetFormatError, InvalidNameError
from reprodl.store import copy_dataset, create_dataset, local_path, normalise_uri, open_dataset

# relpath -> what the refusal says about it
UNSAFE = {
    "../../evil": "'..' segment",
    "a/../../../evil": "'..' segment",
    "..": "'..' segment",
    "a\\..\\..\\evil": "backslash",
    "a/evil\x00.txt": "NUL",
    "": "empty",
}


@pytest.fixture
def inner(tmp_path: Path) -> Path:
    path = tmp_path / "inner" / "datasets"
    path.mkdir(parents=True)
    return path


def make_small(base: Path, name: str = "small") -> Path:
    with create_dataset(str(base), name, readme="name: small\n") as writer:
        writer.put_bytes(b"hello world\n", "a/hello.txt")
        writer.put_bytes(b"0123456789", "b/digits.txt")
    path = local_path(writer.uri)
    assert path is not None
    return path


def inject(dataset: Path, relpath: str, *, identifier: str | None = None) -> None:
    """Add an item called ``relpath`` to the dataset's manifest (and nothing to its data)."""
    manifest_path = dataset / ".dtool" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["items"][identifier or dtoolcore.utils.generate_identifier(relpath)] = {
        "relpath": relpath,
        "size_in_bytes": 5,
        "hash": "0" * 32,
        "utc_timestamp": 0.0,
    }
    manifest_path.write_text(json.dumps(manifest))


def unsafe_cases(tmp_path: Path) -> dict[str, str]:
    return {**UNSAFE, str(tmp_path / "abs-evil"): "absolute path"}


# --- opening ---------------------------------------------------------------------------
@pytest.mark.parametrize("case", [*UNSAFE, "absolute"])
def test_manifest_relpath_outside_the_dataset_is_refused_on_open(inner, tmp_path, case):
    relpath = str(tmp_path / "abs-evil") if case == "absolute" else case
    dataset = make_small(inner)
    inject(dataset, relpath)
    before = snapshot(tmp_path)
    with pytest.raises(DatasetFormatError) as info:
        open_dataset(dataset)
    message = str(info.value)
    assert repr(relpath) in message
    assert "'small'" in message and str(dataset) in message
    assert unsafe_cases(tmp_path)[relpath] in message
    assert snapshot(tmp_path) == before


def test_relpath_pointing_at_a_planted_file_cannot_read_it(inner, tmp_path):
    """A manifest naming ../../secret would otherwise hand out the planted file's path."""
    dataset = make_small(inner)
    (inner.parent / "secret").write_text("not part of any dataset\n")
    inject(dataset, "../../secret")
    with pytest.raises(DatasetFormatError, match=re.escape("'../../secret'")):
        open_dataset(str(dataset))


def test_manifest_identifier_that_is_a_path_is_refused(inner):
    dataset = make_small(inner)
    inject(dataset, "c/fine.txt", identifier="../../evil")
    with pytest.raises(DatasetFormatError, match=re.escape("identifier '../../evil'")):
        open_dataset(dataset)


def test_dotted_names_that_stay_inside_are_accepted(inner):
    with create_dataset(str(inner), "dots") as writer:
        for rel in ("a..b/c..d.txt", ".hidden", "x/.../y.txt", "deep/er/still.txt"):
            writer.put_bytes(rel.encode(), rel)
    ds = open_dataset(writer.uri)
    assert sorted(ds.relpath(i) for i in ds.identifiers) == [
        ".hidden",
        "a..b/c..d.txt",
        "deep/er/still.txt",
        "x/.../y.txt",
    ]
    assert ds.verify(deep=True).ok


# --- copying ---------------------------------------------------------------------------
def test_copy_of_a_tampered_dataset_writes_nothing(inner, tmp_path):
    dataset = make_small(inner)
    inject(dataset, "../../evil")
    dest = tmp_path / "inner" / "copies"
    dest.mkdir()
    before = snapshot(tmp_path)
    with pytest.raises(DatasetFormatError, match=re.escape("'../../evil'")):
        copy_dataset(str(dataset), str(dest))
    assert snapshot(tmp_path) == before
    assert not list(tmp_path.rglob("evil"))


# --- writing ---------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["put_bytes", "put_item", "item_file"])
@pytest.mark.parametrize("case", [*UNSAFE, "absolute"])
def test_writer_refuses_a_relpath_outside_the_dataset(inner, tmp_path, how, case):
    relpath = str(tmp_path / "abs-evil") if case == "absolute" else case
    source = tmp_path / "source.txt"
    source.write_bytes(b"evil")
    before = snapshot(tmp_path)
    with pytest.raises(InvalidNameError, match=re.escape(repr(relpath))):
        with create_dataset(str(inner), "written") as writer:
            if how == "put_bytes":
                writer.put_bytes(b"evil", relpath)
            elif how == "put_item":
                writer.put_item(source, relpath)
            else:
                with writer.item_file(relpath) as path:
                    path.write_bytes(b"evil")
    assert snapshot(tmp_path) == before  # no dataset, no staging, nothing outside


# --- remote ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def http_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Served instead of remote_servers' datasets: one dataset whose manifest was edited."""
    root = tmp_path_factory.mktemp("served") / "inner" / "datasets"
    root.mkdir(parents=True)
    inject(make_small(root, "tampered"), "../../evil")
    inject(make_small(root, "bad-identifier"), "c/fine.txt", identifier="..")
    return root


@pytest.mark.parametrize("name, what", [("tampered", "relpath '../../evil'"), ("bad-identifier", "identifier '..'")])
def test_served_tampered_manifest_is_refused_before_anything_is_cached(
    http_server: HTTPServer, dtool_cache, tmp_path, name, what
):
    before = snapshot(tmp_path)
    with pytest.raises(DatasetFormatError, match=re.escape(what)):
        open_dataset(http_server.uri(name))
    assert snapshot(tmp_path) == before
    assert http_server.item_gets(name) == 0


# --- names that become paths -----------------------------------------------------------
@pytest.mark.parametrize("field, value", [("name", "../../evil"), ("uuid", "../evil")])
def test_admin_metadata_name_or_uuid_that_is_a_path_is_refused(inner, field, value):
    """The name becomes a copy's directory, the UUID the remote-item cache's."""
    dataset = make_small(inner)
    admin_path = dataset / ".dtool" / "dtool"
    admin = json.loads(admin_path.read_text())
    admin[field] = value
    admin_path.write_text(json.dumps(admin))
    with pytest.raises(DatasetFormatError, match=f"unusable {field}.*plain file name"):
        open_dataset(dataset)


def test_copy_refuses_an_overlay_name_that_is_a_path(inner, tmp_path):
    """A server lists overlay names as it likes; a copy must not write one as a path.

    A local dataset cannot hold such a name (it is a file name), so the listing a remote
    server would send is put in the opened dataset's cache of names.
    """
    from reprodl.store.transfer import _copy_to

    ds = open_dataset(make_small(inner))
    ds._names["overlays"] = ["../../../evil"]
    dest = tmp_path / "inner" / "copies"
    dest.mkdir()
    before = snapshot(tmp_path)
    with pytest.raises(DatasetFormatError, match=re.escape("overlay named '../../../evil'")):
        _copy_to(ds, normalise_uri(str(dest)))
    assert snapshot(tmp_path) == before  # the partial copy was removed
    assert not list(tmp_path.rglob("evil*"))
