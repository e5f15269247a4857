"""Creating a dataset atomically: :func:`create_dataset` and its :class:`DatasetWriter`.

The dataset is staged as a proto dataset in a private directory and frozen only when the
``with`` block ends without an exception; then it is renamed into place (file://) or
copied (s3://). Item relpaths are checked as they are added, so none can point outside
the dataset.
"""

from __future__ import annotations

import contextlib
import errno
import getpass
import json
import os
import shutil
import tempfile
import uuid as uuidlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from reprodl import keys
from reprodl.errors import (
    CheckpointWriteError,
    DatasetExistsError,
    InputDataError,
    InvalidURIError,
    RankLostError,
    ResumeError,
    StorageError,
)
from reprodl.files import is_short_write
from reprodl.store import hashing
from reprodl.store.brokers import _dtoolcore, frozen_dataset, proto_dataset
from reprodl.store.dataset import StoredDataSet
from reprodl.store.fetch import bounded_map
from reprodl.store.staging import (
    claim_staging,
    clean_staging,
    find_staging,
    latest_checkpoint,
    make_staging,
    move_into_place,
    release_staging,
)
from reprodl.store.transfer import _copy_to, _probe_remote_base
from reprodl.store.uris import check_name, check_relpath, item_identifier, local_path, normalise_uri


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

    @property
    def checkpoint_dir(self) -> Path:
        """Where a training keeps its checkpoints while this dataset is unfinished (removed with it)."""
        return self._staging / keys.CHECKPOINT_DIR

    def put_item(self, fpath: str | os.PathLike[str], relpath: str) -> str:
        """Copy a file into the dataset as ``relpath`` (relative, '/'-separated, no '..')."""
        check_relpath(relpath)
        if relpath in self._relpaths:
            raise InputDataError(
                f"item {relpath!r} was already added to dataset {self.name!r}: each relpath "
                "names one item; give this file another relpath"
            )
        self._proto.put_item(os.fspath(fpath), relpath)
        self._relpaths.add(relpath)
        return relpath

    def put_bytes(self, data: bytes, relpath: str) -> str:
        """Add ``data`` as the item ``relpath``."""
        tmp = self._tmpfiles / uuidlib.uuid4().hex
        tmp.write_bytes(data)
        try:
            return self.put_item(tmp, relpath)
        finally:
            tmp.unlink()

    def put_json(self, obj: Any, relpath: str) -> str:
        """Add ``obj`` as indented, key-sorted JSON, the item ``relpath``."""
        return self.put_bytes(json.dumps(obj, indent=2, sort_keys=True).encode() + b"\n", relpath)

    @contextlib.contextmanager
    def item_file(self, relpath: str) -> Iterator[Path]:
        """A path to write an item to; it is added when the block ends."""
        check_relpath(relpath)  # before the caller spends time writing it
        tmp = self._tmpfiles / (uuidlib.uuid4().hex + os.path.splitext(relpath)[1])
        yield tmp
        if not tmp.is_file():
            raise StorageError(f"the item {relpath!r} was promised but no file was written to {tmp}")
        self.put_item(tmp, relpath)
        tmp.unlink()

    def put_annotation(self, name: str, value: Any) -> None:
        """Set a dataset annotation (a JSON value)."""
        self._proto.put_annotation(name, value)

    def put_readme(self, content: str) -> None:
        """Replace the README text."""
        self._proto.put_readme(content)

    def set_item_label(self, overlay: str, relpath: str, value: Any) -> None:
        """Label the item ``relpath`` in ``overlay`` (written once, when the dataset freezes)."""
        self._overlays.setdefault(overlay, {})[relpath] = value

    def put_tag(self, tag: str) -> None:
        """Add a dtool tag."""
        self._proto.put_tag(tag)

    @property
    def relpaths(self) -> set[str]:
        """The relpaths of the items added so far."""
        return set(self._relpaths)

    def _freeze(self) -> Any:
        with hashed_on_all_cores(self._proto):
            self._proto.freeze()
        ds = frozen_dataset(self._proto.uri)
        ids = list(ds.identifiers)
        for name, by_rel in self._overlays.items():
            overlay = {idn: None for idn in ids}
            for rel, value in by_rel.items():
                overlay[item_identifier(rel)] = value
            ds.put_overlay(name, overlay)
        return ds


HASH_WORKERS_MAX = 8  # threads hashing a freeze's items (hashlib's md5 releases the GIL on large reads)


