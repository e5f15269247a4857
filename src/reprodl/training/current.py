"""The run in progress in this process: what :func:`reprodl.current_run` returns.

A :class:`~reprodl.training.run.Run` is noted here when it starts and forgotten when it ends
(finished, or ended by its ``with`` block or an exception), so code that was not handed the run
(a training function under :func:`reprodl.recorded`, a helper deep in a script) can reach it.

Example:
    >>> run = current_run()       # doctest: +SKIP
    >>> run.log(epoch=1, loss=0.3)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from reprodl.errors import ParametersError

if TYPE_CHECKING:  # pragma: no cover
    from reprodl.training.run import Run

_RUNNING: list[Run] = []  # started and not ended, the latest last (runs may nest)


def started(run: Run) -> None:
    """``run`` has started (called by the run itself)."""
    _RUNNING.append(run)


def ended(run: Run) -> None:
    """``run`` has ended, however (called by the run itself)."""
    if run in _RUNNING:
        _RUNNING.remove(run)


def current_run() -> Run:
    """The run in progress (the latest started, when several are).

    Raises:
        ParametersError: no run is in progress, saying how to start one.
    """
    if not _RUNNING:
        raise ParametersError(
            "reprodl.current_run() was called outside a run: no run is in progress in this process. Call it "
            "inside a function decorated with @reprodl.recorded(base_uri, ...), inside a "
            "`with reprodl.start_run(...)` block, or between run = reprodl.start_run(...) and run.finish()"
        )
    return _RUNNING[-1]
