"""Fetching a remote dataset's items (http(s)://, s3://) once into dtool's cache.

:class:`_RemoteItems` is the part of :class:`~reprodl.store.dataset.StoredDataSet` that
downloads. Items are cached under the dataset's UUID (``DTOOL_CACHE_DIRECTORY``), fetched
in parallel by a bounded pool of threads where many are wanted, and streamed to disk in
chunks (memory stays bounded whatever an item's size): each download goes to a temporary
file, is checked against the manifest's size and md5 as it arrives, and only then renamed
into place, so a cut-off download (the server went down, the process was killed) leaves
nothing in the cache that is later trusted, and a server that sends other bytes than the
manifest records never gets them cached (:class:`_ItemAlteredError`).

A verified cached file gets the manifest's ``utc_timestamp`` as its modification time (the
"stamp"). A cached file whose size and stamp still match is used without re-reading it;
any other (edited, damaged, left by another tool) is re-hashed, and fetched again when its
md5 differs. That is the same check reprodl's quick verify makes on local items, so an
interrupted fetch resumes where it stopped and a damaged cached item is replaced.

Every request has a timeout, and no download takes more bytes than the manifest records
for the item (:class:`_ItemResizedError`: verify reports the item as resized); a server
that lacks an item answers :class:`_ItemMissingError` (verify reports it as missing).
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from reprodl.errors import StorageError
from reprodl.store.hashing import _HASH_CHUNK, Progress, file_md5
from reprodl.store.http import http_timeout
from reprodl.store.remote_errors import _error_code, _ItemMissingError, _remote_error

T = TypeVar("T")
R = TypeVar("R")

FETCH_WORKERS = 8  # concurrent downloads: enough to hide a server's latency, few enough to be polite


class _ItemResizedError(StorageError):
    """A remote item of another size than its manifest says (the download was stopped)."""


class _ItemAlteredError(StorageError):
    """A remote item whose bytes do not hash to its manifest's md5 (it was not cached)."""


@dataclasses.dataclass
class FetchReport:
    """What :meth:`StoredDataSet.prefetch` did: items downloaded now and found cached."""

    uri: str
    n_items: int
    fetched: int = 0
    cached: int = 0
    bytes_fetched: int = 0
    seconds: float = 0.0
    cache_dir: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _stamp_ns(props: dict[str, Any]) -> int | None:
    """The modification time (ns) a verified cached copy gets: the manifest's utc_timestamp."""
    ts = props.get("utc_timestamp")
    if isinstance(ts, (int, float)) and not isinstance(ts, bool) and 0 < ts < 1e11:
        return int(round(ts * 1e9))
    return None


def _is_stamped(mtime_ns: int, stamp: int | None) -> bool:
    # 2 ms of slack: some filesystems keep modification times in microseconds.
    return stamp is not None and abs(mtime_ns - stamp) < 2_000_000


