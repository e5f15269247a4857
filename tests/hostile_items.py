"""Items a stranger's dataset may hold in place of a regular file, and a bounded way to read them.

A dataset handed over as a directory may hold, where its manifest lists an item, a named pipe
(opening it waits for a writer for ever), a link to ``/dev/zero`` (read for ever) or a link to a
file outside the dataset. :func:`make_special` puts one there; :func:`bounded_call` runs a reader
in a child process with its time and address space bounded, so a reader that waits or reads for
ever fails the test quickly instead of hanging it.

Imported by name (``tests`` is on ``pythonpath``): ``from hostile_items import make_special``.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

SPECIAL = ["a named pipe", "a link to /dev/zero", "a link out of the dataset"]
SRC = str(Path(__file__).resolve().parents[1] / "src")
LIMIT_S = 60

# The child runs the reader's code with ``args`` (its command-line arguments) and prints what it raised.
_CHILD = """
import sys
args = sys.argv[1:]
try:
{body}
except Exception as exc:
    print(f"{{type(exc).__name__}}: {{exc}}")
else:
    print("returned")
"""


def make_special(path: Path, what: str) -> None:
    """Replace the file at ``path`` by ``what`` (one of :data:`SPECIAL`)."""
    content = path.read_bytes()
    path.unlink()
    if what == "a named pipe":
        os.mkfifo(path)
    elif what == "a link to /dev/zero":
        path.symlink_to("/dev/zero")
    else:  # the same bytes, in a file beside the dataset
        target = _outside(path)
        target.write_bytes(content)
        path.symlink_to(target)


def _outside(path: Path) -> Path:
    """A file path beside the dataset that holds ``path`` (the first parent with a ``.dtool``)."""
    for parent in path.parents:
        if (parent / ".dtool").is_dir():
            return parent.parent / f"outside-{path.name}"
    raise AssertionError(f"{path} is not in a dataset")


def _bounded() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))


def bounded_call(code: str, *args: str, timeout: float = LIMIT_S) -> str:
    """``code`` (Python reading ``args``) run in a child process: what it raised (``Type: message``),
    ``returned``, or ``timed out`` when it ran past ``timeout`` seconds (it is then killed)."""
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    program = _CHILD.format(body=textwrap.indent(textwrap.dedent(code).strip(), "    "))
    try:
        done = subprocess.run(
            [sys.executable, "-c", program, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            preexec_fn=_bounded,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout} s"
    return done.stdout.strip() or f"no output (exit {done.returncode}): {done.stderr[-2000:]}"


def make_oversized(path: Path, size: int) -> None:
    """Make the file at ``path`` a sparse regular file of ``size`` bytes (zeros, no disk used)."""
    with open(path, "r+b") as fh:
        fh.truncate(size)
