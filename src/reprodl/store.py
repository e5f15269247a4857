"""Storage layer: the only module that talks to dtoolcore.

Opens datasets from a plain path, file://, http(s):// or s3:// URI; creates datasets
atomically; gives fast item access through an identifier -> path map built once (dtoolcore's
``item_content_abspath`` re-reads the manifest on every call); fetches remote items once
into dtool's cache; verifies items against the manifest.

Example:
    >>> ds = open_dataset("/data/digits")            # doctest: +SKIP
    >>> path = ds.item_path(ds.identifiers[0])      # doctest: +SKIP
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import getpass
import hashlib
import json
import os
import shutil
import socket
import tempfile
import threading
import uuid as uuidlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, unquote

from reprodl.errors import (
    DatasetExistsError,
    DatasetNotFoundError,
    DatasetNotFrozenError,
    InvalidNameError,
    InvalidURIError,
    ReprodlError,
    StorageError,
)

SCHEMES = ("file", "http", "https", "s3")
_HASH_CHUNK = 1 << 20
_HTTP_TIMEOUT = (10, 60)  # seconds to connect, seconds between bytes

Progress = Callable[[int], None]  # called with the number of units just done


def normalise_uri(uri: str | os.PathLike[str]) -> str:
    """Return a full URI for a plain path or URI, refusing schemes dtool cannot read.

    Example:
        >>> normalise_uri("s3://bucket/abc")
        's3://bucket/abc'
    """
    text = os.fspath(uri)
    if not text:
        raise InvalidURIError("empty URI: give a path or a file://, http(s):// or s3:// URI")
    parsed = urlparse(text)
    if parsed.scheme == "" or len(parsed.scheme) == 1:
        return "file://{}{}".format(socket.gethostname(), os.path.abspath(text))
    if parsed.scheme not in SCHEMES:
        raise InvalidURIError(
            f"unsupported URI scheme {parsed.scheme!r} in {text!r}: "
            f"use a path or one of {', '.join(s + '://' for s in SCHEMES)}"
        )
    if parsed.scheme == "file":
        return "file://{}{}".format(parsed.netloc or socket.gethostname(), unquote(parsed.path))
    return text.rstrip("/")


def scheme_of(uri: str) -> str:
    return urlparse(normalise_uri(uri)).scheme


def local_path(uri: str) -> Path | None:
    """The filesystem path of a file:// URI (or plain path); None for remote URIs."""
    full = normalise_uri(uri)
    parsed = urlparse(full)
    return Path(unquote(parsed.path)) if parsed.scheme == "file" else None


def name_is_valid(name: str) -> bool:
    import dtoolcore.utils

    return bool(name) and dtoolcore.utils.name_is_valid(name)


def check_name(name: str) -> None:
    if not name_is_valid(name):
        raise InvalidNameError(
            f"dataset name {name!r} is not allowed by dtool: use 1-80 characters from "
            "letters, digits, '-', '_' and '.'"
        )


def _dtoolcore():
    import dtoolcore

    if not getattr(dtoolcore._generate_storage_broker_lookup, "_reprodl_cached", False):
        dtoolcore._generate_storage_broker_lookup = _cached_broker_lookup(dtoolcore._generate_storage_broker_lookup)
    return dtoolcore


def _cached_broker_lookup(generate: Any) -> Any:
    """dtoolcore's storage-broker lookup, computed once per process.

    dtoolcore re-reads every installed package's entry points on each dataset open, freeze
    and broker call (about 2 ms each, a dozen times per training or reproduction); the
    brokers installed do not change while a process runs. Callers get a copy of the dict.
    """
    cache: dict[str, Any] = {}

    def lookup() -> dict[str, Any]:
        if "brokers" not in cache:
            cache["brokers"] = generate()
        return dict(cache["brokers"])

    lookup._reprodl_cached = True  # type: ignore[attr-defined]
    lookup.__wrapped__ = generate  # type: ignore[attr-defined]
    return lookup