class _RemoteItems:
    """Item downloads for a remote dataset; mixed into StoredDataSet, whose state it uses."""

    uri: str
    _ds: Any  # the dtoolcore DataSet
    _items: Any  # the manifest's items: identifier -> {relpath, size_in_bytes, hash, ...}
    _paths: dict[str, str]  # identifier -> local path, filled as items are fetched
    _lock: threading.Lock
    _scheme: str
    _cache_dir: str | None

    # --- the cache ----------------------------------------------------------------------
    def _cache_path(self, identifier: str) -> str:
        assert self._cache_dir is not None  # only remote datasets get here
        return os.path.join(self._cache_dir, identifier + os.path.splitext(self._items[identifier]["relpath"])[1])

    def _cached(self, identifier: str) -> str | None:
        """The cached copy when it matches the manifest (re-hashed unless stamped), else None."""
        props = self._items[identifier]
        dest = self._cache_path(identifier)
        try:
            st = os.stat(dest)
        except OSError:
            return None
        if st.st_size != props["size_in_bytes"]:
            return None
        stamp = _stamp_ns(props)
        if _is_stamped(st.st_mtime_ns, stamp):
            return dest
        try:
            if file_md5(dest) != props["hash"]:
                return None
            if stamp is not None:
                os.utime(dest, ns=(time.time_ns(), stamp))
        except OSError:
            return None
        return dest

    # --- fetching -----------------------------------------------------------------------
    def _fetch(self, identifier: str, *, refresh: bool = False, progress: Progress | None = None) -> str:
        """The item's cached path, downloading it unless a verified copy is cached."""
        if not refresh:
            cached = self._cached(identifier)
            if cached is not None:
                if progress:
                    progress(self._items[identifier]["size_in_bytes"])
                return cached
        return self._download(identifier, progress)

    def _download(self, identifier: str, progress: Progress | None) -> str:
        """Stream the item into a temporary file, check size and md5, stamp it, rename it."""
        assert self._cache_dir is not None
        props = self._items[identifier]
        dest = self._cache_path(identifier)
        try:
            os.makedirs(self._cache_dir, exist_ok=True)
        except OSError as exc:
            raise StorageError(
                f"cannot create the cache directory {self._cache_dir}: {exc}. Set "
                "DTOOL_CACHE_DIRECTORY to a writable directory"
            ) from exc
        tmp = f"{dest}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            download = self._download_s3 if self._scheme == "s3" else self._download_http
            md5 = download(identifier, tmp, progress)
            if md5 != props["hash"]:
                raise _ItemAlteredError(
                    f"item {props['relpath']!r} of {self.uri} as served does not match its manifest "
                    f"(md5 {md5}, manifest {props['hash']}); it was not cached. The remote copy is "
                    "damaged or was changed: copy the dataset there again"
                )
            stamp = _stamp_ns(props)
            if stamp is not None:
                os.utime(tmp, ns=(time.time_ns(), stamp))
            os.replace(tmp, dest)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return dest

    def _fetch_many(
        self,
        identifiers: list[str],
        *,
        refresh: bool,
        resized: set[str] | None = None,
        altered: set[str] | None = None,
        progress: Progress | None = None,
    ) -> dict[str, str | None]:
        """Fetch remote items in parallel: identifier -> cached path, None where missing.

        With ``refresh`` every item is downloaded again. An unreachable server is raised.
        Items the server sends with another size, or other bytes, than the manifest records
        are None, and added to ``resized`` or ``altered`` when given (raised otherwise).
        """
        bad = {_ItemResizedError: resized, _ItemAlteredError: altered}

        def one(idn: str) -> tuple[str, str | None]:
            try:
                path = self._fetch(idn, refresh=refresh, progress=progress)
            except _ItemMissingError:
                return idn, None
            except (_ItemResizedError, _ItemAlteredError) as exc:
                found = bad[type(exc)]
                if found is None:
                    raise
                with self._lock:
                    found.add(idn)
                return idn, None
            with self._lock:
                self._paths[idn] = path
            return idn, path

        return dict(_run_bounded(one, identifiers, workers=FETCH_WORKERS))

    def _prefetch(self, *, workers: int, progress: Progress | None) -> FetchReport:
        """Every item into the cache (see :meth:`StoredDataSet.prefetch`)."""
        report = FetchReport(self.uri, len(self._items), cache_dir=self._cache_dir)
        start = time.monotonic()

        def one(idn: str) -> tuple[bool, int]:
            size = self._items[idn]["size_in_bytes"]
            path = self._paths.get(idn) or self._cached(idn)
            fetched = path is None
            if path is None:
                path = self._download(idn, progress)
            elif progress:
                progress(size)
            self._remember_path(idn, path)
            return fetched, size

        for fetched, size in _run_bounded(one, list(self._items), workers=workers):
            report.fetched += fetched
            report.bytes_fetched += size if fetched else 0
        report.cached = report.n_items - report.fetched
        report.seconds = time.monotonic() - start
        return report

    def _fetch_missing(self, identifiers: Iterable[str], *, workers: int = FETCH_WORKERS) -> None:
        """Fetch (in parallel) those of ``identifiers`` not yet fetched by this handle; errors raise."""
        todo = [i for i in dict.fromkeys(identifiers) if i not in self._paths]
        if len(todo) == 1:
            self._remember_path(todo[0], self._fetch(todo[0]))
        elif todo:
            for idn, path in _run_bounded(lambda i: (i, self._fetch(i)), todo, workers=workers):
                self._remember_path(idn, path)

    def _remember_path(self, identifier: str, path: str) -> None:
        with self._lock:
            self._paths[identifier] = path

    # --- the two protocols --------------------------------------------------------------
    def _missing_item(self, identifier: str, where: str) -> StorageError:
        relpath = self._items[identifier]["relpath"]
        return _ItemMissingError(
            f"item {relpath!r} of {self.uri} is missing on the server "
            f"({where}): the remote copy is incomplete; copy the dataset there again"
        )

    def _cut_off(self, identifier: str, exc: BaseException) -> StorageError:
        relpath = self._items[identifier]["relpath"]
        return StorageError(
            f"the download of item {relpath!r} of {self.uri} failed part-way ({type(exc).__name__}: "
            f"{exc}); nothing of it was cached. Check the server is running and fetch again: items "
            "already cached are kept"
        )

    def _download_http(self, identifier: str, dest: str, progress: Progress | None) -> str:
        import requests

        relpath = self._items[identifier]["relpath"]
        url = self._ds._storage_broker.item_url(identifier, relpath)
        try:
            resp = requests.get(url, stream=True, timeout=http_timeout())
        except requests.RequestException as exc:
            raise _remote_error(self.uri, exc) from exc
        with resp:
            if resp.status_code == 404:
                raise self._missing_item(identifier, f"HTTP 404 for {url}")
            if resp.status_code != 200:
                raise StorageError(f"HTTP {resp.status_code} fetching item {relpath!r} from {url}: check the server")
            try:
                return self._write_stream(identifier, resp.iter_content(_HASH_CHUNK), dest, progress, url)
            except requests.RequestException as exc:
                raise self._cut_off(identifier, exc) from exc

    def _download_s3(self, identifier: str, dest: str, progress: Progress | None) -> str:
        broker = self._ds._storage_broker
        key = broker.data_key_prefix + identifier
        try:
            # The client, unlike boto3 resources, is thread-safe (prefetch uses threads); one
            # GET per item (dtool-s3's get_item_abspath costs an extra request per item).
            resp = broker.s3client.get_object(Bucket=broker.bucket, Key=key)
        except Exception as exc:  # botocore errors are not typed here
            if _error_code(exc) in ("404", "NoSuchKey"):
                raise self._missing_item(identifier, f"no key {key!r}") from exc
            raise _remote_error(self.uri, exc) from exc
        body = resp["Body"]
        try:
            return self._write_stream(identifier, body.iter_chunks(_HASH_CHUNK), dest, progress, key)
        except StorageError:
            raise
        except Exception as exc:  # botocore/urllib3 streaming errors: the connection broke
            raise self._cut_off(identifier, exc) from exc
        finally:
            body.close()

    def _write_stream(
        self, identifier: str, chunks: Iterable[bytes], dest: str, progress: Progress | None, source: str
    ) -> str:
        """Write ``chunks`` into ``dest``, refusing more (or fewer) bytes than the manifest
        records; returns their md5. The manifest says each item's size, so a server that
        sends more is serving something else (or trying to fill the disk)."""
        props = self._items[identifier]
        limit = props.get("size_in_bytes")
        what = f"item {props['relpath']!r} of {self.uri} ({source})"
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
            raise StorageError(
                f"{what}: the manifest records no valid size_in_bytes ({limit!r}), "
                "so it is not downloaded; check that the URI points at a dataset you trust"
            )
        hasher = hashlib.md5()
        written = 0
        with open(dest, "wb") as fh:
            for chunk in chunks:
                written += len(chunk)
                if written > limit:
                    raise _ItemResizedError(
                        f"{what}: the server sent more than the {limit:,} bytes the manifest "
                        "records; the download was stopped. Check the server"
                    )
                fh.write(chunk)
                hasher.update(chunk)
                if progress:
                    progress(len(chunk))
        if written != limit:
            raise _ItemResizedError(
                f"{what}: the server sent {written:,} bytes, the manifest records {limit:,}; "
                "it was not cached. Check the server"
            )
        return hasher.hexdigest()


def bounded_map(fn: Callable[[T], R], items: Iterable[T], *, workers: int) -> Iterator[R]:
    """``fn`` over ``items`` on ``workers`` threads, results in order, with at most a few
    calls per worker in flight (``ThreadPoolExecutor.map`` submits every item at once: a
    million futures). On an error (or Ctrl-C) the calls not yet started are cancelled and
    the error is raised."""
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers))
    pending: collections.deque[concurrent.futures.Future[R]] = collections.deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 4 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    except BaseException:
        for future in pending:
            future.cancel()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _run_bounded(fn: Callable[[str], R], items: list[str], *, workers: int) -> list[R]:
    """:func:`bounded_map` over ``items``, collected (no more threads than items)."""
    return list(bounded_map(fn, items, workers=max(1, min(workers, len(items)))))
