"""open_dataset: a frozen dataset at a path or URI opened, or an error that says what is there and what to do."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from urllib.parse import urlparse

from reprodl.errors import (
    DamagedMetadataError,
    DatasetFormatError,
    DatasetNotFoundError,
    DatasetNotFrozenError,
    InvalidURIError,
    ReprodlError,
    StorageError,
)
from reprodl.store.brokers import _check_broker, frozen_dataset, storage_broker
from reprodl.store.dataset import StoredDataSet
from reprodl.store.remote_errors import _remote_error
from reprodl.store.uris import (
    local_path,
    normalise_uri,
)


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


def _check_metadata_files(full: str, path: Path) -> None:
    """Refuse a local dataset whose dtool metadata (admin, manifest, README, annotations, overlays, tags)
    holds something other than a regular file where a file is read: a link to ``/dev/zero`` is read for
    ever, and opening a named pipe waits for a writer for ever. dtool reads them; nothing is read here."""
    dot = path / ".dtool"
    files = [dot / "dtool", dot / "manifest.json", path / "README.yml"]
    for folder in ("annotations", "overlays", "tags"):
        with contextlib.suppress(OSError):
            files += [Path(e.path) for e in os.scandir(dot / folder)]
    for file in files:
        if os.path.lexists(file) and not file.is_file():
            raise DatasetFormatError(
                f"the dataset at {full} has {file.relative_to(path).as_posix()} that is not a regular file "
                "(a device, a pipe, a directory or a broken link): refused, nothing read"
            )


def _check_location(full: str, path: Path | None) -> None:
    """Refuse, before reading anything, a local path with no dataset, or an unusable remote URI."""
    if path is not None:
        if not path.exists():
            raise DatasetNotFoundError(f"no dataset at {full}: the path {path} does not exist")
        if not os.path.lexists(path / ".dtool" / "dtool"):
            raise DatasetNotFoundError(f"{full} is not a dtool dataset (no .dtool/dtool admin metadata in {path})")
        _check_metadata_files(full, path)
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
