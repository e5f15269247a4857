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
    StorageError,
)

SCHEMES = ("file", "http", "https", "s3")
_HASH_CHUNK = 1 << 20

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

    return dtoolcore


def _remote_error(uri: str, exc: BaseException) -> StorageError:
    return StorageError(
        f"could not reach the dataset at {uri}: {type(exc).__name__}: {exc}. "
        "Check the server is running and the URI is right"
    )


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
        self._scheme = urlparse(uri).scheme
        data_dir = None
        if self._scheme == "file":
            data_dir = os.path.join(unquote(urlparse(uri).path), "data")
            self._paths = {
                idn: os.path.join(data_dir, *props["relpath"].split("/"))
                for idn, props in self._items.items()
            }
        self._data_dir = data_dir

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

    def _fetch(self, identifier: str) -> str:
        broker = self._ds._storage_broker
        if self._scheme in ("http", "https"):
            return self._fetch_http(broker, identifier)
        try:
            return broker.get_item_abspath(identifier)
        except Exception as exc:  # noqa: BLE001 - broker errors are not typed
            raise _remote_error(self.uri, exc) from exc

    def _fetch_http(self, broker: Any, identifier: str) -> str:
        """Fetch into dtool-http's cache layout without re-reading the manifest per item."""
        import requests

        cache_dir = os.path.join(broker._cache_abspath, broker.uuid)
        os.makedirs(cache_dir, exist_ok=True)
        ext = os.path.splitext(self._items[identifier]["relpath"])[1]
        dest = os.path.join(cache_dir, identifier + ext)
        if os.path.isfile(dest) and os.path.getsize(dest) == self._items[identifier]["size_in_bytes"]:
            return dest
        url = broker.http_manifest["item_urls"][identifier]
        try:
            with requests.get(url, stream=True, timeout=60) as resp:
                if resp.status_code != 200:
                    raise StorageError(f"HTTP {resp.status_code} fetching item {self.relpath(identifier)!r} from {url}")
                tmp = f"{dest}.{os.getpid()}.{threading.get_ident()}.tmp"
                with open(tmp, "wb") as fh:
                    for chunk in resp.iter_content(_HASH_CHUNK):
                        fh.write(chunk)
                os.replace(tmp, dest)
        except requests.RequestException as exc:
            raise _remote_error(url, exc) from exc
        return dest

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
        return self._ds.get_readme_content() or ""

    def readme(self) -> dict[str, Any]:
        """The README parsed as YAML ({} when empty or not a mapping)."""
        import yaml

        try:
            data = yaml.safe_load(self.get_readme_content())
        except yaml.YAMLError:
            return {}
        return data if isinstance(data, dict) else {}

    def annotation_names(self) -> list[str]:
        return sorted(self._ds.list_annotation_names())

    def get_annotation(self, name: str, default: Any = None) -> Any:
        if name in self._annotations:
            return self._annotations[name]
        if name not in self._ds.list_annotation_names():
            return default
        value = self._ds.get_annotation(name)
        self._annotations[name] = value
        return value

    def put_annotation(self, name: str, value: Any) -> None:
        self._ds.put_annotation(name, value)
        self._annotations[name] = value

    def overlay_names(self) -> list[str]:
        return list(self._ds.list_overlay_names())

    def get_overlay(self, name: str, default: Any = None) -> Any:
        if name in self._overlays:
            return self._overlays[name]
        if name not in self._ds.list_overlay_names():
            return default
        value = self._ds.get_overlay(name)
        self._overlays[name] = value
        return value

    def put_overlay(self, name: str, values: dict[str, Any]) -> None:
        self._ds.put_overlay(name, values)
        self._overlays[name] = values

    def tags(self) -> list[str]:
        return sorted(self._ds.list_tags())

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
        Deep: every item re-hashed. Remote items are fetched into the cache first.
        """
        idns = identifiers if identifiers is not None else list(self._items)
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
                path = self.item_path(idn)
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
    try:
        admin = dtoolcore._admin_metadata_from_uri(full, None)
    except KeyError as exc:
        raise InvalidURIError(
            f"no dtool storage broker for {full}: install the plugin for its scheme "
            "(dtool-http for http(s)://, dtool-s3 for s3://)"
        ) from exc
    except (DatasetNotFoundError, InvalidURIError):
        raise
    except Exception as exc:  # noqa: BLE001 - brokers raise requests/boto errors
        if path is None:
            raise _remote_error(full, exc) from exc
        raise StorageError(f"could not read the dataset at {full}: {exc}") from exc
    if admin is None:
        raise DatasetNotFoundError(f"no dataset at {full}")
    if admin.get("type") != "dataset":
        raise DatasetNotFrozenError(
            f"{full} is a proto dataset, not a frozen dataset: its creation did not finish. "
            "Freeze it with `dtool freeze` or remove it and create it again"
        )
    try:
        ds = dtoolcore.DataSet(full, admin)
        return StoredDataSet(full, ds)
    except Exception as exc:  # noqa: BLE001
        raise _remote_error(full, exc) from exc


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
    the same filesystem, for file:// bases; copied with dtoolcore for s3://). A failure
    leaves no frozen dataset and no proto dataset behind. An existing dataset of the same
    name is never overwritten.

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
        staging_parent = None
        if exists(f"{base}/{name}"):
            raise DatasetExistsError(f"a dataset called {name!r} already exists at {base}")
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
            writer.uri = _copy_remote(frozen.uri, base)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _username() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user in some containers
        return "unknown"


def _copy_remote(src_uri: str, dest_base: str) -> str:
    dtoolcore = _dtoolcore()
    try:
        return dtoolcore.copy(src_uri, dest_base)
    except Exception as exc:  # noqa: BLE001
        _cleanup_remote(src_uri, dest_base)
        raise StorageError(f"could not copy the new dataset to {dest_base}: {exc}") from exc


def _cleanup_remote(src_uri: str, dest_base: str) -> None:
    """Remove a half-written copy (s3): the proto dataset keys under its UUID."""
    try:
        dtoolcore = _dtoolcore()
        uuid = dtoolcore.DataSet.from_uri(src_uri).uuid
        broker_cls = dtoolcore._get_storage_broker(dest_base, None).__class__
        dest_uri = broker_cls.generate_uri(None, uuid, dest_base)
        broker = broker_cls(dest_uri, None)
        bucket = broker.s3resource.Bucket(broker.bucket)
        prefix = getattr(broker, "_get_prefix", lambda: "")() or ""
        bucket.objects.filter(Prefix=f"{prefix}{uuid}").delete()
    except Exception:  # noqa: BLE001 - best effort; the copy error is what matters
        pass


def copy_dataset(uri: str, dest_base_uri: str, *, progress: Progress | None = None) -> str:
    """Copy a dataset to another base URI with dtoolcore; returns the new URI."""
    src = open_dataset(uri)
    dest = normalise_uri(dest_base_uri)
    path = local_path(dest)
    if path is not None and (path / src.name).exists():
        raise DatasetExistsError(f"a dataset called {src.name!r} already exists at {path}")
    try:
        return _dtoolcore().copy(src.uri, dest)
    except Exception as exc:  # noqa: BLE001
        raise StorageError(f"could not copy {src.uri} to {dest}: {exc}") from exc


def list_datasets(base_uri: str) -> list[str]:
    """URIs of the datasets under a base URI."""
    base = normalise_uri(base_uri)
    try:
        return sorted(d.uri for d in _dtoolcore().iter_datasets_in_base_uri(base))
    except Exception as exc:  # noqa: BLE001
        raise StorageError(f"could not list datasets under {base}: {exc}") from exc