def _error_code(exc: BaseException) -> str:
    """The HTTP status or S3 error code carried by a broker's exception ('' if none)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):  # botocore ClientError
        return str(response.get("Error", {}).get("Code", ""))
    if response is not None and getattr(response, "status_code", None):  # requests
        return str(response.status_code)
    if type(exc).__name__ == "HTTPError" and exc.args:  # dtool_http.storagebroker.HTTPError
        return str(exc.args[0])
    return ""


def _s3_settings_hint(bucket: str) -> str:
    return (
        f"set DTOOL_S3_ENDPOINT_{bucket}, DTOOL_S3_ACCESS_KEY_ID_{bucket} and "
        f"DTOOL_S3_SECRET_ACCESS_KEY_{bucket} (environment or dtool config), or configure "
        "AWS credentials"
    )


def _remote_error(uri: str, exc: BaseException) -> ReprodlError:
    """The reprodl error for an exception a remote broker raised (they are untyped)."""
    if isinstance(exc, ReprodlError):
        return exc
    parsed = urlparse(uri)
    code = _error_code(exc)
    if parsed.scheme == "s3":
        bucket = parsed.netloc
        if code in ("NoSuchKey", "404"):
            return DatasetNotFoundError(
                f"no dataset at {uri}: bucket {bucket!r} has no dataset with UUID "
                f"{parsed.path.strip('/')!r}. Check the URI (s3://<bucket>/<uuid>); "
                f"`dtool ls s3://{bucket}` lists what is there"
            )
        if code == "NoSuchBucket":
            return StorageError(
                f"the bucket {bucket!r} of {uri} does not exist on its server: create it "
                "or correct the bucket name"
            )
        if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return StorageError(
                f"access to bucket {bucket!r} was refused ({code}) for {uri}: check the "
                f"credentials; {_s3_settings_hint(bucket)}"
            )
        if type(exc).__name__ in ("NoCredentialsError", "PartialCredentialsError") or (
            isinstance(exc, RuntimeError) and "DTOOL_S3_ENDPOINT" in str(exc)
        ):
            return StorageError(f"no S3 credentials for {uri}: {_s3_settings_hint(bucket)}")
    elif parsed.scheme in ("http", "https") and code in ("400", "404", "410"):
        # dtool-http's server answers 400 where the directory is not a dataset.
        return DatasetNotFoundError(
            f"no dataset at {uri}: the server answered HTTP {code} for "
            f"{uri}/http_manifest.json. Check the URI: it is the served dataset's directory "
            "(or a `dtool publish` URL)"
        )
    elif parsed.scheme in ("http", "https") and code:
        return StorageError(
            f"the server of {uri} answered HTTP {code}: it is not serving a dtool dataset "
            "there. Check the URI"
        )
    return StorageError(
        f"could not reach the dataset at {uri}: {type(exc).__name__}: {exc}. "
        "Check the server is running and the URI is right"
    )


def _cache_root() -> str:
    """dtool's cache directory for remote items (DTOOL_CACHE_DIRECTORY)."""
    from dtoolcore.utils import DEFAULT_CACHE_PATH, get_config_value

    return os.path.abspath(get_config_value("DTOOL_CACHE_DIRECTORY", default=DEFAULT_CACHE_PATH))


def _file_sha(path: str | os.PathLike[str], algorithm: str = "md5") -> str:
    hasher = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            hasher.update(chunk)
    return hasher.hexdigest()


def file_md5(path: str | os.PathLike[str]) -> str:
    """md5 of a file, as dtool's manifest records it."""
    return _file_sha(path, "md5")


def file_sha256(path: str | os.PathLike[str]) -> str:
    return _file_sha(path, "sha256")


def canonical_json(obj: Any) -> bytes:
    """The canonical JSON bytes of ``obj`` (sorted keys, no spaces), used for digests."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


class _ItemMissingError(StorageError):
    """A remote dataset's server lacks one of its items (verify reports it as missing)."""


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


