"""Reading a dataset's manifest safely: every relpath and identifier checked, a large manifest
indexed; metadata writes made atomic."""

from __future__ import annotations

import os
import re
import stat
from typing import Any

from reprodl.errors import (
    DatasetFormatError,
)
from reprodl.store import staging
from reprodl.store.brokers import _cache_root
from reprodl.store.manifest import ItemTable, index_path, read_index, write_index
from reprodl.store.uris import (
    file_name_problem,
    relpath_problem,
)


def _check_safe(uri: str, dataset: Any, items: Any) -> None:
    """Refuse a dataset whose manifest or admin metadata could name a path outside it.

    Relpaths become paths under the dataset (and under a copy's destination); identifiers,
    the UUID and the name become file or directory names (the remote-item cache, a copy).
    All come from whoever wrote the dataset, which for a URI may be anyone.
    """
    what = f"dataset {dataset.name!r} at {uri}"
    for field in ("name", "uuid"):
        problem = file_name_problem(getattr(dataset, field))
        if problem is not None:
            raise DatasetFormatError(
                f"{what} has an unusable {field} in its admin metadata: {problem}. It is "
                f"refused: dtool never writes such a {field}; check that the URI points at "
                "a dataset you trust"
            )
    if not isinstance(items, dict):
        raise DatasetFormatError(f"{what} has a manifest whose 'items' is not a mapping")
    if _all_safe(items):
        return
    for idn, props in items.items():
        relpath = props.get("relpath") if isinstance(props, dict) else None
        problem = relpath_problem(relpath)
        if problem is not None:
            raise DatasetFormatError(
                f"{what} has an unsafe item relpath {relpath!r} in its manifest: {problem}. "
                "Its items would be read or written outside the dataset, so it is refused; "
                "recreate the dataset from its source files"
            )
        problem = file_name_problem(idn)
        if problem is not None:
            raise DatasetFormatError(
                f"{what} has an unsafe item identifier {idn!r} in its manifest: {problem}. "
                "It is refused; recreate the dataset from its source files"
            )


def _item_file_problem(path: str, root: str, inside: set[str]) -> str | None:
    """Why the local item at ``path`` is refused (None when it is not), looked at without opening it:
    it must be a regular file inside the data directory ``root`` (resolved).

    A dataset handed over as a directory may hold, in place of an item, a named pipe (opening it
    waits for ever), a link to ``/dev/zero`` (read for ever) or a link, or a directory linked, to a
    file outside the dataset. A link to another file of the dataset is kept; a missing item is left
    to its reader (``verify`` names it). ``inside`` holds the directories already found inside
    ``root``: one ``lstat`` per item, one ``realpath`` per directory.
    """
    parent = os.path.dirname(path)
    if parent not in inside:
        if not _is_inside(os.path.realpath(parent), root):
            return f"lies under a link to {os.path.realpath(parent)}, {_OUTSIDE}"
        inside.add(parent)
    try:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            if not _is_inside(real := os.path.realpath(path), root):
                return f"is a link to {real}, {_OUTSIDE}"
            st = os.stat(path)
    except OSError:  # missing (or a link to itself): its reader gets the same error, at once
        return None
    if not stat.S_ISREG(st.st_mode):
        return (
            "is not a regular file (a device, a pipe or a directory): refused, nothing read. "
            "dtool writes every item as a regular file: use an intact copy of the dataset"
        )
    return None


_OUTSIDE = (
    "outside the dataset, not a regular file in it: refused, nothing read. dtool writes every item "
    "as a regular file inside its dataset: use an intact copy of the dataset"
)


def _is_inside(real: str, root: str) -> bool:
    return real == root or real.startswith(root + os.sep)


def _check_entries(uri: str, dataset: Any, items: dict[str, Any]) -> None:
    """Refuse a manifest entry whose size or hash is not what dtool writes (a whole number of
    bytes, a string): sums, size checks and digests would fail on it later with a TypeError."""
    for props in items.values():
        size, md5 = props.get("size_in_bytes"), props.get("hash")
        if type(size) is not int or size < 0 or not isinstance(md5, str):
            field, value = ("size_in_bytes", size) if type(size) is not int or size < 0 else ("hash", md5)
            raise DatasetFormatError(
                f"dataset {dataset.name!r} at {uri} has an item {props.get('relpath')!r} whose manifest "
                f"{field} is {value!r}, not {'a whole number >= 0' if field == 'size_in_bytes' else 'a string'}: "
                "dtool never writes that, so the manifest was edited or damaged; use an intact copy, or "
                "recreate the dataset from its source files"
            )


# A '..' segment, a leading '/', an empty relpath: checked over all relpaths joined by "\n".
_UNSAFE_JOINED = re.compile(r"(?:^|/)\.\.(?:/|$)|^/|^$", re.MULTILINE)
_UNSAFE_NAME = re.compile(r"^\.{0,2}$|/", re.MULTILINE)


def _all_safe(items: dict[str, Any]) -> bool:
    """Whether every relpath and identifier is safe, checked over them all at once (a million
    per-item checks take seconds). False means "check item by item", which names the culprit."""
    if os.sep != "/" or not items:
        return False
    try:
        relpaths = [props["relpath"] for props in items.values()]
        text, names = "\n".join(relpaths), "\n".join(items)
    except (TypeError, KeyError):
        return False
    n = len(items) - 1
    return (
        text.count("\n") == n
        and names.count("\n") == n
        and not any(c in text or c in names for c in "\0\\")
        and _UNSAFE_JOINED.search(text) is None
        and _UNSAFE_NAME.search(names) is None
    )


def _read_items(uri: str, dataset: Any, data_dir: str | None) -> tuple[Any, str]:
    """The manifest's items (an :class:`ItemTable` where they are regular) and hash function.

    A large local manifest is read from its index in the cache when there is one, and gets
    one otherwise (see :mod:`reprodl.store.manifest`); every relpath and identifier of a
    manifest read from JSON is checked (:func:`_check_safe`).
    """
    index = None
    if data_dir is not None:
        manifest_file = os.path.join(os.path.dirname(data_dir), ".dtool", "manifest.json")
        index = index_path(_cache_root(), dataset.uuid, manifest_file)
        found = read_index(index) if index else None
        if found is not None:
            return found
    manifest = dataset._manifest
    dataset._manifest_cache = None  # dtoolcore's copy of it is not kept beside ours
    items = manifest["items"]
    _check_safe(uri, dataset, items)
    hash_function = manifest.get("hash_function", "md5sum_hexdigest")
    table = ItemTable.from_items(items)
    if table is None:
        _check_entries(uri, dataset, items)
        return items, hash_function
    if index:
        write_index(index, table, hash_function)
    return table, hash_function


def _make_writes_atomic(broker: Any) -> None:
    """Make a disk broker write metadata (annotations, overlays, README) atomically.

    dtoolcore's DiskStorageBroker truncates a file and writes it in place, so a full disk
    or a killed process leaves a cut-short JSON that breaks every later read. Here each
    write goes to a temporary file in the dataset's ``.dtool`` directory (not in
    ``annotations/`` or ``overlays/``, whose every file dtool lists as a name) and replaces
    the file in one rename.
    """

    tmp_dir = os.path.dirname(broker.get_admin_metadata_key())

    def put_text(key: str, text: str) -> None:
        staging.atomic_write_text(key, text, tmp_dir=tmp_dir)  # looked up per call: a test may replace it

    broker.put_text = put_text
