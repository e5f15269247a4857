"""A frozen dataset opened by URI: fast item access, metadata read once, verification.

:func:`open_dataset` gives a :class:`StoredDataSet`. Its manifest is read once and every
item relpath in it checked, so no item can name a path outside the dataset; item paths
come from a map built once for local datasets (dtoolcore's ``item_content_abspath``
re-reads the manifest on every call); remote items are fetched once into dtool's cache.

Example:
    >>> ds = open_dataset("/data/digits")            # doctest: +SKIP
    >>> path = ds.item_path(ds.identifiers[0])      # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from reprodl import keys
from reprodl.errors import (
    DamagedMetadataError,
    DatasetFormatError,
    DatasetNotFoundError,
    DatasetNotFrozenError,
    InvalidURIError,
    MetadataError,
    ReprodlError,
    StorageError,
)
from reprodl.parsing import check_size, load_yaml
from reprodl.store.brokers import _cache_root, _check_broker, frozen_dataset, storage_broker
from reprodl.store.fetch import FETCH_WORKERS, FetchReport, _RemoteItems, bounded_map
from reprodl.store.hashing import Progress, canonical_json, file_md5
from reprodl.store.manifest import ItemTable, index_path, read_index, write_index
from reprodl.store.remote_errors import _error_code, _remote_error
from reprodl.store.uris import (
    file_name_problem,
    item_identifier,
    local_path,
    normalise_uri,
    relpath_problem,
)

# What dtoolcore's json.load raises for a hostile metadata file (deep nesting, bad JSON or UTF-8).
_BAD_JSON = (RecursionError, json.JSONDecodeError, UnicodeDecodeError)


@dataclasses.dataclass
class VerifyReport:
    """What :meth:`StoredDataSet.verify` found."""

    uri: str
    deep: bool
    n_items: int
    missing: list[str] = dataclasses.field(default_factory=list)
    added: list[str] = dataclasses.field(default_factory=list)
    altered: list[str] = dataclasses.field(default_factory=list)
    resized: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.added or self.altered or self.resized)

    def problems(self) -> list[str]:
        return (
            [f"missing: {p}" for p in self.missing]
            + [f"added: {p}" for p in self.added]
            + [f"size changed: {p}" for p in self.resized]
            + [f"content altered: {p}" for p in self.altered]
        )

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "ok": self.ok}


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


class StoredDataSet(_RemoteItems):
    """A frozen dtool dataset with fast item access.

    Use :func:`open_dataset` to get one. The manifest is read once; item paths come from
    a map built once for local datasets, and remote items are fetched once into dtool's
    cache and remembered.
    """

    def __init__(self, uri: str, dataset: Any) -> None:
        self.uri = uri
        self._ds = dataset
        self._scheme = urlparse(uri).scheme
        data_dir = None
        if self._scheme == "file":
            data_dir = os.path.join(unquote(urlparse(uri).path), "data")
        self._data_dir = data_dir
        _check_safe(uri, dataset, {})  # the name and UUID, before the UUID names an index file
        self._items, self._hash_function = _read_items(uri, dataset, data_dir)
        self._identifiers: list[str] | None = None
        self._paths: dict[str, str] = {}  # remote items fetched so far (local paths are computed)
        self._lock = threading.Lock()
        self._annotations: dict[str, Any] = {}
        self._overlays: dict[str, dict[str, Any]] = {}
        self._names: dict[str, list[str]] = {}  # "annotations"/"overlays" -> names, listed once
        self._readme: str | None = None
        self._manifest_digest: str | None = None
        if data_dir is not None:
            _make_writes_atomic(dataset._storage_broker)
        # Remote items are cached under the dataset's UUID (as dtool-s3 does), so two
        # servers that both call their dataset "digits" never share cached files.
        self._cache_dir = None if data_dir else os.path.join(_cache_root(), dataset.uuid)

    # --- identity -------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self._ds.name

    @property
    def uuid(self) -> str:
        return self._ds.uuid

    @property
    def admin_metadata(self) -> dict[str, Any]:
        return dict(self._ds._admin_metadata)

    @property
    def is_local(self) -> bool:
        return self._scheme == "file"

    @property
    def hash_function(self) -> str:
        return self._hash_function

    # --- items ----------------------------------------------------------------------
    @property
    def identifiers(self) -> list[str]:
        """Item identifiers, sorted by relpath (a stable order); sorted once."""
        if self._identifiers is None:
            items = self._items
            self._identifiers = (
                list(items.ids) if isinstance(items, ItemTable) else sorted(items, key=lambda i: items[i]["relpath"])
            )
        return list(self._identifiers)

    def relpath(self, identifier: str) -> str:
        """The item's path inside the dataset ('/'-separated)."""
        if isinstance(self._items, ItemTable):
            return self._items.relpath(identifier)
        return self._items[identifier]["relpath"]

    def item_properties(self, identifier: str) -> dict[str, Any]:
        """The manifest entry of an item (relpath, size_in_bytes, hash, utc_timestamp)."""
        return dict(self._items[identifier])

    def identifier_of(self, relpath: str) -> str:
        """The identifier of the item at ``relpath`` (KeyError when there is none)."""
        idn = item_identifier(relpath)
        if idn not in self._items:
            raise KeyError(f"no item with relpath {relpath!r} in dataset {self.uri}")
        return idn

    def __len__(self) -> int:
        return len(self._items)

    def item_path(self, identifier: str) -> str:
        """Local path of an item's content, fetching a remote item once."""
        if self._data_dir is not None:
            try:
                relpath = self.relpath(identifier)
            except KeyError:
                raise KeyError(f"no item with identifier {identifier!r} in dataset {self.uri}") from None
            return os.path.join(self._data_dir, *relpath.split("/"))
        path = self._paths.get(identifier)
        if path is not None:
            return path
        if identifier not in self._items:
            raise KeyError(f"no item with identifier {identifier!r} in dataset {self.uri}")
        path = self._fetch(identifier)
        with self._lock:
            self._paths[identifier] = path
        return path

    def item_paths(self, identifiers: list[str]) -> list[str]:
        """Local paths of these items' content; remote items not yet fetched are fetched in
        parallel (a bounded pool), so a batch of them costs about one round trip, not one each."""
        if not self.is_local:
            for idn in identifiers:
                if idn not in self._items:
                    raise KeyError(f"no item with identifier {idn!r} in dataset {self.uri}")
            self._fetch_missing(identifiers)
        return [self.item_path(i) for i in identifiers]

    def prefetch(self, *, workers: int = FETCH_WORKERS, progress: Progress | None = None) -> FetchReport:
        """Fetch every remote item into dtool's cache, ``workers`` downloads at a time.

        Items already cached and matching the manifest are kept (an interrupted fetch
        resumes); a damaged cached copy is fetched again. ``progress`` is called with bytes
        done. Local datasets need nothing fetched.

        Raises:
            StorageError: the server could not be reached, or an item is missing on it, has
                another size or other content than the manifest records (nothing of that
                item is cached).
        """
        if self.is_local:
            if progress:
                progress(self.total_size())
            return FetchReport(self.uri, len(self._items), cached=len(self._items))
        return self._prefetch(workers=workers, progress=progress)

    # --- metadata -------------------------------------------------------------------
    def get_readme_content(self) -> str:
        """The README text (read once)."""
        if self._readme is None:
            try:
                text = self._ds.get_readme_content() or ""
            except Exception as exc:  # broker errors are not typed
                raise self._read_error(exc, "the README") from exc
            check_size(text, keys.MAX_README_BYTES, what=f"the README of {self.uri}", error=DatasetFormatError)
            self._readme = text
        return self._readme

    def _read_error(self, exc: BaseException, what: str, key: str | None = None) -> ReprodlError:
        """The error for reading ``what`` failing: a damaged file is named, not "could not reach"."""
        where = key if key and self.is_local else what
        if isinstance(exc, ValueError):  # JSONDecodeError, UnicodeDecodeError
            return DamagedMetadataError(
                f"{what} of dataset {self.uri} is damaged: {where} is not valid JSON "
                f"({type(exc).__name__}: {exc}). It was cut short (a full disk, a killed "
                "process) or edited: write it again (e.g. `reprodl dataset split --force` for "
                "a split) or restore it from a copy of the dataset"
            )
        if self.is_local:
            return StorageError(f"could not read {what} of dataset {self.uri} ({where}): {type(exc).__name__}: {exc}")
        code = _error_code(exc)
        if code in ("404", "410", "NoSuchKey"):  # the dataset is there (it was opened): one of its files is not
            return DatasetFormatError(
                f"{what} of dataset {self.uri} is missing on its server ({code}), although the dataset "
                "itself is there: it was published incompletely or a file was removed. Ask whoever serves "
                "it to publish it again (`dtool publish`), or use another copy"
            )
        return _remote_error(self.uri, exc)

    def readme(self) -> dict[str, Any]:
        """The README parsed as YAML ({} when empty).

        Raises:
            MetadataError: the README is not valid YAML, or not a mapping, naming the dataset.
        """
        fix = f"correct it (`dtool readme edit {self.uri}`)"
        what = f"the README.yml of dataset {self.name!r} ({self.uri})"
        try:
            data = load_yaml(self.get_readme_content(), what=what)
        except MetadataError as exc:
            raise MetadataError(f"{exc}; {fix}") from None
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise MetadataError(
                f"the README.yml of dataset {self.name!r} ({self.uri}) is a {type(data).__name__}, not a YAML "
                f"mapping (name: ..., description: ...); {fix}"
            )
        return data

    def _list_names(self, kind: str) -> list[str]:
        """Annotation or overlay names, listed once (a request for remote datasets)."""
        if kind not in self._names:
            broker = self._ds._storage_broker
            try:
                if self._scheme == "s3":
                    # dtool-s3 splits key names on every '.', which breaks dotted names
                    # such as dtoolAI's "dtoolAI.inputtype".
                    prefix = getattr(broker, f"{kind}_key_prefix")
                    pages = broker.s3client.get_paginator("list_objects_v2").paginate(
                        Bucket=broker.bucket, Prefix=prefix
                    )
                    names = [
                        obj["Key"][len(prefix) :].removesuffix(".json")
                        for page in pages
                        for obj in page.get("Contents", [])
                    ]
                elif kind == "annotations":
                    names = list(broker.list_annotation_names())
                else:
                    names = list(broker.list_overlay_names())
            except Exception as exc:  # broker errors are not typed
                raise self._read_error(exc, f"the list of {kind}") from exc
            self._names[kind] = sorted(names)
        return list(self._names[kind])

    def _get_metadata(self, kind: str, name: str) -> Any:
        broker = self._ds._storage_broker
        annotation = kind == "annotations"
        key = None
        if self.is_local:  # the file, to name it when it is damaged
            key = broker.get_annotation_key(name) if annotation else broker.get_overlay_key(name)
        try:
            return broker.get_annotation(name) if annotation else broker.get_overlay(name)
        except _BAD_JSON as exc:  # dtoolcore's json.load of a damaged or hostile file
            where = key if key else f"the {kind[:-1]}"
            raise DamagedMetadataError(
                f"the {kind[:-1]} {name!r} of {self.uri} is damaged: {where} is "
                + ("not JSON reprodl reads " if isinstance(exc, RecursionError) else "not valid JSON ")
                + f"({type(exc).__name__}: {str(exc)[:200]}). It was cut short (a full disk, a killed process) "
                "or edited: write it again or restore it from a copy of the dataset"
            ) from None
        except Exception as exc:
            raise self._read_error(exc, f"the {kind[:-1]} {name!r}", key) from exc

    def _get_cached(self, kind: str, cache: dict[str, Any], name: str, default: Any) -> Any:
        """An annotation or overlay, read once (``default`` when the dataset has none)."""
        if name in cache:
            return cache[name]
        if name not in self._list_names(kind):
            return default
        cache[name] = value = self._get_metadata(kind, name)
        return value

    def _remember(self, kind: str, cache: dict[str, Any], name: str, value: Any) -> None:
        """Keep a value just written, and list its name, so neither is read back."""
        cache[name] = value
        if name not in self._list_names(kind):
            self._names[kind] = sorted([*self._names[kind], name])

    def annotation_names(self) -> list[str]:
        """Names of the dataset's annotations (listed once)."""
        return self._list_names("annotations")

    def get_annotation(self, name: str, default: Any = None) -> Any:
        """The annotation ``name`` (read once), or ``default`` when there is none."""
        return self._get_cached("annotations", self._annotations, name, default)

    def put_annotation(self, name: str, value: Any) -> None:
        """Write an annotation (annotations stay writable after freezing), atomically on disk."""
        with self._writing(f"the annotation {name!r}"):
            self._ds.put_annotation(name, value)
        self._remember("annotations", self._annotations, name, value)

    @contextlib.contextmanager
    def _writing(self, what: str) -> Iterator[None]:
        """Turn a failed metadata write (a full disk, a read-only dataset) into a StorageError."""
        try:
            yield
        except ReprodlError:
            raise
        except OSError as exc:
            where = f" ({exc.filename})" if exc.filename else ""
            kept = " Its previous value is kept." if self.is_local else ""
            fix = (
                "free some space and run the command again"
                if exc.errno in (errno.ENOSPC, errno.EDQUOT)
                else "the dataset is read-only here: ask its owner, or copy it "
                "(`reprodl dataset copy`) and work on the copy"
            )
            raise StorageError(
                f"could not write {what} of dataset {self.name!r} ({self.uri}): "
                f"{exc.strerror or exc}{where}.{kept} To go on, {fix}"
            ) from exc

    def overlay_names(self) -> list[str]:
        """Names of the dataset's overlays (listed once)."""
        return self._list_names("overlays")

    def get_overlay(self, name: str, default: Any = None) -> Any:
        """The overlay ``name`` (identifier -> value, read once), or ``default``."""
        return self._get_cached("overlays", self._overlays, name, default)

    def put_overlay(self, name: str, values: dict[str, Any]) -> None:
        """Write an overlay: identifier -> value for every item (atomically on disk)."""
        with self._writing(f"the overlay {name!r}"):
            self._ds.put_overlay(name, values)
        self._remember("overlays", self._overlays, name, values)

    def tags(self) -> list[str]:
        """The dataset's dtool tags."""
        try:
            return sorted(self._ds.list_tags())
        except Exception as exc:
            raise self._read_error(exc, "the tags") from exc

    # --- integrity ------------------------------------------------------------------
    def manifest_digest(self) -> str:
        """sha256 over the manifest's (relpath, size, hash) triples: stable across copies.

        Computed once: the manifest is read once, when the dataset is opened.
        """
        if self._manifest_digest is None and isinstance(self._items, ItemTable):
            self._manifest_digest = self._items.manifest_digest(self.hash_function)
        if self._manifest_digest is None:
            entries = sorted((p["relpath"], p["size_in_bytes"], p["hash"]) for p in self._items.values())
            self._manifest_digest = (
                "sha256:"
                + hashlib.sha256(canonical_json({"hash_function": self.hash_function, "items": entries})).hexdigest()
            )
        return self._manifest_digest

    def verify(
        self,
        *,
        deep: bool = False,
        progress: Progress | None = None,
        identifiers: list[str] | None = None,
    ) -> VerifyReport:
        """Check items against the manifest.

        Quick: the item set and sizes, and for local datasets a re-hash of any item whose
        modification time differs from the manifest's (an edit that kept the size).
        Remote items are fetched into the cache first (once).
        Deep: every item re-hashed; remote items are downloaded afresh into the cache, so
        what is checked is the server's content (and a damaged cached copy is replaced).
        """
        idns = identifiers if identifiers is not None else list(self._items)
        report = VerifyReport(uri=self.uri, deep=deep, n_items=len(idns))
        if self.is_local and identifiers is None:
            report.added = self._unlisted_files()
        to_hash = self._fetch_and_size(idns, report, deep=deep, progress=progress)
        if to_hash:
            self._rehash(to_hash, report, progress)
        for lst in (report.missing, report.altered, report.resized):
            lst.sort()
        return report

    def _unlisted_files(self) -> list[str]:
        """The walk: relpaths of files in the data directory that the manifest does not list."""
        on_disk = set()
        base = self._data_dir or ""
        for dirpath, _dirs, files in os.walk(base):
            for fn in files:
                on_disk.add(os.path.relpath(os.path.join(dirpath, fn), base).replace(os.sep, "/"))
        items = self._items
        listed = set(items.relpaths) if isinstance(items, ItemTable) else {p["relpath"] for p in items.values()}
        return sorted(on_disk - listed)

    def _fetch_and_size(
        self, idns: list[str], report: VerifyReport, *, deep: bool, progress: Progress | None
    ) -> list[str]:
        """The fetch: each item's file (remote ones fetched, afresh when ``deep``) against its
        manifest. Missing, resized (and, for remote items, altered) items go into ``report``;
        returns the local items to re-hash (all when ``deep``, else those whose modification
        time changed)."""
        if not self.is_local:
            self._check_remote(idns, report, deep=deep, progress=progress)
            return []
        to_hash: list[str] = []
        for idn in idns:
            props = self._items[idn]
            try:
                st = os.stat(self.item_path(idn))
            except FileNotFoundError:
                report.missing.append(props["relpath"])
                continue
            if st.st_size != props["size_in_bytes"]:
                report.resized.append(props["relpath"])
            elif deep or ("utc_timestamp" in props and abs(st.st_mtime - float(props["utc_timestamp"])) > 1e-3):
                to_hash.append(idn)
            elif progress:
                progress(st.st_size)
        return to_hash

    def _check_remote(self, idns: list[str], report: VerifyReport, *, deep: bool, progress: Progress | None) -> None:
        """Remote items fetched (afresh when ``deep``): each is checked as it arrives (size and
        md5), and a cached copy is re-hashed unless stamped as verified (see :mod:`.fetch`)."""
        resized: set[str] = set()
        altered: set[str] = set()
        fetched = self._fetch_many(idns, refresh=deep, resized=resized, altered=altered, progress=progress)
        for idn in idns:
            rel = self._items[idn]["relpath"]
            if idn in resized:
                report.resized.append(rel)
            elif idn in altered:
                report.altered.append(rel)
            elif fetched[idn] is None:
                report.missing.append(rel)

    def _rehash(self, idns: list[str], report: VerifyReport, progress: Progress | None) -> None:
        """The re-hash: items whose md5 differs from the manifest's go into ``report.altered``."""
        if not self.hash_function.startswith("md5"):
            raise StorageError(
                f"dataset {self.uri} uses hash function {self.hash_function!r}; reprodl verifies md5 manifests only"
            )

        def check(idn: str) -> tuple[str, bool, int]:
            path = self.item_path(idn)
            return idn, file_md5(path) == self._items[idn]["hash"], os.path.getsize(path)

        workers = max(1, min(4, os.cpu_count() or 1))
        for idn, same, size in bounded_map(check, idns, workers=workers):
            if not same:
                report.altered.append(self.relpath(idn))
            if progress:
                progress(size)

    def manifest_entries(self) -> dict[str, dict[str, Any]]:
        """relpath -> {size_in_bytes, hash}: what a record keeps to name changed items later."""
        entries = (self._items[i] for i in self.identifiers)
        return {p["relpath"]: {"size_in_bytes": p["size_in_bytes"], "hash": p["hash"]} for p in entries}

    def symlinked_items(self) -> list[str]:
        """Relpaths of local items that are symlinks or lie under one inside the dataset.

        Their content is wherever the link points, not in the dataset: a copy would fetch
        it from outside. Remote datasets have none.
        """
        if self._data_dir is None:
            return []
        root = os.path.realpath(self._data_dir)
        linked = []
        for idn in self._items:
            path, rel = self.item_path(idn), self.relpath(idn)
            if os.path.islink(path) or os.path.realpath(path) != os.path.join(root, *rel.split("/")):
                linked.append(rel)
        return sorted(linked)

    def total_size(self) -> int:
        """Sum of the items' sizes in bytes, from the manifest."""
        if isinstance(self._items, ItemTable):
            return sum(self._items.sizes)
        return sum(p["size_in_bytes"] for p in self._items.values())


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
    from reprodl.store.staging import atomic_write_text

    tmp_dir = os.path.dirname(broker.get_admin_metadata_key())

    def put_text(key: str, text: str) -> None:
        atomic_write_text(key, text, tmp_dir=tmp_dir)

    broker.put_text = put_text


