"""A dataset's integrity: its manifest digest, ``verify`` against the manifest and what it found
(:class:`VerifyReport`)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import stat
from typing import Any

from reprodl.errors import (
    StorageError,
)
from reprodl.store.fetch import _RemoteItems, bounded_map
from reprodl.store.hashing import Progress, canonical_json, file_md5
from reprodl.store.manifest import ItemTable


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


class _Integrity(_RemoteItems):
    """The integrity checks of :class:`~reprodl.store.dataset.StoredDataSet` (mixed into it, whose
    state and item access they use): its manifest digest, verification, and what its manifest lists."""

    _data_dir: str | None
    _manifest_digest: str | None

    @property
    def is_local(self) -> bool:
        raise NotImplementedError  # StoredDataSet says

    @property
    def hash_function(self) -> str:
        raise NotImplementedError  # StoredDataSet says

    @property
    def identifiers(self) -> list[str]:
        raise NotImplementedError  # StoredDataSet says

    def item_path(self, identifier: str) -> str:
        raise NotImplementedError  # StoredDataSet says

    def _local_path(self, identifier: str) -> str:
        raise NotImplementedError  # StoredDataSet says

    def relpath(self, identifier: str) -> str:
        raise NotImplementedError  # StoredDataSet says

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
                st = os.stat(self._local_path(idn))
            except FileNotFoundError:
                report.missing.append(props["relpath"])
                continue
            if not stat.S_ISREG(st.st_mode):  # /dev/zero is hashed for ever, a named pipe waits for ever
                report.altered.append(props["relpath"])
            elif st.st_size != props["size_in_bytes"]:
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
            path = self._local_path(idn)
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
            path, rel = self._local_path(idn), self.relpath(idn)
            if os.path.islink(path) or os.path.realpath(path) != os.path.join(root, *rel.split("/")):
                linked.append(rel)
        return sorted(linked)

    def total_size(self) -> int:
        """Sum of the items' sizes in bytes, from the manifest."""
        if isinstance(self._items, ItemTable):
            return sum(self._items.sizes)
        return sum(p["size_in_bytes"] for p in self._items.values())