class StoredDataSet:
    """A frozen dtool dataset with fast item access.

    Use :func:`open_dataset` to get one. The manifest is read once; item paths come from
    a map built once for local datasets, and remote items are fetched once into dtool's
    cache and remembered.
    """

    def __init__(self, uri: str, dataset: Any) -> None:
        self.uri = uri
        self._ds = dataset
        self._manifest = dataset._manifest  # read once
        self._items: dict[str, dict[str, Any]] = self._manifest["items"]
        self._paths: dict[str, str] = {}
        self._lock = threading.Lock()
        self._annotations: dict[str, Any] = {}
        self._overlays: dict[str, dict[str, Any]] = {}
        self._names: dict[str, list[str]] = {}  # "annotations"/"overlays" -> names, listed once
        self._readme: str | None = None
        self._scheme = urlparse(uri).scheme
        data_dir = None
        if self._scheme == "file":
            data_dir = os.path.join(unquote(urlparse(uri).path), "data")
            self._paths = {
                idn: os.path.join(data_dir, *props["relpath"].split("/"))
                for idn, props in self._items.items()
            }
        self._data_dir = data_dir
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
        return self._manifest.get("hash_function", "md5sum_hexdigest")

    # --- items ----------------------------------------------------------------------
    @property
    def identifiers(self) -> list[str]:
        """Item identifiers, sorted by relpath (a stable order)."""
        return sorted(self._items, key=lambda i: self._items[i]["relpath"])

    def relpath(self, identifier: str) -> str:
        return self._items[identifier]["relpath"]

    def item_properties(self, identifier: str) -> dict[str, Any]:
        return dict(self._items[identifier])

    def identifier_of(self, relpath: str) -> str:
        import dtoolcore.utils

        idn = dtoolcore.utils.generate_identifier(relpath)
        if idn not in self._items:
            raise KeyError(f"no item with relpath {relpath!r} in dataset {self.uri}")
        return idn

    def __len__(self) -> int:
        return len(self._items)

    def item_path(self, identifier: str) -> str:
        """Local path of an item's content, fetching a remote item once."""
        path = self._paths.get(identifier)
        if path is not None:
            return path
        if identifier not in self._items:
            raise KeyError(f"no item with identifier {identifier!r} in dataset {self.uri}")
        path = self._fetch(identifier)
        with self._lock:
            self._paths[identifier] = path
        return path

    def _fetch_many(self, identifiers: list[str], *, refresh: bool) -> dict[str, str | None]:
        """Fetch remote items in parallel: identifier -> cached path, None where missing.

        With ``refresh`` every item is downloaded again. An unreachable server is raised.
        """

        def one(idn: str) -> tuple[str, str | None]:
            try:
                path = self._fetch(idn, refresh=refresh)
            except _ItemMissingError:
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
        return _ItemMissingError(
            f"item {self.relpath(identifier)!r} of {self.uri} is missing on the server "
            f"({where}): the remote copy is incomplete; copy the dataset there again"
        )

    def _download_http(self, identifier: str, dest: str) -> None:
        import requests

        url = self._ds._storage_broker.http_manifest["item_urls"][identifier]
        try:
            with requests.get(url, stream=True, timeout=_HTTP_TIMEOUT) as resp:
                if resp.status_code == 404:
                    raise self._missing_item(identifier, f"HTTP 404 for {url}")
                if resp.status_code != 200:
                    raise StorageError(
                        f"HTTP {resp.status_code} fetching item {self.relpath(identifier)!r} "
                        f"from {url}: check the server"
                    )
                with open(dest, "wb") as fh:
                    for chunk in resp.iter_content(_HASH_CHUNK):
                        fh.write(chunk)
        except requests.RequestException as exc:
            raise _remote_error(self.uri, exc) from exc

    def _download_s3(self, identifier: str, dest: str) -> None:
        broker = self._ds._storage_broker
        key = broker.data_key_prefix + identifier
        try:
            # The client, unlike boto3 resources, is thread-safe (prefetch uses threads);
            # dtool-s3's get_item_abspath also costs an extra GET per item.
            broker.s3client.download_file(broker.bucket, key, dest)
        except Exception as exc:  # noqa: BLE001 - botocore errors are not typed here
            if _error_code(exc) in ("404", "NoSuchKey"):
                raise self._missing_item(identifier, f"no key {key!r}") from exc
            raise _remote_error(self.uri, exc) from exc

    def prefetch(self, *, workers: int = 8, progress: Progress | None = None) -> None:
        """Fetch every remote item into the cache (no-op for local datasets)."""
        todo = [i for i in self._items if i not in self._paths]
        if not todo:
            if progress:
                progress(len(self._items))
            return
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
            for _ in pool.map(self.item_path, todo):
                if progress:
                    progress(1)

    # --- metadata -------------------------------------------------------------------
    def get_readme_content(self) -> str:
        """The README text (read once)."""
        if self._readme is None:
            try:
                self._readme = self._ds.get_readme_content() or ""
            except Exception as exc:  # noqa: BLE001 - broker errors are not typed
                raise _remote_error(self.uri, exc) from exc
        return self._readme

    def readme(self) -> dict[str, Any]:
        """The README parsed as YAML ({} when empty or not a mapping)."""
        import yaml

        try:
            data = yaml.safe_load(self.get_readme_content())
        except yaml.YAMLError:
            return {}
        return data if isinstance(data, dict) else {}

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
                        obj["Key"][len(prefix):].removesuffix(".json")
                        for page in pages
                        for obj in page.get("Contents", [])
                    ]
                elif kind == "annotations":
                    names = list(broker.list_annotation_names())
                else:
                    names = list(broker.list_overlay_names())
            except Exception as exc:  # noqa: BLE001 - broker errors are not typed
                raise _remote_error(self.uri, exc) from exc
            self._names[kind] = sorted(names)
        return list(self._names[kind])

    def _get_metadata(self, kind: str, name: str) -> Any:
        broker = self._ds._storage_broker
        try:
            if kind == "annotations":
                return broker.get_annotation(name)
            return broker.get_overlay(name)
        except Exception as exc:  # noqa: BLE001
            raise _remote_error(self.uri, exc) from exc

    def annotation_names(self) -> list[str]:
        return self._list_names("annotations")

    def get_annotation(self, name: str, default: Any = None) -> Any:
        if name in self._annotations:
            return self._annotations[name]
        if name not in self._list_names("annotations"):
            return default
        value = self._get_metadata("annotations", name)
        self._annotations[name] = value
        return value

    def put_annotation(self, name: str, value: Any) -> None:
        self._ds.put_annotation(name, value)
        self._annotations[name] = value
        if name not in self._list_names("annotations"):
            self._names["annotations"] = sorted([*self._names["annotations"], name])

    def overlay_names(self) -> list[str]:
        return self._list_names("overlays")

    def get_overlay(self, name: str, default: Any = None) -> Any:
        if name in self._overlays:
            return self._overlays[name]
        if name not in self._list_names("overlays"):
            return default
        value = self._get_metadata("overlays", name)
        self._overlays[name] = value
        return value

    def put_overlay(self, name: str, values: dict[str, Any]) -> None:
        self._ds.put_overlay(name, values)
        self._overlays[name] = values
        if name not in self._list_names("overlays"):
            self._names["overlays"] = sorted([*self._names["overlays"], name])

    def tags(self) -> list[str]:
        try:
            return sorted(self._ds.list_tags())
        except Exception as exc:  # noqa: BLE001
            raise _remote_error(self.uri, exc) from exc

    # --- integrity ------------------------------------------------------------------
    def manifest_digest(self) -> str:
        """sha256 over the manifest's (relpath, size, hash) triples: stable across copies."""
        entries = sorted(
            (p["relpath"], p["size_in_bytes"], p["hash"]) for p in self._items.values()
        )
        return "sha256:" + hashlib.sha256(
            canonical_json({"hash_function": self.hash_function, "items": entries})
        ).hexdigest()

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
        fetched: dict[str, str | None] = {}
        if not self.is_local:
            fetched = self._fetch_many(idns, refresh=deep)
        report = VerifyReport(uri=self.uri, deep=deep, n_items=len(idns))
        if self.is_local and identifiers is None:
            on_disk = set()
            base = self._data_dir or ""
            for dirpath, _dirs, files in os.walk(base):
                for fn in files:
                    rel = os.path.relpath(os.path.join(dirpath, fn), base).replace(os.sep, "/")
                    on_disk.add(rel)
            known = {p["relpath"] for p in self._items.values()}
            report.added = sorted(on_disk - known)
        to_hash: list[str] = []
        for idn in idns:
            props = self._items[idn]
            rel = props["relpath"]
            try:
                path = fetched[idn] if idn in fetched else self.item_path(idn)
                if path is None:
                    raise FileNotFoundError(rel)
                st = os.stat(path)
            except (FileNotFoundError, StorageError):
                report.missing.append(rel)
                continue
            if st.st_size != props["size_in_bytes"]:
                report.resized.append(rel)
            elif deep or (
                self.is_local
                and "utc_timestamp" in props
                and abs(st.st_mtime - float(props["utc_timestamp"])) > 1e-3
            ):
                to_hash.append(idn)
            elif progress:
                progress(st.st_size)
        if to_hash:
            if not self.hash_function.startswith("md5"):
                raise StorageError(
                    f"dataset {self.uri} uses hash function {self.hash_function!r}; "
                    "reprodl verifies md5 manifests only"
                )

            def check(idn: str) -> tuple[str, bool, int]:
                path = self.item_path(idn)
                return idn, file_md5(path) == self._items[idn]["hash"], os.path.getsize(path)

            workers = max(1, min(4, os.cpu_count() or 1))
            with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
                for idn, same, size in pool.map(check, to_hash):
                    if not same:
                        report.altered.append(self.relpath(idn))
                    if progress:
                        progress(size)
        for lst in (report.missing, report.altered, report.resized):
            lst.sort()
        return report

    def manifest_entries(self) -> dict[str, dict[str, Any]]:
        """relpath -> {size_in_bytes, hash}: what a record keeps to name changed items later."""
        return {p["relpath"]: {"size_in_bytes": p["size_in_bytes"], "hash": p["hash"]}
                for p in sorted(self._items.values(), key=lambda p: p["relpath"])}

    def total_size(self) -> int:
        return sum(p["size_in_bytes"] for p in self._items.values())