def open_dataset(uri: str | os.PathLike[str]) -> StoredDataSet:
    """Open the frozen dataset at ``uri`` (a path, file://, http(s):// or s3:// URI).

    Raises:
        InvalidURIError: unsupported scheme.
        DatasetNotFoundError: nothing at the URI.
        DatasetNotFrozenError: a proto dataset (creation never finished).
        StorageError: the server could not be reached.
    """
    full = normalise_uri(uri)
    path = local_path(full)
    _check_location(full, path)
    try:
        broker = storage_broker(full)
        admin = broker.get_admin_metadata()
    except Exception as exc:
        raise _open_error(exc, full, path, ".dtool/dtool") from exc
    if admin and not isinstance(admin, dict):
        raise DatasetFormatError(f"the dataset at {full} has admin metadata that is not a mapping")
    if not admin:
        raise DatasetNotFoundError(f"no dataset at {full}: it has no dtool admin metadata")
    if admin.get("type") != "dataset":
        raise DatasetNotFrozenError(
            f"{full} is a proto dataset, not a frozen dataset: its creation or copy did not "
            "finish, so it may hold only part of its items. Remove it and create or copy it "
            "again (freezing it would seal whatever part was written)"
        )
    try:
        return StoredDataSet(full, frozen_dataset(full, admin, broker))
    except ReprodlError:
        raise  # an unsafe manifest: already says what is wrong
    except Exception as exc:
        raise _open_error(exc, full, path, ".dtool/manifest.json") from exc


