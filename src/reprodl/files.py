"""Files reprodl writes for people: atomic, and readable as the user's umask says.

``tempfile.mkstemp`` and ``mkdtemp`` create their files 0600 and directories 0700 (private, as
a temporary file should be); a report, an export or a catalog file renamed from one would stay
private to its owner. :func:`share_as_umask` gives it the mode a plain ``open()`` or ``mkdir``
would have.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

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