def prehash_items(proto: Any) -> dict[str, str] | None:
    """Each item's md5 (by handle), hashed on every core (threads; hashlib's md5 releases the GIL on
    large reads); None for a broker without local files (s3) or fewer than two items."""

    broker = getattr(proto, "_storage_broker", None)
    fpath = getattr(broker, "_fpath_from_handle", None)
    handles = list(broker.iter_item_handles()) if fpath is not None and broker is not None else []
    if len(handles) < 2:
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = min(HASH_WORKERS_MAX, len(handles), cores)
    path_of: Callable[[str], str] = fpath  # type: ignore[assignment]  # not None: handles is empty otherwise
    # hashing.file_md5 looked up per call, as the function-level import did: a test may replace it.
    return dict(bounded_map(lambda h: (h, hashing.file_md5(path_of(h))), handles, workers=workers))


@contextlib.contextmanager
def hashed_on_all_cores(proto: Any) -> Iterator[None]:
    """While the block runs, ``proto``'s broker answers each item's md5 from :func:`prehash_items`:
    dtool's freeze hashes one item after another. The manifest is the same (dtool's md5 of each file)."""
    hashes = prehash_items(proto)
    if hashes is None:
        yield
        return
    broker = proto._storage_broker
    original = broker.get_hash
    broker.get_hash = lambda handle: hashes.get(handle) or original(handle)
    try:
        yield
    finally:
        del broker.get_hash  # the class's method again


def writer_over(proto: Any, staging: str | os.PathLike[str], name: str) -> DatasetWriter:
    """A :class:`DatasetWriter` adding straight to a proto dataset someone else freezes (a dtoolcore
    ``DataSetCreator``'s); its temporary files go in a new directory under ``staging``."""
    own = Path(tempfile.mkdtemp(prefix="reprodl-", dir=os.fspath(staging)))
    return DatasetWriter(proto, own, name)


@contextlib.contextmanager
def create_dataset(
    base_uri: str | os.PathLike[str],
    name: str,
    *,
    readme: str = "",
    creator: str | None = None,
    resume_from: str | os.PathLike[str] | None = None,
) -> Iterator[DatasetWriter]:
    """Create a dataset atomically: frozen only if the block ends without an exception.

    The dataset is built in a hidden staging directory and moved into place (renamed, on
    the same filesystem, for file:// bases; copied for s3://, and removed there if the
    copy fails). A failure leaves no frozen dataset and no proto dataset behind; a process
    killed part-way leaves only its staging directory, which the next creation of the
    same name (or ``reprodl dataset clean``) removes once the process is gone, unless it holds
    a checkpoint (``writer.checkpoint_dir``): ``resume_from`` claims such a directory. An
    existing dataset of the same name is never overwritten, even by another process
    finishing the same name at the same moment (s3 datasets are keyed by a new UUID, so
    there the bucket is only checked to answer before anything is built).

    Example:
        >>> with create_dataset("/tmp/out", "numbers", readme="name: numbers") as w:  # doctest: +SKIP
        ...     w.put_bytes(b"1,2,3", "numbers.csv")
        >>> w.uri                                                                    # doctest: +SKIP
    """
    check_name(name)
    base = normalise_uri(base_uri)
    base_path = _check_base(base, name)
    try:
        staging = _staging(base_path, name, resume_from)
    except OSError as exc:
        raise write_error(exc, f"the dataset {name!r} at {base}") from exc
    keep = False
    try:
        admin = _dtoolcore().generate_admin_metadata(name, creator or current_user())
        proto = proto_dataset(admin, normalise_uri(str(staging)))
        proto.create()
        proto.put_readme(readme)
        writer = DatasetWriter(proto, staging, name)
        yield writer
        shutil.rmtree(writer._tmpfiles, ignore_errors=True)
        frozen = writer._freeze()
        if base_path is not None:
            move_into_place(staging / name, base_path / name)
            writer.uri = normalise_uri(str(base_path / name))
        else:
            writer.uri = _copy_to(StoredDataSet(normalise_uri(frozen.uri), frozen), base)
    except BaseException as exc:
        kept = latest_checkpoint(staging) if _keeps_checkpoint(exc) else None
        keep = kept is not None
        if isinstance(exc, OSError) and not isinstance(exc, StorageError) and _write_failure(exc):
            raise write_error(exc, f"the dataset {name!r} at {base}", kept=kept) from exc
        raise
    finally:
        release_staging(staging) if keep else shutil.rmtree(staging, ignore_errors=True)


def _staging(base_path: Path | None, name: str, resume_from: str | os.PathLike[str] | None) -> Path:
    """A new staging directory, or the claimed resumable one emptied of all but its checkpoints."""
    if resume_from is None:
        return make_staging(base_path, name, purpose="create")
    staging = claim_staging(resume_from, name)
    for leftover in (staging / name, staging / "_files"):
        shutil.rmtree(leftover, ignore_errors=True)
    return staging


