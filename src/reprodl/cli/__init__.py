"""The `reprodl` command line: a thin shell over the library (parse, call, print).

The command modules are listed in :data:`GROUPS`; each has a ``register(app)`` that adds its
commands (or its group, ``reprodl dataset ...``) to :data:`app`. :func:`build` calls them once,
in that order (the order ``reprodl --help`` lists them); no module registers anything by being
imported, and none imports this package's ``app``. The command modules import their heavy
packages (torch, the store) inside the commands, so ``reprodl --help`` stays fast.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Optional

import typer

from reprodl import __version__

#: The command modules (``reprodl.cli.<name>``), each with ``register(app)``, in registration order.
GROUPS = ("dataset", "catalog", "claims", "export", "signing", "train", "reproduce", "model", "report")

app = typer.Typer(
    name="reprodl",
    help="Reproducible deep learning: datasets on dtool, training with provenance, one-command reproduction.",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"reprodl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Optional[bool] = typer.Option(
        None, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """reprodl: make deep-learning models reproducible by construction."""


_built: list[str] = []


def build() -> typer.Typer:
    """:data:`app` with every command of :data:`GROUPS` registered (once, however often called)."""
    if not _built:
        for name in GROUPS:
            importlib.import_module(f"reprodl.cli.{name}").register(app)
            _built.append(name)
    return app


_register = build  # the name tests and entry points used before build()


def main() -> None:
    build()
    try:
        app()
    except SystemExit as exc:
        if _one_of_several_torchrun_processes():
            _exit_now(exc.code)
        raise


def _one_of_several_torchrun_processes() -> bool:
    """Whether this is one rank of a torchrun launch of several processes that imported torch."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "torch" in sys.modules
    except ValueError:
        return False


def _exit_now(code: object) -> None:
    """Leave without the interpreter's teardown, once the command has finished and said so.

    With torch 2.13, gloo's threads can abort a process at interpreter teardown ("terminate
    called without an active exception", status -6) after a run that succeeded and left its
    process group; torchrun then reports the launch as failed. Measured here: 1 launch in 8 of
    ``reprodl train`` under torchrun, none in 12 leaving this way. Output is flushed first.
    """
    status = code if isinstance(code, int) else (0 if code is None else 1)
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def create_image_dataset_from_dirtree_main() -> None:
    """The paper's command name: create-image-dataset-from-dirtree DIR BASE_URI NAME."""
    from reprodl.cli import dataset

    typer.main.get_command(dataset.app)(
        ["create-from-dirtree", *sys.argv[1:]], prog_name="create-image-dataset-from-dirtree"
    )


def provenance_main() -> None:
    """The paper's dtoolai-provenance URI (also installed as reprodl-provenance URI)."""
    build()
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    typer.main.get_command(app)(["provenance", *sys.argv[1:]], prog_name=prog or "reprodl-provenance")
