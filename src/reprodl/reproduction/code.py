"""Checking the recorded code before a re-run: is the commit here, does the recorded patch apply?

git runs only in the repository you are in or name, with hooks and fsmonitor off
(:mod:`reprodl.training.safegit`); never at the root a record names, nor inside a dataset.

Example:
    >>> check_code(record).status                          # doctest: +SKIP
    'available'
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Literal

from reprodl.files import open_regular
from reprodl.provenance import ProvenanceRecord
from reprodl.store import StoredDataSet
from reprodl.training.safegit import run_git, user_repository

CodeStatus = Literal["unknown", "missing", "available", "patch does not apply", "re-executed"]


@dataclasses.dataclass(frozen=True)
class CodeCheck:
    """What :func:`check_code` (and :func:`check_patch`) found about the recorded code.

    ``None`` in a field: not checked (no commit recorded, the commit is missing, no patch).
    """

    status: CodeStatus
    message: str
    recorded_commit: str | None = None
    dirty: bool = False
    commit_available: bool | None = None
    current_commit: str | None = None
    same_commit: bool | None = None
    patch_item: str | None = None
    patch_applies: bool | None = None
    command: list[str] | None = None  # re-executed runs: the command run in the stored code
    working_directory: str | None = None
    code_digest: str | None = None
    repository: str | None = None  # the repository git ran in: yours, never the record's

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: recorded_commit, dirty, status, message, and the fields that were checked."""
        always = ("recorded_commit", "dirty", "status", "message")
        out = {name: getattr(self, name) for name in always}
        for field in dataclasses.fields(self):
            if field.name not in always and getattr(self, field.name) is not None:
                out[field.name] = getattr(self, field.name)
        return out


def check_code(record: ProvenanceRecord, *, repo: str | os.PathLike[str] | None = None) -> CodeCheck:
    """Is the recorded commit available here, and is the checkout at it?

    git runs only in the repository you are in (the current directory's) or name with ``repo``
    (:mod:`reprodl.training.safegit`), never at the root the record names: outside one, the
    code is not checked (status ``unknown``) and the message says where to run from.
    """
    git = record.code.git
    unknown = CodeCheck(
        "unknown",
        "the training ran outside a git repository; code cannot be checked",
        recorded_commit=git.commit if git else None,
        dirty=bool(git and git.dirty),
    )
    if not git or not git.commit:
        return unknown
    root, why = user_repository(repo)
    if root is None:
        message = (
            f"commit {git.commit[:12]} was not checked: {why}. reprodl runs git only in the repository you are in "
            f"or name, never at the recorded root ({git.root}): run reproduce from inside a clone of "
            f"{git.remote or 'the original repository'}"
        )
        return dataclasses.replace(unknown, message=message)
    try:
        has = run_git(root, "cat-file", "-e", f"{git.commit}^{{commit}}").returncode == 0
    except (OSError, subprocess.SubprocessError):
        has = False
    if not has:
        message = (
            f"commit {git.commit} is not in the repository you are in ({root}): fetch it "
            f"({git.remote or 'the original remote'}) to rebuild the exact code"
        )
        return dataclasses.replace(
            unknown, status="missing", message=message, commit_available=False, repository=str(root)
        )
    head = run_git(root, "rev-parse", "HEAD").stdout.decode().strip()
    message = f"commit {git.commit[:12]} is available in {root}" + (
        "" if head == git.commit else f"; the checkout is at {head[:12]}, so the re-run uses different code"
    )
    return dataclasses.replace(
        unknown,
        status="available",
        message=message,
        commit_available=True,
        current_commit=head,
        same_commit=head == git.commit,
        patch_item=git.patch_item or None,
        repository=str(root),
    )


def _read_patch(model_ds: StoredDataSet, relpath: str) -> bytes:
    """The stored patch, read up to one byte past its manifest's size (a longer one differs from it)."""
    idn = model_ds.identifier_of(relpath)
    size = model_ds.item_properties(idn).get("size_in_bytes")
    limit = size if isinstance(size, int) and size >= 0 else 0
    with open_regular(model_ds.item_path(idn), what=f"the stored patch {relpath!r} of {model_ds.uri}") as fh:
        return fh.read(limit + 1)


def check_patch(record: ProvenanceRecord, model_ds: StoredDataSet, code: CodeCheck) -> CodeCheck:
    """``code`` with whether the recorded uncommitted patch applies to the recorded commit, in the
    repository ``code`` was checked in (a scratch index: the checkout is not touched)."""
    git = record.code.git
    if not git or not git.patch_item or not git.commit or not code.commit_available or not code.repository:
        return code
    patch = _read_patch(model_ds, git.patch_item)
    if git.patch_sha256 and hashlib.sha256(patch).hexdigest() != git.patch_sha256:
        return dataclasses.replace(
            code,
            patch_applies=False,
            status="patch does not apply",
            message=f"the stored patch {git.patch_item} does not match its recorded sha256: it was not checked",
        )
    with tempfile.TemporaryDirectory() as tmp:
        env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        run_git(code.repository, "read-tree", git.commit, env=env)
        res = run_git(code.repository, "apply", "--cached", "--check", "-", env=env, stdin=patch)
    if res.returncode == 0:
        return dataclasses.replace(code, patch_applies=True)
    return dataclasses.replace(
        code,
        patch_applies=False,
        status="patch does not apply",
        message=f"the recorded patch does not apply to {git.commit[:12]}: {res.stderr.decode().strip()}",
    )
