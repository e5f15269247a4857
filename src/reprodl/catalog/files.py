"""Files the catalog writes (``graph -o``, ``export -o``): never over another file unasked, never half-written.

Example:
    >>> with writing("team.jsonl", overwrite=False) as fh:      # doctest: +SKIP
    ...     fh.write("...")
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from reprodl.errors import CatalogError
from reprodl.files import share_as_umask


def check_output(path: str | os.PathLike[str], *, overwrite: bool, what: str) -> Path:
    """``path`` as a Path, when it may be written.

    Raises:
        CatalogError: it exists and ``overwrite`` is False, or is a directory, or its directory is missing.
    """
    out = Path(path)
    if out.is_dir():
        raise CatalogError(f"cannot write the {what} to {out}: it is a directory; give a file name")
    if out.exists() and not overwrite:
        raise CatalogError(f"{out} already exists: choose another path, or replace it with --overwrite")
    if not out.parent.is_dir():
        raise CatalogError(f"could not write the {what} {out}: the directory {out.parent} does not exist; create it")
    return out


@contextlib.contextmanager
def writing(path: str | os.PathLike[str], *, overwrite: bool, what: str) -> Iterator[TextIO]:
    """A text file to write ``path`` through: a temporary file beside it, renamed onto it when the
    block ends without an error (else removed, leaving ``path`` as it was). The file's mode follows
    the umask (0644 under 022), as ``open`` would make it.

    Raises:
        CatalogError: as :func:`check_output`, or the file could not be written (naming it).
    """
    out = check_output(path, overwrite=overwrite, what=what)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    except OSError as exc:
        raise CatalogError(f"could not write the {what} {out}: {exc.strerror or exc}; choose another path") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            share_as_umask(tmp)  # mkstemp makes it 0600
            yield fh
        os.replace(tmp, out)
    except OSError as exc:
        raise CatalogError(f"could not write the {what} {out}: {exc.strerror or exc}; choose another path") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
