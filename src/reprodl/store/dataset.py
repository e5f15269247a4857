"""A frozen dataset opened by URI: fast item access, metadata read once, verification.

:func:`open_dataset` gives a :class:`StoredDataSet`. Its manifest is read once and every
item relpath in it checked, so no item can name a path outside the dataset; item paths
come from a map built once for local datasets (dtoolcore's ``item_content_abspath``
re-reads the manifest on every call); remote items are fetched once into dtool's cache.

:func:`~reprodl.store.opening.open_dataset` (:mod:`.opening`) opens one; the manifest is read
and checked by :mod:`._items`; the integrity checks (manifest digest, ``verify``) are in
:mod:`.verification`, the remote item downloads in :mod:`.fetch`.

Example:
    >>> from reprodl.store import open_dataset
    >>> ds = open_dataset("/data/digits")            # doctest: +SKIP
    >>> path = ds.item_path(ds.identifiers[0])      # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote, urlparse

from reprodl import keys
from reprodl.errors import (
    DamagedMetadataError,
    DatasetFormatError,
    MetadataError,
    ReprodlError,
    StorageError,
)
from reprodl.parsing import check_size, load_yaml
from reprodl.store._items import _check_safe, _item_file_problem, _make_writes_atomic, _read_items
from reprodl.store.brokers import _cache_root
from reprodl.store.fetch import FETCH_WORKERS, FetchReport
from reprodl.store.hashing import Progress
from reprodl.store.manifest import ItemTable
from reprodl.store.remote_errors import _error_code, _remote_error
from reprodl.store.uris import (
    item_identifier,
)
from reprodl.store.verification import _Integrity

# What dtoolcore's json.load raises for a hostile metadata file (deep nesting, bad JSON or UTF-8).
_BAD_JSON = (RecursionError, json.JSONDecodeError, UnicodeDecodeError)


class StoredDataSet(_Integrity):
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
        self._data_root = os.path.realpath(data_dir) if data_dir else ""  # what item paths must stay inside
        self._inside: set[str] = set()  # item directories found inside it
        self._checked: dict[str, str] = {}  # local items looked at once (a loader reads each every epoch)
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
        """Local path of an item's content, fetching a remote item once.

        Raises:
            DatasetFormatError: the local item is not a regular file inside the dataset (a named
                pipe, a device, a directory, a link out of the dataset); it is not opened.
        """
        if self._data_dir is not None:
            local = self._checked.get(identifier)
            if local is not None:
                return local
            local = self._local_path(identifier)
            problem = _item_file_problem(local, self._data_root, self._inside)
            if problem is not None:
                raise DatasetFormatError(f"the item {self.relpath(identifier)!r} of dataset {self.uri} {problem}")
            self._checked[identifier] = local
            return local
        path = self._paths.get(identifier)
        if path is not None:
            return path
        if identifier not in self._items:
            raise KeyError(f"no item with identifier {identifier!r} in dataset {self.uri}")
        path = self._fetch(identifier)
        with self._lock:
            self._paths[identifier] = path
        return path

    def _local_path(self, identifier: str) -> str:
        """Where a local item's content is, unchecked (``verify`` reports what is there)."""
        try:
            relpath = self.relpath(identifier)
        except KeyError:
            raise KeyError(f"no item with identifier {identifier!r} in dataset {self.uri}") from None
        return os.path.join(self._data_dir or "", *relpath.split("/"))

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