def open_dataset(uri: str | os.PathLike[str]) -> StoredDataSet:
    """Open the frozen dataset at ``uri`` (a path, file://, http(s):// or s3:// URI).

    Raises:
        InvalidURIError: unsupported scheme.
        DatasetNotFoundError: nothing at the URI.
        DatasetNotFrozenError: a proto dataset (creation never finished).
        StorageError: the server could not be reached.
    """
    full = normalise_uri(uri)
    dtoolcore = _dtoolcore()
    path = local_path(full)
    if path is not None:
        if not path.exists():
            raise DatasetNotFoundError(f"no dataset at {full}: the path {path} does not exist")
        if not (path / ".dtool" / "dtool").is_file():
            raise DatasetNotFoundError(
                f"{full} is not a dtool dataset (no .dtool/dtool admin metadata in {path})"
            )
    else:
        _check_broker(full)
        parsed = urlparse(full)
        if parsed.scheme == "s3" and not parsed.path.strip("/"):
            raise InvalidURIError(
                f"{full} names a bucket, not a dataset: a dataset's URI is "
                f"s3://{parsed.netloc}/<uuid> (`dtool ls {full}` lists them)"
            )

    def read_error(exc: BaseException) -> ReprodlError:
        if path is None:
            return _remote_error(full, exc)
        return StorageError(f"could not read the dataset at {full}: {type(exc).__name__}: {exc}")

    try:
        admin = dtoolcore._admin_metadata_from_uri(full, None)
    except Exception as exc:  # noqa: BLE001 - brokers raise requests/boto errors
        raise read_error(exc) from exc
    if not admin:
        raise DatasetNotFoundError(f"no dataset at {full}: it has no dtool admin metadata")
    if admin.get("type") != "dataset":
        raise DatasetNotFrozenError(
            f"{full} is a proto dataset, not a frozen dataset: its creation did not finish. "
            "Freeze it with `dtool freeze` or remove it and create it again"
        )
    try:
        ds = dtoolcore.DataSet(full, admin)
        return StoredDataSet(full, ds)
    except Exception as exc:  # noqa: BLE001
        raise read_error(exc) from exc


