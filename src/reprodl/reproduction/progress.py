"""Progress lines while ``reprodl reproduce`` waits for a re-executed script.

A script that prints nothing would show nothing during a long reproduction. The re-executed
script's recorder writes its step count to a file (:mod:`reprodl.training.progress`) whose path
:func:`reporting_progress` gives it in :data:`reprodl.keys.PROGRESS_FILE_ENV`; while the script
runs, a thread here reads that file and says ``reproduce: step 120 of 400 (30%)`` (the total is
the original record's step count) at most every :data:`reprodl.keys.PROGRESS_EVERY_S` seconds.

The lines go where the script's output goes (``on_output``: the CLI puts it on stderr, never
on stdout nor into ``--json``), else to stderr; only when stderr is a terminal, or when
:data:`reprodl.keys.PROGRESS_ENV` is ``1`` (``0`` hides them).

Example:
    >>> with reporting_progress(400, on_output) as extra_env:          # doctest: +SKIP
    ...     subprocess.run(command, env={**os.environ, **extra_env})
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator

from reprodl import keys
from reprodl.training.progress import lines_every


def progress_wanted() -> bool:
    """Whether to show progress: as :data:`reprodl.keys.PROGRESS_ENV` says, else when stderr is a terminal."""
    asked = os.environ.get(keys.PROGRESS_ENV, "").strip()
    if asked in ("0", "1"):
        return asked == "1"
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed
        return False


def progress_line(steps: int, total: int | None) -> str:
    """``reproduce: step 120 of 400 (30%)``; without a total (or past it), ``reproduce: step 120``."""
    if total and steps <= total:
        return f"reproduce: step {steps} of {total} ({100 * steps // total}%)"
    return f"reproduce: step {steps}"


@contextlib.contextmanager
def reporting_progress(total: int | None, on_output: Callable[[str], None] | None) -> Iterator[dict[str, str]]:
    """Around the wait for a re-executed script: yields the environment to give it (empty when no
    progress is wanted), and says its steps through ``on_output`` (else on stderr) meanwhile."""
    if not progress_wanted():
        yield {}
        return
    with tempfile.TemporaryDirectory(prefix="reprodl-progress-") as folder:
        path = os.path.join(folder, "steps")
        watcher = _Watcher(path, total, on_output or _to_stderr, lines_every())
        watcher.start()
        try:
            yield {keys.PROGRESS_FILE_ENV: path, keys.PROGRESS_EVERY_ENV: str(watcher.every)}
        finally:
            watcher.stop()


def _to_stderr(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


class _Watcher(threading.Thread):
    """Reads the step count the script writes; says it when it grew, at most every ``every`` seconds."""

    def __init__(self, path: str, total: int | None, say: Callable[[str], None], every: float) -> None:
        super().__init__(name="reprodl-progress", daemon=True)
        self.path, self.total, self.say, self.every = path, total, say, every
        self._done = threading.Event()
        self.shown = 0

    def run(self) -> None:
        last = time.monotonic()
        while not self._done.wait(min(self.every / 2, 1.0)):
            steps = self._read()
            if steps > self.shown and time.monotonic() - last >= self.every:
                self.say(progress_line(steps, self.total))
                self.shown, last = steps, time.monotonic()

    def _read(self) -> int:
        try:
            with open(self.path, encoding="ascii") as f:
                return int(f.read(32).strip() or 0)
        except (OSError, ValueError):  # not written yet
            return 0

    def stop(self) -> None:
        self._done.set()
        self.join(timeout=5)
