"""The code a training ran: the entry script, its repository's commit, branch and uncommitted changes, and
the untracked files kept with it (never secrets, links, files outside the repository or too large).
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reprodl import keys
from reprodl.errors import DirtyCodeError
from reprodl.provenance import CodeInfo, GitInfo
from reprodl.provenance.code_env import RUN_OUTPUT


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        res = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout if res.returncode == 0 else None


def _git_many(commands: dict[str, list[str]], cwd: Path) -> dict[str, str | None]:
    """:func:`_git` for several commands, run concurrently; None for each that failed."""
    procs: dict[str, subprocess.Popen[str] | None] = {}
    for key, args in commands.items():
        try:
            procs[key] = subprocess.Popen(
                ["git", *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        except (OSError, subprocess.SubprocessError):
            procs[key] = None
    out: dict[str, str | None] = {}
    for key, proc in procs.items():
        if proc is None:
            out[key] = None
            continue
        try:
            stdout, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            out[key] = None
            continue
        out[key] = stdout if proc.returncode == 0 else None
    return out


def main_namespace() -> dict[str, Any]:
    """The globals of the script being run.

    That is the innermost frame running as ``__main__`` (the script, or its function that called
    reprodl): a script run under ``python -m cProfile``, ``pdb`` or ``trace`` runs in a namespace
    of its own, inside the tool's ``__main__`` frames, while ``sys.modules["__main__"]`` is the
    tool's module, so the tool's file must not be recorded as the script. Else (no such frame, as
    in another thread) ``__main__``'s globals.
    """
    found: dict[str, Any] | None = None
    frame = sys._getframe(1)
    while frame is not None and found is None:
        if frame.f_globals.get("__name__") == "__main__":
            found = frame.f_globals
        frame = frame.f_back  # type: ignore[assignment]  # None ends the walk
    if found is None:
        found = vars(sys.modules["__main__"]) if "__main__" in sys.modules else {}
    return found


def entry_script() -> Path | None:
    """The running script (the file of :func:`main_namespace`), if there is one."""
    path = main_namespace().get("__file__")
    if isinstance(path, str) and path and os.path.isfile(path):
        return Path(path).resolve()
    return None


# Untracked files are kept with the model (DeepDIVA's "backup" of uncommitted code) up to
# these sizes; larger ones are named in the record but not stored.
MAX_UNTRACKED_FILE = 1 << 20
MAX_UNTRACKED_TOTAL = 8 << 20

# Untracked files whose names mark them as secrets are never stored with a model (a model is
# made to be shared): matched case-insensitively against the file name, or against the path's
# tail for a pattern with a "/". Git-ignored files are never stored either.
SECRET_FILE_PATTERNS: tuple[str, ...] = (
    ".env",
    ".env.*",
    "id_rsa*",
    "id_dsa*",
    "id_ecdsa*",
    "id_ed25519*",
    "*.pem",
    "*.key",
    "*.p12",
    "*.pfx",
    "*.kdbx",
    "credentials",
    "credentials.json",
    ".netrc",
    ".pypirc",
    ".git-credentials",
    ".aws/credentials",
    ".ssh/*",
    ".pgpass",
    ".npmrc",
    ".docker/config.json",
    ".htpasswd",
    "secrets",
    "secrets.*",
    # Token files (token, token.json, .token, hf_token, api_token.txt, x.token), but not code
    # or vocabularies: tokenizer.py, token_utils.py, tokens.txt and token.py are stored.
    "token",
    ".token",
    "*.token",
    "token.[!p]*",
    "*_token",
    "*_token.[!p]*",
)

SKIP_SECRET = "secret"
SKIP_TOO_LARGE = "too large"
SKIP_SYMLINK = "symbolic link"
SKIP_OUTSIDE = "outside the repository"
SKIP_OPTED_OUT = "opted out"  # store_untracked=False
SKIP_RUN_OUTPUT = RUN_OUTPUT  # in a directory the run writes to: not code, and no cause of a dirty tree


def secret_pattern(relpath: str) -> str | None:
    """The deny-list pattern (:data:`SECRET_FILE_PATTERNS`) that ``relpath`` matches, or None.

    A pattern's components match the path's last components, each as :func:`fnmatch.fnmatchcase`
    of the lowered name (so ``*`` never crosses a ``/``). The patterns are compiled once; a file
    whose name matches no pattern's last component is checked only against the patterns whose last
    component is ``*`` (``.ssh/*``)."""
    parts = [p.lower() for p in Path(relpath).parts]
    if not parts:
        return None
    last_any, compiled, any_name = _compiled_secret_patterns()
    candidates = compiled if last_any.match(parts[-1]) else any_name
    for pattern, tail in candidates:
        if len(parts) >= len(tail) and all(t.match(p) for p, t in zip(parts[-len(tail) :], tail)):
            return pattern
    return None


_Compiled = list[tuple[str, list[re.Pattern[str]]]]


@functools.cache
def _compiled_secret_patterns() -> tuple[re.Pattern[str], _Compiled, _Compiled]:
    """(any named last component, every pattern, the patterns whose last component is ``*``), compiled."""
    compiled = [(p, [re.compile(fnmatch.translate(c)) for c in p.lower().split("/")]) for p in SECRET_FILE_PATTERNS]
    any_name = [(p, tail) for p, tail in compiled if p.lower().split("/")[-1] == "*"]
    named = [tail[-1].pattern for p, tail in compiled if (p, tail) not in any_name]
    return re.compile("|".join(f"(?:{r})" for r in named)), compiled, any_name


def _skip_reason(root: Path, rel: str, size_so_far: int) -> tuple[str | None, int]:
    """(why ``root/rel`` is not stored, or None; its size) for one untracked file."""
    path = root / rel
    if ".." in Path(rel).parts:
        return SKIP_OUTSIDE, 0
    if secret_pattern(rel) is not None:
        return SKIP_SECRET, 0
    if path.is_symlink():
        return SKIP_SYMLINK, 0
    size = path.stat().st_size
    if size > MAX_UNTRACKED_FILE or size_so_far + size > MAX_UNTRACKED_TOTAL:
        return SKIP_TOO_LARGE, size
    return None, size


def capture_code(
    where: str | os.PathLike[str] | None = None,
    *,
    store_untracked: bool = True,
    outputs: Sequence[str | os.PathLike[str]] = (),
) -> tuple[CodeInfo, str | None, dict[str, Path]]:
    """Code version of the entry script's repository (or ``where``).

    Returns (info, patch, files): the patch is ``git diff HEAD`` (staged and unstaged changes
    to tracked files), and files maps item relpaths to the untracked files (and, outside git,
    the entry script) to keep beside the model, so the exact code can be rebuilt.

    Untracked files that git ignores are never listed; those named like secrets
    (:data:`SECRET_FILE_PATTERNS`), symbolic links and files too large are not stored, and
    the record names each with the reason (never its content). ``store_untracked=False``
    stores none of them. ``outputs`` are the directories the run writes to (its models' base
    directory, a Trainer's log and checkpoint directories): the untracked files in them are its
    outputs, not code, so they are neither stored nor make the tree dirty, and the record names
    each as a ``run output``. A directory holding the working directory or the entry script is
    never one (``default_root_dir`` is the working directory).
    """
    script = entry_script()
    base = Path(where) if where else (script.parent if script else Path.cwd())
    info = CodeInfo(
        entry_script=str(script) if script else None,
        entry_script_sha256=_sha256_file(script) if script else None,
        argv=list(sys.argv),
        working_directory=os.getcwd(),
    )
    root = _git(["rev-parse", "--show-toplevel"], base)
    if root is None:
        files: dict[str, Path] = {}
        if script is not None:
            info.entry_script_item = f"{keys.CODE_DIR}entry/{script.name}"
            files[info.entry_script_item] = script
        return info, None, files
    keep = [Path.cwd(), *([script] if script else [])]
    out_dirs = [d for d in map(_resolved, outputs) if not any(_within(k, d) for k in map(_resolved, keep))]
    info.git, patch, files = _capture_git(Path(root.strip()), store_untracked=store_untracked, outputs=out_dirs)
    return info, patch, files


def _resolved(path: str | os.PathLike[str]) -> Path:
    return Path(os.path.realpath(path))


def _within(path: Path, directory: Path) -> bool:
    """Is ``path`` (resolved) ``directory`` (resolved) or inside it?"""
    return path.is_relative_to(directory)


def _capture_git(
    root: Path, *, store_untracked: bool, outputs: Sequence[Path] = ()
) -> tuple[GitInfo, str | None, dict[str, Path]]:
    """(git info, patch, untracked files to store) of the repository at ``root``; ``outputs`` resolved."""
    # Independent read-only queries: run them at once rather than one after another.
    res = _git_many(
        {
            "commit": ["rev-parse", "HEAD"],
            "branch": ["rev-parse", "--abbrev-ref", "HEAD"],
            "remote": ["config", "--get", "remote.origin.url"],
            "patch": ["diff", "HEAD", "--binary"],
            "changed": ["diff", "HEAD", "--name-only", "--no-renames", "-z"],
            # Untracked files, git-ignored ones left out (.gitignore, .git/info/exclude, core.excludesFile).
            "untracked": ["ls-files", "--others", "--exclude-standard", "-z", "--full-name"],
        },
        root,
    )
    commit = (res["commit"] or "").strip() or None
    patch = res["patch"] if commit else None
    # A tracked file named like a secret (a committed .env, edited since) stays out of the patch.
    patch_skipped = sorted(rel for rel in (res["changed"] or "").split("\0") if rel and secret_pattern(rel))
    if patch and patch_skipped:
        patch = _git(
            ["diff", "HEAD", "--binary", "--", ".", *(f":(exclude,literal){rel}" for rel in patch_skipped)], root
        )
    untracked = sorted(e for e in (res["untracked"] or "").split("\0") if e)
    # Datasets and models (and the one being written) inside the repository are data, not code.
    untracked = [rel for rel in untracked if not _inside_dataset(root, rel)]
    # What the run writes (its base directory, a Trainer's logs and checkpoints) is its output, not code.
    real_root = _resolved(root)
    produced = {rel for rel in untracked if any(_within(real_root / rel, d) for d in outputs)} if outputs else set()
    code = [rel for rel in untracked if rel not in produced]
    files, reasons = _select_untracked(root, code, store_untracked=store_untracked)
    reasons.update(dict.fromkeys(sorted(produced), SKIP_RUN_OUTPUT))
    skipped = list(reasons)[:200]
    git = GitInfo(
        commit=commit,
        branch=(res["branch"] or "").strip() or None,
        dirty=bool(patch) or bool(patch_skipped) or bool(code),
        remote=(res["remote"] or "").strip() or None,
        root=str(root),
        untracked=(code + sorted(produced))[:200],
        untracked_items=list(files),
        untracked_skipped=skipped,
        untracked_skipped_reasons={rel: reasons[rel] for rel in skipped},
        store_untracked=store_untracked,
        patch_skipped=patch_skipped[:200],
        patch_sha256=hashlib.sha256(patch.encode()).hexdigest() if patch else None,
    )
    return git, (patch or None), files


def _select_untracked(
    root: Path, untracked: list[str], *, store_untracked: bool
) -> tuple[dict[str, Path], dict[str, str]]:
    """(item relpath -> file, for the untracked files stored; relpath -> why, for those not)."""
    files: dict[str, Path] = {}
    reasons: dict[str, str] = {}
    total = 0
    for rel in untracked:
        try:
            why, size = _skip_reason(root, rel, total)
            if not store_untracked and why != SKIP_SECRET:
                why = SKIP_OPTED_OUT
        except OSError:
            continue
        if why is not None:
            reasons[rel] = why
            continue
        total += size
        files[f"{keys.CODE_DIR}untracked/{rel}"] = root / rel
    return files, reasons


def untracked_summary(git: GitInfo | None) -> str | None:
    """One line for people: what untracked files were stored with a model and what was skipped.

    Example: ``stored 2 untracked files: a.py, b.py (skipped: .env [secret])``, then the files left
    out as the run's outputs (``; left out as the run's outputs (not code): 1 file (runs/x.log)``);
    None when the training ran outside git or found no untracked file.
    """
    if git is None or not (git.untracked_items or git.untracked_skipped or git.patch_skipped):
        return None
    prefix = f"{keys.CODE_DIR}untracked/"
    names = [item.removeprefix(prefix) for item in git.untracked_items]
    line = f"stored {len(names)} untracked file{'' if len(names) == 1 else 's'}"
    if names:
        line += ": " + ", ".join(names)
    why = git.untracked_skipped_reasons
    outputs = [n for n in git.untracked_skipped if why.get(n) == SKIP_RUN_OUTPUT]
    skipped = [n for n in git.untracked_skipped if why.get(n) != SKIP_RUN_OUTPUT]
    if skipped:
        line += (
            " ("
            + ("store_untracked=False; " if not git.store_untracked else "")
            + "skipped: "
            + ", ".join(f"{n} [{why.get(n, SKIP_TOO_LARGE)}]" for n in skipped)
            + ")"
        )
    if outputs:
        shown = ", ".join(outputs[:3]) + (", ..." if len(outputs) > 3 else "")
        line += f"; left out as the run's outputs (not code): {len(outputs)} file{'' if len(outputs) == 1 else 's'}"
        line += f" ({shown})"
    if git.patch_skipped:
        line += f"; left out of the code patch: {', '.join(git.patch_skipped)} [secret]"
    return line


def _inside_dataset(root: Path, rel: str) -> bool:
    """Is ``root/rel`` inside a dtool dataset (a directory holding ``.dtool``) or reprodl's staging?"""
    parts = Path(rel).parts
    if any(p.startswith(".reprodl-staging-") or p == ".dtool" for p in parts):
        return True
    current = root
    for part in parts[:-1]:
        current = current / part
        if (current / ".dtool").is_dir():
            return True
    return False


def require_clean(info: CodeInfo) -> None:
    """DeepDIVA's version-control enforcement: refuse to train on uncommitted code."""
    git = info.git
    if git is None or not git.commit:
        raise DirtyCodeError(
            "refusing to train: the code is not in a git repository with a commit "
            "(require_clean_code=True). Commit it, or train without --require-clean"
        )
    if git.dirty:
        changed = "tracked files changed" if git.patch_sha256 else ""
        why = git.untracked_skipped_reasons
        code = [rel for rel in git.untracked if why.get(rel) != SKIP_RUN_OUTPUT]
        extra = f"{len(code)} untracked file(s): {', '.join(code[:5])}" if code else ""
        raise DirtyCodeError(
            f"refusing to train: the repository at {git.root} has uncommitted changes "
            f"({'; '.join(x for x in (changed, extra) if x)}). Commit them (or train without --require-clean, "
            "and reprodl stores the patch and untracked files with the model)"
        )


def _sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
