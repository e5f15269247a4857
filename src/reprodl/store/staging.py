"""Staging directories, atomic metadata writes and no-replace renames on local disk.

A dataset is built (created or copied) in a staging directory ``<base>/.reprodl-staging-
<name>-<random>`` and takes its final name by one rename only when complete, so a process
killed part-way leaves no dataset under the final name. Each staging directory holds a
marker file naming the process that owns it (pid, its start time, host); a staging
directory whose owner is gone is stale, and :func:`clean_staging` removes it. Nothing that
is not such a marked directory is ever removed, and no symlink is followed.

A stale directory holding a training's checkpoint (``checkpoint/``, written by
:mod:`reprodl.training.checkpoint`) is *resumable*: it is kept unless removing checkpoints is
asked for (``checkpoints=True``), since ``--resume`` continues the killed training from it;
:func:`claim_staging` hands it to the resuming process.

Example:
    >>> [s.state for s in find_staging("/data")]            # doctest: +SKIP
    ['stale']
    >>> clean_staging("/data")                              # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import json
import os
import shutil
import socket
import stat
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

from reprodl import keys
from reprodl.errors import DatasetExistsError
from reprodl.files import share_as_umask

State = Literal["stale", "resumable", "running", "other-host", "unmarked"]
_MARKER_LIMIT = 4096  # bytes: a marker is a few dozen; anything larger is not ours


@dataclasses.dataclass
class StagingDir:
    """A staging directory found under a base directory, and whether its owner is gone."""

    path: str
    state: State  # stale: owner gone (removable); resumable: stale with a checkpoint; unmarked: kept
    name: str | None = None
    pid: int | None = None
    hostname: str | None = None
    purpose: str | None = None
    created: float | None = None
    removed: bool = False
    checkpoint: dict[str, Any] | None = None  # the latest checkpoint's meta summary (epoch, step, at)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --- writing ---------------------------------------------------------------------------
def atomic_write_text(path: str | os.PathLike[str], text: str, *, tmp_dir: str | None = None) -> None:
    """Write ``text`` to ``path`` so that it holds the old content or the new, never a part.

    The text goes to a temporary file in ``tmp_dir`` (default: the same directory; it must
    be on the same filesystem), is flushed to disk, and replaces ``path`` in one rename. A
    failure (a full disk) removes the temporary file and leaves ``path`` as it was. The file
    gets the mode the umask gives (``mkstemp`` makes it 0600: others sharing the dataset could
    not read an annotation or README written so).
    """
    path = os.fspath(path)
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=keys.METADATA_TMP_PREFIX, dir=tmp_dir or directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        share_as_umask(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(directory)


def fsync_dir(directory: str) -> None:
    """Make a rename in ``directory`` durable (best effort: not every filesystem allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def rename_noreplace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Rename ``src`` to ``dst``, raising FileExistsError if ``dst`` exists (even if empty).

    Linux's ``renameat2(RENAME_NOREPLACE)`` makes the check and the rename one step, so of
    two processes that finish the same name at once exactly one wins. Elsewhere (or on a
    filesystem without it) a check then ``os.rename``, whose "not empty" error also becomes
    FileExistsError.
    """
    src, dst = os.fspath(src), os.fspath(dst)
    renameat2 = _renameat2()
    if renameat2 is not None:
        if renameat2(-100, os.fsencode(src), -100, os.fsencode(dst), 1) == 0:  # AT_FDCWD, NOREPLACE
            return
        code = ctypes.get_errno()
        if code == errno.EEXIST:
            raise FileExistsError(code, os.strerror(code), dst)
        if code not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
            raise OSError(code, os.strerror(code), src)
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), dst)
    try:
        os.rename(src, dst)
    except OSError as exc:
        if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), dst) from exc
        raise


def move_into_place(built: str | os.PathLike[str], final: str | os.PathLike[str]) -> None:
    """Give a finished dataset its final name; DatasetExistsError if another process took it."""
    try:
        rename_noreplace(built, final)
    except FileExistsError:
        raise DatasetExistsError(
            f"a dataset called {os.path.basename(final)!r} appeared at {final} while this one "
            "was being built (another process made it); this one was discarded. Use that "
            "one or choose another name"
        ) from None


def _renameat2() -> Any:
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


# --- staging directories ---------------------------------------------------------------
def make_staging(parent: str | os.PathLike[str] | None, name: str, *, purpose: str) -> Path:
    """A new staging directory for dataset ``name`` under ``parent``, marked as this process's."""
    staging = Path(tempfile.mkdtemp(prefix=f"{keys.STAGING_PREFIX}{name}-", dir=parent))
    _write_marker(staging, name, purpose=purpose)
    return staging


def _write_marker(staging: Path, name: str, *, purpose: str) -> None:
    marker = {
        "pid": os.getpid(),
        "start": _process_start(os.getpid()),
        "hostname": socket.gethostname(),
        "name": name,
        "purpose": purpose,
        "created": time.time(),
    }
    atomic_write_text(staging / keys.STAGING_MARKER, json.dumps(marker, sort_keys=True))


def _process_start(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, Linux), to tell a reused pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
        return fields[19].decode()
    except (OSError, IndexError):
        return None


def _owner_alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process: alive
    now = _process_start(pid)
    return start is None or now is None or now == start


def _read_marker(staging: Path) -> dict[str, Any] | None:
    """The marker of a staging directory; None when it has none we wrote (never a link)."""
    marker = staging / keys.STAGING_MARKER
    try:
        fd = os.open(marker, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        raw = os.read(fd, _MARKER_LIMIT + 1)
        data = json.loads(raw) if len(raw) <= _MARKER_LIMIT else None
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)
    ok = (
        isinstance(data, dict)
        and type(data.get("pid")) is int
        and data["pid"] > 0
        and isinstance(data.get("hostname"), str)
        and isinstance(data.get("name"), str)
    )
    return data if ok else None


def list_checkpoints(staging: str | os.PathLike[str]) -> list[Path]:
    """The complete checkpoint directories (``checkpoint/ckpt-<step>``) of a staging directory, newest first."""
    root = Path(staging) / keys.CHECKPOINT_DIR
    if not root.is_dir() or root.is_symlink():
        return []
    done = [p for p in root.iterdir() if p.name.startswith("ckpt-") and not p.is_symlink() and p.is_dir()]
    return sorted(done, key=lambda p: p.name, reverse=True)


def latest_checkpoint(staging: str | os.PathLike[str]) -> Path | None:
    """The newest complete checkpoint directory (``checkpoint/ckpt-<step>``) of a staging directory."""
    found = list_checkpoints(staging)
    return found[0] if found else None


def checkpoint_summary(staging: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The meta (JSON, ours, bounded) of the newest checkpoint in ``staging`` that has a readable one.

    None without one. A damaged newest checkpoint is passed over: the one before it is resumable.
    """
    for checkpoint in list_checkpoints(staging):
        meta = read_checkpoint_meta(checkpoint)
        if meta is not None and meta.get("format") == keys.CHECKPOINT_FORMAT:
            return meta
    return None


def read_checkpoint_meta(checkpoint: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``meta.json`` of one checkpoint directory (JSON we wrote, read bounded); None if unreadable."""
    try:
        fd = os.open(Path(checkpoint) / keys.CHECKPOINT_META, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    try:
        raw = os.read(fd, keys.MAX_CHECKPOINT_META_BYTES + 1)
        data = json.loads(raw) if len(raw) <= keys.MAX_CHECKPOINT_META_BYTES else None
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)
    return data if isinstance(data, dict) else None


def _inspect(path: Path) -> StagingDir:
    marker = _read_marker(path)
    if marker is None:
        return StagingDir(str(path), "unmarked")
    checkpoint = None
    if marker["hostname"] != socket.gethostname():
        state: State = "other-host"
    else:
        start = marker.get("start") if isinstance(marker.get("start"), str) else None
        released = marker.get("released") is True
        state = "running" if not released and _owner_alive(marker["pid"], start) else "stale"
        checkpoint = checkpoint_summary(path)
        if state == "stale" and checkpoint is not None:
            state = "resumable"
    created = marker.get("created")
    summary = {k: checkpoint.get(k) for k in ("epoch", "step", "at", "base_uri")} if checkpoint else None
    return StagingDir(
        str(path),
        state,
        name=marker["name"],
        pid=marker["pid"],
        hostname=marker["hostname"],
        purpose=str(marker.get("purpose")),
        created=created if isinstance(created, (int, float)) else None,
        checkpoint=summary,
    )


def find_staging(base: str | os.PathLike[str]) -> list[StagingDir]:
    """The staging directories directly under the directory ``base`` (symlinks are skipped)."""
    found = []
    with os.scandir(base) as entries:
        for entry in entries:
            if entry.name.startswith(keys.STAGING_PREFIX) and entry.is_dir(follow_symlinks=False):
                found.append(_inspect(Path(entry.path)))
    return sorted(found, key=lambda s: s.path)


def clean_staging(
    base: str | os.PathLike[str], *, name: str | None = None, dry_run: bool = False, checkpoints: bool = False
) -> list[StagingDir]:
    """Remove the stale staging directories under ``base`` (of dataset ``name`` only, if given).

    A staging directory is removed only when its marker says it was made on this host by a
    process that is gone (a pid reused since is told apart by its start time). Unmarked
    directories, those of running processes and those of other hosts are kept, and so are
    resumable ones (a killed training's checkpoint) unless ``checkpoints`` is true. Returns
    every staging directory found (for ``name``: those of that name), ``removed`` set on
    those removed (with ``dry_run``, none is removed).
    """
    removable = ("stale", "resumable") if checkpoints else ("stale",)
    found = [s for s in find_staging(base) if name is None or s.name == name]
    for s in found:
        if s.state not in removable or dry_run:
            continue
        path = Path(s.path)
        # Check again just before: still a real directory, still the same stale marker.
        if not stat.S_ISDIR(os.lstat(path).st_mode) or _inspect(path).state not in removable:
            continue
        shutil.rmtree(path, ignore_errors=True)  # fd-based: never follows a symlink inside
        s.removed = not os.path.lexists(path)
    return found


def claim_staging(staging: str | os.PathLike[str], name: str) -> Path:
    """Take over the resumable staging directory ``staging`` of dataset ``name`` for this process.

    It is renamed (one step: of two processes claiming it, one wins) and marked as this
    process's, so the cleaner keeps it while this process runs.

    Raises:
        FileNotFoundError: it is gone, or no longer resumable (another process claimed it).
    """
    path = Path(staging)
    found = _inspect(path) if path.is_dir() and not path.is_symlink() else None
    if found is None or found.state != "resumable" or found.name != name:
        raise FileNotFoundError(errno.ENOENT, "no resumable staging directory of that name", str(path))
    claimed = Path(tempfile.mkdtemp(prefix=f"{keys.STAGING_PREFIX}{name}-", dir=path.parent))
    os.rmdir(claimed)  # the name only: the rename below takes it, or fails if another took the source
    os.rename(path, claimed)
    _write_marker(claimed, name, purpose="resume")
    return claimed


def release_staging(staging: str | os.PathLike[str]) -> None:
    """Mark this process's staging directory as no longer owned (kept for a resume; the cleaner may list it)."""
    path = Path(staging)
    marker = _read_marker(path)
    if marker is not None:
        with contextlib.suppress(OSError):  # a full disk: once this process is gone, its marker says so too
            atomic_write_text(path / keys.STAGING_MARKER, json.dumps({**marker, "released": True}, sort_keys=True))