def _check_location(full: str, path: Path | None) -> None:
    """Refuse, before reading anything, a local path with no dataset, or an unusable remote URI."""
    if path is not None:
        if not path.exists():
            raise DatasetNotFoundError(f"no dataset at {full}: the path {path} does not exist")
        if not (path / ".dtool" / "dtool").is_file():
            raise DatasetNotFoundError(f"{full} is not a dtool dataset (no .dtool/dtool admin metadata in {path})")
        return
    _check_broker(full)
    parsed = urlparse(full)
    if parsed.scheme == "s3" and not parsed.path.strip("/"):
        raise InvalidURIError(
            f"{full} names a bucket, not a dataset: a dataset's URI is "
            f"s3://{parsed.netloc}/<uuid> (`dtool ls {full}` lists them)"
        )


def _open_error(exc: BaseException, full: str, path: Path | None, file: str) -> ReprodlError:
    """The error for reading ``file`` of the dataset at ``full`` failing while opening it."""
    if isinstance(exc, ReprodlError):  # a broker's own refusal (an http manifest without its fields)
        return exc
    if isinstance(exc, RecursionError):  # json.load of a hostile, deeply nested file
        return DamagedMetadataError(
            f"the dataset at {full} has metadata that is not JSON reprodl reads "
            f"({type(exc).__name__}: {str(exc)[:200]}); it is refused"
        )
    if isinstance(exc, ValueError):  # JSONDecodeError, UnicodeDecodeError
        where = path / file if path is not None else file
        return DamagedMetadataError(
            f"the dataset at {full} is damaged: {where} is not valid JSON "
            f"({type(exc).__name__}: {str(exc)[:200]}). Restore the dataset from a copy"
        )
    if path is None:
        return _remote_error(full, exc)
    return StorageError(f"could not read the dataset at {full} ({path / file}): {type(exc).__name__}: {exc}")


def exists(uri: str) -> bool:
    """Whether something is at ``uri``: a path that exists, or a remote frozen dataset that opens."""
    path = local_path(uri)
    if path is not None:
        return path.exists()
    try:
        open_dataset(uri)
    except (DatasetNotFoundError, DatasetNotFrozenError, StorageError):
        return False
    return True
