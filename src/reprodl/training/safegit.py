"""Running git where reprodl may: the repository the user is in or names, never one a record names.

A record names a repository root, and a model dataset can carry a ``.git`` directory among its
items: git runs hooks (``post-index-change`` after ``read-tree``...) and the ``core.fsmonitor``
command a repository's config names, so running git there runs the dataset's code. reprodl
therefore runs git on a record's behalf only

1. in the repository the user is in (the current directory's) or names, never at a path taken
   from a record, and never in a directory inside a dtool dataset (a ``.dtool`` folder above it);
2. with hooks and fsmonitor disabled (``-c core.fsmonitor= -c core.hooksPath=<empty dir>``),
   without the system or global config (``GIT_CONFIG_NOSYSTEM``, ``GIT_CONFIG_GLOBAL``), and
   with no ``GIT_*`` variable of the caller's environment (``GIT_DIR`` would point elsewhere).

Example:
    >>> root, why = user_repository()                          # doctest: +SKIP
    >>> run_git(root, "rev-parse", "HEAD").stdout               # doctest: +SKIP
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path


def git_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without its ``GIT_*`` variables, with no system or global config."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL=os.devnull, GIT_TERMINAL_PROMPT="0")
    env.update(extra or {})
    return env


def run_git(
    cwd: str | os.PathLike[str],
    *args: str,
    env: dict[str, str] | None = None,
    stdin: bytes | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[bytes]:
    """``git args`` in ``cwd`` with hooks and fsmonitor off and no system or global config.

    ``env`` adds variables (``GIT_INDEX_FILE``...) to :func:`git_env`. The caller chooses ``cwd``
    by the rules above (:func:`user_repository`, or a temporary tree reprodl built).
    """
    with tempfile.TemporaryDirectory(prefix="reprodl-nohooks-") as hooks:
        command = ["git", "-c", "core.fsmonitor=", "-c", f"core.hooksPath={hooks}", *args]
        return subprocess.run(command, cwd=cwd, capture_output=True, input=stdin, env=git_env(env), timeout=timeout)


def dataset_above(path: str | os.PathLike[str]) -> Path | None:
    """The dtool dataset (a directory holding ``.dtool``) that ``path`` is in or is; None if none."""
    here = Path(os.path.abspath(path))
    for candidate in (here, *here.parents):
        if (candidate / ".dtool").is_dir():
            return candidate
    return None


def user_repository(named: str | os.PathLike[str] | None = None) -> tuple[Path | None, str]:
    """(the repository's root, "") for the repository the user names, else the one the current
    directory is in; (None, why not) when there is none, or it lies inside a dataset."""
    start = Path(os.path.abspath(named if named is not None else os.getcwd()))
    where = "the repository you named" if named is not None else "the current directory"
    inside = dataset_above(start)
    if inside is not None:
        return None, f"{where} ({start}) is inside the dataset {inside}, where reprodl never runs git"
    try:
        res = run_git(start, "rev-parse", "--show-toplevel", timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"git cannot run in {start}: {exc}"
    if res.returncode != 0:
        return None, f"{where} ({start}) is not in a git repository"
    root = Path(res.stdout.decode(errors="surrogateescape").strip())
    inside = dataset_above(root)
    if inside is not None:
        return None, f"the repository {root} is inside the dataset {inside}, where reprodl never runs git"
    return root, ""
