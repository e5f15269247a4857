"""What every command shares: error handling, JSON output, progress bars."""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import re
import sys
import warnings
from collections.abc import Callable, Iterator
from typing import Any, Optional, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from reprodl import keys
from reprodl.errors import ExitCode, ReprodlError, ReprodlWarning

# A record's strings are someone else's: an escape sequence in a model name could clear the
# screen, retitle the terminal or rewrite the lines printed before it. CSI and OSC sequences
# are removed whole; then every other C0/C1 control character (but newline and tab), DEL and the
# bidirectional overrides that reorder what is shown.
_ESCAPE_SEQUENCE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-_]?")
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def sanitize_for_terminal(text: str) -> str:
    r"""``text`` without terminal control characters: escape sequences, carriage returns,
    backspaces, bells and bidirectional overrides are removed; newlines, tabs and the plain text
    stay. Every string the CLI prints goes through it (:class:`_SafeConsole`).

    Example:
        >>> sanitize_for_terminal("ok\x1b[2J\rdone\b!")
        'okdone!'
    """
    return _CONTROL.sub("", _ESCAPE_SEQUENCE.sub("", text))


class _SafeConsole(Console):
    """A Rich console whose every string (``print`` arguments, table cells, progress
    descriptions: all go through ``render_str``) is first passed through :func:`sanitize_for_terminal`.
    Rich's own styling is added after, so colours still work."""

    def render_str(self, text: str, *args: Any, **kwargs: Any) -> Any:
        return super().render_str(sanitize_for_terminal(text), *args, **kwargs)


out = _SafeConsole(highlight=False, soft_wrap=True)
err = _SafeConsole(stderr=True, highlight=False, soft_wrap=True)

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


# --- where several trainings run (compare, ablate, reproduce --executor) ----------------------
_ENV = keys.EXECUTOR_ENV
EXECUTOR_OPT = typer.Option(
    "local",
    "--executor",
    envvar=_ENV["executor"],
    help="Where the runs train: local (this machine's process pool), slurm (one job each, a job array "
    "through submitit; run the same command again to attach to jobs already submitted), ray (Ray tasks).",
)
RAY_ADDRESS_OPT = typer.Option(
    None,
    "--ray-address",
    envvar=_ENV["ray_address"],
    help="--executor ray: the cluster's address (host:port; default: a local one).",
)
PARTITION_OPT = typer.Option(
    None, "--partition", envvar=_ENV["partition"], help="--executor slurm: the partition (default: the cluster's)."
)
TIME_OPT = typer.Option(60, "--time", envvar=_ENV["time"], help="--executor slurm: each job's time limit, in minutes.")
CPUS_OPT = typer.Option(1, "--cpus", envvar=_ENV["cpus"], help="--executor slurm/ray: CPUs per run.")
GPUS_OPT = typer.Option(0, "--gpus", envvar=_ENV["gpus"], help="--executor slurm/ray: GPUs per run.")
MEM_OPT = typer.Option(
    None, "--mem", envvar=_ENV["mem"], help="--executor slurm: memory per run, in GB (default: the partition's)."
)


_EXECUTOR_PARAMS: list[tuple[str, Any, Any]] = [
    ("executor", EXECUTOR_OPT, str),
    ("ray_address", RAY_ADDRESS_OPT, Optional[str]),
    ("partition", PARTITION_OPT, Optional[str]),
    ("time", TIME_OPT, int),
    ("cpus", CPUS_OPT, int),
    ("gpus", GPUS_OPT, int),
    ("mem", MEM_OPT, Optional[float]),
]


def executor_options(fn: F) -> F:
    """Give a command the options --executor, --ray-address, --partition, --time, --cpus, --gpus and
    --mem; it receives them as ``engine``, an :class:`~reprodl.reproduction.executors.Executor`."""

    sig = inspect.signature(fn, eval_str=True, locals={"Executor": Any})  # engine's type is for mypy only
    kept = [p for p in sig.parameters.values() if p.name != "engine"]
    added = [
        inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=o, annotation=t) for n, o, t in _EXECUTOR_PARAMS
    ]

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from reprodl.reproduction.executors import Executor

        kind, ray_address, partition, time, cpus, gpus, mem = (kwargs.pop(n) for n, _, _ in _EXECUTOR_PARAMS)
        kwargs["engine"] = Executor(kind, ray_address, partition, time, cpus, gpus, mem)
        return fn(*args, **kwargs)

    wrapper.__signature__ = sig.replace(parameters=[*kept, *added])  # type: ignore[attr-defined]  # read by typer
    wrapper.__annotations__ = {
        **{k: v for k, v in fn.__annotations__.items() if k != "engine"},
        **{n: t for n, _, t in _EXECUTOR_PARAMS},
    }
    return wrapper  # type: ignore[return-value]  # functools.wraps keeps fn's signature; mypy sees Callable


ALLOW_OPT = typer.Option(
    None, "--allow", help="Module (or module:Class) trusted to be imported for the architecture; repeatable."
)
TRUSTED_KEY_OPT = typer.Option(
    None,
    "--trusted-key",
    help="Public key (KEY.pub file or its text; an ECDSA PEM checks a model-signing bundle) the model must be "
    "signed by; repeatable.",
)