def _check_base(base: str, name: str) -> Path | None:
    """Refuse a base URI a dataset ``name`` cannot be created in; its local path (None for s3).

    A local base must be a writable directory without ``name`` in it (leftover staging
    directories of killed processes are removed); an s3 bucket must answer. s3 datasets
    are keyed by a fresh UUID, so no name can clash there.
    """
    if urlparse(base).scheme in ("http", "https"):
        raise InvalidURIError(
            f"cannot create a dataset at {base}: http(s):// is read-only. Create it on disk "
            "or s3:// and publish it (`dtool publish`)"
        )
    base_path = local_path(base)
    if base_path is None:
        _probe_remote_base(base)  # before spending time building
        return None
    if not base_path.is_dir():
        raise StorageError(f"base URI {base} is not an existing directory: create {base_path} first")
    if (base_path / name).exists():
        raise DatasetExistsError(
            f"a dataset called {name!r} already exists at {base_path / name}: "
            "choose another name or remove it first (reprodl never overwrites)"
        )
    if not os.access(base_path, os.W_OK):
        raise StorageError(f"cannot write to {base_path}: permission denied")
    clean_staging(base_path, name=name)  # leftovers of killed processes
    return base_path


# OSErrors of a full or read-only disk, turned into a StorageError wherever a dataset is written
# (a permission error is not: inside the block it may come from reading the caller's input).
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}


def write_error(exc: OSError, what: str, *, kept: Path | None = None) -> StorageError:
    """The :class:`StorageError` for an OSError met while writing ``what`` (disk full, read-only...).

    ``kept``: the checkpoint of the training that was writing it, kept for a resume.
    """
    where = f" ({exc.filename})" if exc.filename else ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) or is_short_write(exc):
        fix, again = "free some space (or raise the quota)", " and run the command again"
    elif exc.errno == errno.EROFS:
        fix, again = "the filesystem is mounted read-only: write to another location", ""
    else:
        fix, again = "check its permissions, or write to a directory you own", ""
    reason = f"the disk is full or a file is over its size limit ({exc})" if is_short_write(exc) else exc.strerror
    if kept is not None:
        return StorageError(
            f"could not write {what}: {reason or exc}{where}. The dataset was not written, but the checkpoint "
            f"{kept} is kept: {fix}, then resume the training (`reprodl train CONFIG --resume`, or resume=True)"
        )
    return StorageError(f"could not write {what}: {reason or exc}{where}. Nothing was kept; {fix}{again}")


def _keeps_checkpoint(exc: BaseException) -> bool:
    """Whether a training that stopped with ``exc`` keeps its checkpoints for a resume.

    An interruption (a lost rank too), a refused or failed resume, and a failed write (a full
    disk: the checkpoint's own or the dataset's) keep them; an error of the training does not.
    """
    if not isinstance(exc, Exception) or isinstance(exc, (ResumeError, RankLostError, CheckpointWriteError)):
        return True
    return isinstance(exc, OSError) and _write_failure(exc)


def _write_failure(exc: OSError) -> bool:
    """A write that failed for want of space or permission to write (not an error of the training)."""
    return exc.errno in _WRITE_ERRNOS or is_short_write(exc)


def current_user() -> str:
    """The login name of whoever runs this ("unknown" where there is none)."""
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user in some containers
        return "unknown"


def find_resumable(base_uri: str | os.PathLike[str], name: str) -> Path:
    """The staging directory a killed training of ``name`` under ``base_uri`` left with a checkpoint.

    Local bases keep their staging directories inside; s3:// ones in the temporary directory
    (the checkpoint's meta names its base). Of several, the one with the most steps.

    Raises:
        ResumeError: none exists (naming where it looked), or the training is still running.
    """

    base = normalise_uri(base_uri)
    base_path = local_path(base)
    where = base_path if base_path is not None else Path(tempfile.gettempdir())
    found = [s for s in (find_staging(where) if where.is_dir() else []) if s.name == name]
    resumable = [s for s in found if s.state == "resumable" and (s.checkpoint or {}).get("base_uri") == base]
    if resumable:
        return Path(max(resumable, key=lambda s: int((s.checkpoint or {}).get("step") or 0)).path)
    running = [s for s in found if s.state == "running"]
    if running:
        raise ResumeError(
            f"the training {name!r} under {base} is still running (pid {running[0].pid}): wait for it to "
            "finish, or stop it before resuming"
        )
    raise ResumeError(
        f"there is no checkpoint of a killed training called {name!r} under {base} (looked in {where}): "
        "start it without --resume; a training writes checkpoints when given checkpoint_every"
    )