def _check_broker(uri: str) -> None:
    """Refuse a URI whose scheme has no dtool storage broker installed."""
    scheme = urlparse(uri).scheme
    if scheme not in _dtoolcore()._generate_storage_broker_lookup():
        plugin = {"s3": "dtool-s3 (pip install 'reprodl[s3]')"}.get(scheme, "dtool-http")
        raise InvalidURIError(
            f"no dtool storage broker for {scheme}:// URIs such as {uri}: install {plugin}"
        )


def dataset_uri(base_uri: str, name: str) -> str:
    """The URI a dataset called ``name`` gets under ``base_uri`` (file:// bases)."""
    path = local_path(base_uri)
    if path is None:
        raise InvalidURIError(f"dataset_uri works for file bases only, not {base_uri}")
    return normalise_uri(str(path / name))


def exists(uri: str) -> bool:
    path = local_path(uri)
    if path is not None:
        return path.exists()
    try:
        open_dataset(uri)
    except (DatasetNotFoundError, DatasetNotFrozenError):
        return False
    except StorageError:
        return False
    return True


class DatasetWriter:
    """Collects a dataset's items and metadata; frozen by :func:`create_dataset` on success.

    Items are staged in a proto dataset in a private directory. Per-item labels go in
    overlays keyed by relpath (freezing after per-item metadata is quadratic in dtoolcore).
    """

    def __init__(self, proto: Any, staging: Path, name: str) -> None:
        self._proto = proto
        self._staging = staging
        self.name = name
        self.uuid: str = proto.uuid
        self._overlays: dict[str, dict[str, Any]] = {}
        self._relpaths: set[str] = set()
        self.uri: str | None = None  # set once frozen
        self._tmpfiles = staging / "_files"
        self._tmpfiles.mkdir()

    def put_item(self, fpath: str | os.PathLike[str], relpath: str) -> str:
        """Copy a file into the dataset as ``relpath``."""
        if relpath in self._relpaths:
            raise ValueError(f"item {relpath!r} was already added")
        self._proto.put_item(os.fspath(fpath), relpath)
        self._relpaths.add(relpath)
        return relpath

    def put_bytes(self, data: bytes, relpath: str) -> str:
        tmp = self._tmpfiles / uuidlib.uuid4().hex
        tmp.write_bytes(data)
        try:
            return self.put_item(tmp, relpath)
        finally:
            tmp.unlink()

    def put_json(self, obj: Any, relpath: str) -> str:
        return self.put_bytes(json.dumps(obj, indent=2, sort_keys=True).encode() + b"\n", relpath)

    @contextlib.contextmanager
    def item_file(self, relpath: str) -> Iterator[Path]:
        """A path to write an item to; it is added when the block ends."""
        tmp = self._tmpfiles / (uuidlib.uuid4().hex + os.path.splitext(relpath)[1])
        yield tmp
        if not tmp.is_file():
            raise StorageError(f"the item {relpath!r} was promised but no file was written to {tmp}")
        self.put_item(tmp, relpath)
        tmp.unlink()

    def put_annotation(self, name: str, value: Any) -> None:
        self._proto.put_annotation(name, value)

    def put_readme(self, content: str) -> None:
        self._proto.put_readme(content)

    def set_item_label(self, overlay: str, relpath: str, value: Any) -> None:
        self._overlays.setdefault(overlay, {})[relpath] = value

    def put_tag(self, tag: str) -> None:
        self._proto.put_tag(tag)

    @property
    def relpaths(self) -> set[str]:
        return set(self._relpaths)

    def _freeze(self) -> Any:
        import dtoolcore.utils

        self._proto.freeze()
        ds = _dtoolcore().DataSet.from_uri(self._proto.uri)
        ids = list(ds.identifiers)
        for name, by_rel in self._overlays.items():
            overlay = {idn: None for idn in ids}
            for rel, value in by_rel.items():
                overlay[dtoolcore.utils.generate_identifier(rel)] = value
            ds.put_overlay(name, overlay)
        return ds


