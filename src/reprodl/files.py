"""Files reprodl writes for people: atomic, readable as the user's umask says, and a clear
error when the disk is full.

``tempfile.mkstemp`` and ``mkdtemp`` create their files 0600 and directories 0700 (private, as
a temporary file should be); a report, an export or a catalog file renamed from one would stay
private to its owner. :func:`share_as_umask` gives it the mode a plain ``open()`` or ``mkdir``
would have.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from reprodl.errors import ReprodlError, StorageError

_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's umask (read by setting it and putting it back, under a lock)."""
    with _LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def share_as_umask(path: str | os.PathLike[str]) -> None:
    """Give ``path`` (and, for a directory, everything in it) the modes the umask allows.

    Files get ``0o666 & ~umask``, directories ``0o777 & ~umask``; symbolic links are left alone.
    """
    mask = current_umask()
    root = Path(path)
    todo = [root]
    while todo:
        p = todo.pop()
        if p.is_symlink():
            continue
        if p.is_dir():
            os.chmod(p, 0o777 & ~mask)
            todo.extend(p.iterdir())
        else:
            os.chmod(p, 0o666 & ~mask)


def open_regular(path: str | os.PathLike[str], *, what: str, error: type[ReprodlError] = StorageError) -> BinaryIO:
    """``path`` opened for reading, refused (``error`` naming ``what``) unless it is a regular file.

    A dataset handed over as a directory may hold, in place of an item, a link to ``/dev/zero`` (read for
    ever) or a named pipe (opening it waits for a writer for ever): it is opened without waiting, and
    its type checked on the open file.
    """
    try:
        fh = open(path, "rb", opener=lambda p, flags: os.open(p, flags | getattr(os, "O_NONBLOCK", 0)))
    except OSError as exc:
        raise error(f"{what} cannot be read: {exc.strerror or exc}") from None
    if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
        fh.close()
        raise error(f"{what} is not a regular file (a device, a pipe or a directory): refused, nothing read")
    return fh


def read_regular(
    path: str | os.PathLike[str], limit: int, *, what: str, error: type[ReprodlError] = StorageError
) -> bytes:
    """The bytes of the regular file at ``path`` (:func:`open_regular`), refused when it holds more
    than ``limit`` bytes (no more than ``limit + 1`` are read)."""
    with open_regular(path, what=what, error=error) as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise error(f"{what} holds more than {limit:,} bytes, the most it may: refused")
    return data


# A full disk, a quota, a file over RLIMIT_FSIZE: the writes that more space would let through.
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def is_short_write(exc: OSError) -> bool:
    """NumPy's ``tofile`` reports a full disk as an OSError with no errno ("N requested and M written")."""
    return exc.errno is None and "requested and" in str(exc) and "written" in str(exc)


@contextlib.contextmanager
def writing_output(what: str, path: str | os.PathLike[str]) -> Iterator[None]:
    """Turn a full disk or a read-only filesystem met while writing ``what`` at ``path`` into a
    :class:`StorageError` naming both; the block is expected to leave nothing half-written there."""
    try:
        yield
    except ReprodlError:
        raise
    except OSError as exc:
        if exc.errno in FULL_ERRNOS or is_short_write(exc):
            fix = "the disk is full (or the file is over its size limit): free some space and run the command again"
        elif exc.errno == errno.EROFS:
            fix = "the filesystem is read-only: write it somewhere else"
        else:
            raise
        raise StorageError(
            f"could not write {what} {os.fspath(path)}: {exc.strerror or exc}. Nothing was written there; {fix}"
        ) from exc
