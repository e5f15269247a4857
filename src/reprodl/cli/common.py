"""What every command shares: error handling, JSON output, progress bars."""

from __future__ import annotations

import contextlib
import functools
import json
import sys
import warnings
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from reprodl.errors import ExitCode, ReprodlError, ReprodlWarning

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

F = TypeVar("F", bound=Callable[..., Any])

JSON_OPT = typer.Option(False, "--json", help="Print the result as JSON on stdout.")
QUIET_OPT = typer.Option(False, "--quiet", "-q", help="No progress bars.")


def handle_errors(fn: F) -> F:
    """Turn reprodl's errors into a message on stderr and the error's exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with _warnings_on_stderr():
                return fn(*args, **kwargs)
        except ReprodlError as exc:
            # escape: messages quote user input (names, paths) that may contain [brackets]
            err.print(f"[bold red]Error:[/] {escape(str(exc))}", markup=True, highlight=False)
            raise typer.Exit(int(exc.exit_code)) from None
        except KeyboardInterrupt:
            err.print("Interrupted.")
            raise typer.Exit(int(ExitCode.INTERRUPTED)) from None

    return wrapper  # type: ignore[return-value]  # functools.wraps keeps fn's signature; mypy sees Callable


@contextlib.contextmanager
def _warnings_on_stderr() -> Iterator[None]:
    """Show each :class:`ReprodlWarning` (a damaged checkpoint passed over) as ``Warning: ...`` on stderr."""
    with warnings.catch_warnings():
        warnings.simplefilter("always", ReprodlWarning)
        show = warnings.showwarning

        def on_warning(message: Any, category: Any, *args: Any, **kwargs: Any) -> None:
            if issubclass(category, ReprodlWarning):
                err.print(f"Warning: {message}", markup=False)
            else:
                show(message, category, *args, **kwargs)

        warnings.showwarning = on_warning
        yield


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
    sys.stdout.flush()


@contextlib.contextmanager
def progress_bar(description: str, total: float | None, *, quiet: bool = False) -> Iterator[Callable[[float], None]]:
    """A Rich progress bar on stderr; yields ``advance(n)``. Silent when quiet or not a TTY."""
    if quiet:

        def ignore(n: float = 1) -> None:
            return None

        yield ignore
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task(description, total=total)

        def advance(n: float = 1) -> None:
            progress.advance(task, n)

        yield advance