@contextlib.contextmanager
def create_dataset(
    base_uri: str | os.PathLike[str],
    name: str,
    *,
    readme: str = "",
    creator: str | None = None,
) -> Iterator[DatasetWriter]:
    """Create a dataset atomically: frozen only if the block ends without an exception.

    The dataset is built in a hidden staging directory and moved into place (renamed, on
    the same filesystem, for file:// bases; copied for s3://, and removed there if the
    copy fails). A failure leaves no frozen dataset and no proto dataset behind. An
    existing dataset of the same name is never overwritten (s3 datasets are keyed by a new
    UUID, so there the bucket is only checked to answer before anything is built).

    Example:
        >>> with create_dataset("/tmp/out", "numbers", readme="name: numbers") as w:  # doctest: +SKIP
        ...     w.put_bytes(b"1,2,3", "numbers.csv")
        >>> w.uri                                                                    # doctest: +SKIP
    """
    check_name(name)
    base = normalise_uri(base_uri)
    scheme = urlparse(base).scheme
    if scheme in ("http", "https"):
        raise InvalidURIError(
            f"cannot create a dataset at {base}: http(s):// is read-only. Create it on disk "
            "or s3:// and publish it (`dtool publish`)"
        )
    base_path = local_path(base)
    if base_path is not None:
        if not base_path.is_dir():
            raise StorageError(
                f"base URI {base} is not an existing directory: create {base_path} first"
            )
        if (base_path / name).exists():
            raise DatasetExistsError(
                f"a dataset called {name!r} already exists at {base_path / name}: "
                "choose another name or remove it first (reprodl never overwrites)"
            )
        staging_parent = base_path
        if not os.access(base_path, os.W_OK):
            raise StorageError(f"cannot write to {base_path}: permission denied")
    else:
        # s3 datasets are keyed by a fresh UUID, so no name can clash; check the bucket
        # answers before spending time building.
        staging_parent = None
        _probe_remote_base(base)
    staging = Path(tempfile.mkdtemp(prefix=f".reprodl-staging-{name}-", dir=staging_parent))
    try:
        dtoolcore = _dtoolcore()
        admin = dtoolcore.generate_admin_metadata(name, creator or _username())
        proto = dtoolcore.generate_proto_dataset(admin, normalise_uri(str(staging)))
        proto.create()
        proto.put_readme(readme)
        writer = DatasetWriter(proto, staging, name)
        yield writer
        shutil.rmtree(writer._tmpfiles, ignore_errors=True)
        frozen = writer._freeze()
        if base_path is not None:
            final = base_path / name
            if final.exists():
                raise DatasetExistsError(
                    f"a dataset called {name!r} appeared at {final} while this one was "
                    "being built; the new one was discarded"
                )
            os.rename(staging / name, final)
            writer.uri = normalise_uri(str(final))
        else:
            writer.uri = _copy_to(StoredDataSet(normalise_uri(frozen.uri), frozen), base)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _username() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user in some containers
        return "unknown"


