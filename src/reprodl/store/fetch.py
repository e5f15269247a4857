"""Fetching a remote dataset's items (http(s)://, s3://) once into dtool's cache.

:class:`_RemoteItems` is the part of :class:`~reprodl.store.dataset.StoredDataSet` that
downloads: items are cached under the dataset's UUID, written to a temporary file and
renamed, fetched in parallel where many are wanted; a server that lacks an item answers
:class:`_ItemMissingError` (verify reports the item as missing). Every request has a
timeout, and no download takes more bytes than the manifest records for the item
(:class:`_ItemResizedError`: verify reports the item as resized).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import threading
from typing import Any

from reprodl.errors import StorageError
from reprodl.store.hashing import _HASH_CHUNK
from reprodl.store.http import http_timeout
from reprodl.store.remote_errors import _error_code, _ItemMissingError, _remote_error


class _RemoteItems:
    """Item downloads for a remote dataset; mixed into StoredDataSet, whose state it uses."""

    uri: str
    _ds: Any  # the dtoolcore DataSet
    _items: dict[str, dict[str, Any]]  # the manifest's items
    _paths: dict[str, str]  # identifier -> local path, filled as items are fetched
    _lock: threading.Lock
    _scheme: str
    _cache_dir: str | None

    def _fetch_many(
        self, identifiers: list[str], *, refresh: bool, resized: set[str] | None = None
    ) -> dict[str, str | None]:
        """Fetch remote items in parallel: identifier -> cached path, None where missing.

        With ``refresh`` every item is downloaded again. An unreachable server is raised.
        Items the server sends larger than their manifest size are None, and added to
        ``resized`` when given (raised otherwise).
        """

        def one(idn: str) -> tuple[str, str | None]:
            try:
                path = self._fetch(idn, refresh=refresh)
            except _ItemMissingError:
                return idn, None
            except _ItemResizedError:
                if resized is None:
                    raise
                with self._lock:
                    resized.add(idn)
                return idn, None
            with self._lock:
                self._paths[idn] = path
            return idn, path

        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            return dict(pool.map(one, identifiers))

    def _fetch(self, identifier: str, *, refresh: bool = False) -> str:
        """Download a remote item into the cache once; a cached copy of the right size is reused."""
        props = self._items[identifier]
        assert self._cache_dir is not None  # only remote datasets get here
        dest = os.path.join(self._cache_dir, identifier + os.path.splitext(props["relpath"])[1])
        if not refresh and os.path.isfile(dest) and os.path.getsize(dest) == props["size_in_bytes"]:
            return dest
        try:
            os.makedirs(self._cache_dir, exist_ok=True)
        except OSError as exc:
            raise StorageError(
                f"cannot create the cache directory {self._cache_dir}: {exc}. Set "
                "DTOOL_CACHE_DIRECTORY to a writable directory"
            ) from exc
        tmp = f"{dest}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            if self._scheme == "s3":
                self._download_s3(identifier, tmp)
            else:
                self._download_http(identifier, tmp)
            os.replace(tmp, dest)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return dest

    def _missing_item(self, identifier: str, where: str) -> StorageError:
        relpath = self._items[identifier]["relpath"]
        return _ItemMissingError(
            f"item {relpath!r} of {self.uri} is missing on the server "
            f"({where}): the remote copy is incomplete; copy the dataset there again"
        )

    def _download_http(self, identifier: str, dest: str) -> None:
        import requests

        url = self._ds._storage_broker.http_manifest["item_urls"][identifier]
        relpath = self._items[identifier]["relpath"]
        expected = self._items[identifier].get("size_in_bytes")
        try:
            with requests.get(url, stream=True, timeout=http_timeout()) as resp:
                if resp.status_code == 404:
                    raise self._missing_item(identifier, f"HTTP 404 for {url}")
                if resp.status_code != 200:
                    raise StorageError(
                        f"HTTP {resp.status_code} fetching item {relpath!r} from {url}: check the server"
                    )
                _write_capped(resp, dest, expected, what=f"item {relpath!r} of {self.uri} ({url})")
        except requests.RequestException as exc:
            raise _remote_error(self.uri, exc) from exc

    def _download_s3(self, identifier: str, dest: str) -> None:
        broker = self._ds._storage_broker
        key = broker.data_key_prefix + identifier
        try:
            # The client, unlike boto3 resources, is thread-safe (prefetch uses threads);
            # dtool-s3's get_item_abspath also costs an extra GET per item.
            broker.s3client.download_file(broker.bucket, key, dest)
        except Exception as exc:  # botocore errors are not typed here
            if _error_code(exc) in ("404", "NoSuchKey"):
                raise self._missing_item(identifier, f"no key {key!r}") from exc
            raise _remote_error(self.uri, exc) from exc


class _ItemResizedError(StorageError):
    """A remote item larger than its manifest says (the download was stopped)."""


def _write_capped(resp: Any, dest: str, expected: Any, *, what: str) -> None:
    """Stream a response into ``dest``, refusing more bytes than the manifest records.

    The manifest says each item's size, so a server that sends more is serving something
    else (or trying to fill the disk): the download stops there.
    """
    limit = expected if isinstance(expected, int) and not isinstance(expected, bool) and expected >= 0 else None
    if limit is None:
        raise StorageError(
            f"{what}: the manifest records no valid size_in_bytes ({expected!r}), "
            "so it is not downloaded; check that the URI points at a dataset you trust"
        )
    written = 0
    with open(dest, "wb") as fh:
        for chunk in resp.iter_content(_HASH_CHUNK):
            written += len(chunk)
            if written > limit:
                raise _ItemResizedError(
                    f"{what}: the server sent more than the {limit:,} bytes the manifest "
                    "records; the download was stopped. Check the server"
                )
            fh.write(chunk)
