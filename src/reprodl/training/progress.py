"""A re-executed script's progress, told to the ``reprodl reproduce`` waiting for it.

``reprodl reproduce`` passes a file path in :data:`reprodl.keys.PROGRESS_FILE_ENV`; the
recorder's step path calls :meth:`ProgressFile.step` after every counted step, which writes the
step count there (atomically: a temporary file renamed over it) at most about once a second, so
a step costs one clock read. The parent (:mod:`reprodl.reproduction.progress`) reads it and
prints a progress line. Without the variable (any training but a reproduction's) nothing is written.

Example:
    >>> progress = ProgressFile.from_environment()   # doctest: +SKIP
    >>> progress.step(120) if progress else None     # doctest: +SKIP
"""

from __future__ import annotations

import os
import time

from reprodl import keys


class ProgressFile:
    """Writes the steps done to ``path`` at most every ``every`` seconds (and the first step at once)."""

    def __init__(self, path: str, every: float = 1.0) -> None:
        self.path, self.every = path, every
        self._next = 0.0
        self._failed = False

    @classmethod
    def from_environment(cls) -> ProgressFile | None:
        """The writer ``reprodl reproduce`` asked for, or None when none was asked for."""
        path = os.environ.get(keys.PROGRESS_FILE_ENV)
        if not path:
            return None
        return cls(path, every=min(1.0, lines_every() / 2))

    def step(self, steps: int) -> None:
        """``steps`` steps are done: written when the last write is ``every`` seconds old."""
        now = time.monotonic()
        if now < self._next or self._failed:
            return
        self._next = now + self.every
        self.write(steps)

    def write(self, steps: int) -> None:
        """Write ``steps`` now (a failure to write only stops the progress, never the training)."""
        tmp = f"{self.path}.{os.getpid()}.tmp"
        try:
            with open(tmp, "w", encoding="ascii") as f:
                f.write(f"{steps}\n")
            os.replace(tmp, self.path)
        except OSError:
            self._failed = True  # the reproduction's directory is gone: progress is a nicety


def lines_every() -> float:
    """Seconds between progress lines: :data:`reprodl.keys.PROGRESS_EVERY_ENV`, else the default."""
    try:
        value = float(os.environ.get(keys.PROGRESS_EVERY_ENV) or keys.PROGRESS_EVERY_S)
    except ValueError:
        return keys.PROGRESS_EVERY_S
    return value if value > 0 else keys.PROGRESS_EVERY_S