def _probe_remote_base(base: str) -> None:
    """Fail fast, with a clear error, when a remote base URI cannot be written to."""
    _check_broker(base)
    parsed = urlparse(base)
    bucket = parsed.netloc
    try:
        broker_cls = _dtoolcore()._generate_storage_broker_lookup()[parsed.scheme]
        _resource, client, _unsigned = broker_cls._get_resource_and_client(bucket)
        client.list_objects_v2(Bucket=bucket, MaxKeys=1)
    except Exception as exc:  # noqa: BLE001 - botocore errors are not typed here
        raise _remote_error(base, exc) from exc


def _copy_to(src: StoredDataSet, dest_base: str, *, progress: Progress | None = None) -> str:
    """Copy ``src`` under ``dest_base`` and freeze it there; returns the new URI.

    Items come from ``src.item_path`` (the map built once, the remote cache) rather than
    dtoolcore's per-item manifest re-read, and metadata through :class:`StoredDataSet`
    (dtool-s3 cannot list dotted annotation names). A copy that fails is removed.
    """
    dtoolcore = _dtoolcore()
    _check_broker(dest_base)
    admin = src.admin_metadata
    admin["type"] = "protodataset"
    dest_uri = dtoolcore._generate_uri(admin, dest_base)
    if _dataset_present(dest_uri):
        raise DatasetExistsError(
            f"{dest_uri} already holds dataset {src.name!r} (UUID {src.uuid}): reprodl never "
            "overwrites; use it as it is or remove it first"
        )
    # What to remove on failure: anything under the new UUID in a bucket is this copy's;
    # a directory only once this copy has made it (never one that appeared meanwhile).
    started = local_path(dest_uri) is None
    try:
        proto = dtoolcore.generate_proto_dataset(admin_metadata=admin, base_uri=dest_base)
        proto.create()
        started = True
        for idn in src.identifiers:
            proto.put_item(src.item_path(idn), src.relpath(idn))
            if progress:
                progress(1)
        proto.put_readme(src.get_readme_content())
        for tag in src.tags():
            proto.put_tag(tag)
        for name in src.overlay_names():
            # The overlay's keys are the source's identifiers, the copy's too.
            proto._storage_broker.put_overlay(name, src.get_overlay(name))
        for name in src.annotation_names():
            proto.put_annotation(name, src.get_annotation(name))
        proto.freeze()
    except BaseException as exc:
        removed = _remove_partial(dest_uri) if started else None
        if not isinstance(exc, Exception):
            raise  # KeyboardInterrupt and the like: cleaned up, re-raised as they are
        if isinstance(exc, ReprodlError):
            cause = str(exc)
        elif local_path(dest_uri) is not None:
            cause = f"{type(exc).__name__}: {exc}"
        else:
            cause = str(_remote_error(dest_uri, exc))
        where = {
            None: "nothing was written",
            True: "the partial copy was removed",
            False: f"a partial copy may remain at {dest_uri}: remove it by hand",
        }[removed]
        raise StorageError(f"could not copy {src.uri} to {dest_base}: {cause} ({where})") from exc
    return normalise_uri(proto.uri)


def _dataset_present(uri: str) -> bool:
    """Whether anything (a dataset or an unfinished copy) already sits at ``uri``."""
    path = local_path(uri)
    if path is not None:
        return path.exists()
    try:
        return bool(_dtoolcore()._get_storage_broker(uri, None).has_admin_metadata())
    except Exception as exc:  # noqa: BLE001
        raise _remote_error(uri, exc) from exc


def _remove_partial(uri: str) -> bool:
    """Remove a half-written dataset at ``uri``; True when nothing of it is left."""
    path = local_path(uri)
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)
        return not path.exists()
    try:
        broker = _dtoolcore()._get_storage_broker(uri, None)
        client, bucket = broker.s3client, broker.bucket
        keys = []
        pages = client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=f"{broker._get_prefix()}{broker.uuid}/"
        )
        for page in pages:
            keys += [obj["Key"] for obj in page.get("Contents", [])]
        # The registration key last: while it exists the leftovers can still be found.
        keys.append(broker.dataset_registration_key)
        for i in range(0, len(keys), 1000):
            client.delete_objects(
                Bucket=bucket,
                Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]], "Quiet": True},
            )
        return True
    except Exception:  # noqa: BLE001 - best effort; the copy's own error is reported
        return False


def copy_dataset(uri: str, dest_base_uri: str, *, progress: Progress | None = None) -> str:
    """Copy a dataset to another base URI (a directory or s3://bucket); returns the new URI.

    The copy keeps the UUID, the items and so the manifest digest. A copy that fails
    part-way is removed; an existing dataset is never overwritten. ``progress`` is called
    once per item copied.

    Example:
        >>> copy_dataset("/data/digits", "s3://my-bucket")     # doctest: +SKIP
        's3://my-bucket/1c10766c-...'
    """
    src = open_dataset(uri)
    dest = normalise_uri(dest_base_uri)
    scheme = urlparse(dest).scheme
    if scheme in ("http", "https"):
        raise InvalidURIError(
            f"cannot copy to {dest}: http(s):// is read-only. Copy to a directory or s3://"
        )
    path = local_path(dest)
    if path is not None:
        if not path.is_dir():
            raise StorageError(f"base URI {dest} is not an existing directory: create {path} first")
        if (path / src.name).exists():
            raise DatasetExistsError(
                f"a dataset called {src.name!r} already exists at {path / src.name}: "
                "choose another base or remove it first (reprodl never overwrites)"
            )
    else:
        _probe_remote_base(dest)
    return _copy_to(src, dest, progress=progress)


def list_datasets(base_uri: str) -> list[str]:
    """URIs of the datasets under a base URI."""
    base = normalise_uri(base_uri)
    _check_broker(base)
    try:
        return sorted(d.uri for d in _dtoolcore().iter_datasets_in_base_uri(base))
    except Exception as exc:  # noqa: BLE001
        if local_path(base) is None:
            raise _remote_error(base, exc) from exc
        raise StorageError(f"could not list datasets under {base}: {exc}") from exc
