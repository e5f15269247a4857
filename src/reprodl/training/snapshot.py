"""The source snapshot: the code that trained a model, stored with the model.

A run made with :func:`reprodl.start_run` stores a tar of the tracked files at the recorded
commit (``git archive``), beside the uncommitted patch and the untracked files that
:func:`reprodl.training.source.capture_code` already keeps. Together they rebuild the working
tree as it was, so a model reproduces from its URI alone, even where its repository is gone.
Tracked files named like secrets are left out (named in the record). Above
:data:`MAX_SNAPSHOT_BYTES` only the commit, remote and patch are kept, with a note.

Example:
    >>> info, tar_path = capture_snapshot(code.git, workdir)      # doctest: +SKIP
    >>> materialise(load_code(record, model_ds), "/tmp/code")     # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import subprocess
import tarfile
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

from reprodl import keys
from reprodl.errors import IntegrityError, ReproductionError
from reprodl.files import open_regular
from reprodl.provenance.record import GitInfo, ProvenanceRecord, SourceSnapshot
from reprodl.training.safegit import run_git, user_repository
from reprodl.training.source import secret_pattern

MAX_SNAPSHOT_BYTES = 20 << 20  # 20 MiB of tar


def _git_bytes(args: list[str], cwd: str | os.PathLike[str]) -> bytes | None:
    try:
        res = subprocess.run(["git", *args], cwd=cwd, capture_output=True, timeout=120)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout if res.returncode == 0 else None


def capture_snapshot(git: GitInfo | None, workdir: Path) -> tuple[SourceSnapshot | None, Path | None]:
    """(what was captured, the tar file to store or None) for the tracked files at ``git.commit``.

    ``workdir`` is a private directory the tar is written into. Returns (None, None) outside git.
    """
    if git is None or not git.commit or not git.root:
        return None, None
    listing = _git_bytes(["ls-tree", "-r", "-z", "--name-only", "--full-tree", git.commit], git.root) or b""
    names = [n for n in listing.decode(errors="surrogateescape").split("\0") if n]
    excluded = sorted(n for n in names if secret_pattern(n))
    info = SourceSnapshot(commit=git.commit, excluded=excluded, n_files=len(names) - len(excluded))
    pathspec = ["--", ".", *(f":(exclude,literal){n}" for n in excluded)] if excluded else []
    data = _git_bytes(["archive", "--format=tar", git.commit, *pathspec], git.root)
    if data is None:
        info.note = f"git archive of commit {git.commit} failed: only the commit, remote and patch are recorded"
        return info, None
    if len(data) > MAX_SNAPSHOT_BYTES:
        info.note = (
            f"the tracked files at {git.commit[:12]} take {len(data) / 2**20:.1f} MiB, over the "
            f"{MAX_SNAPSHOT_BYTES >> 20} MiB cap: no snapshot stored; reproduce from a clone of "
            f"{git.remote or 'the repository'} at that commit (the patch and untracked files are stored)"
        )
        info.size = len(data)
        return info, None
    path = workdir / "snapshot.tar"
    path.write_bytes(data)
    info.item, info.size = keys.CODE_SNAPSHOT_FILE, len(data)
    info.sha256 = hashlib.sha256(data).hexdigest()
    return info, path


@dataclasses.dataclass(frozen=True)
class StoredCode:
    """The code a run-API record re-executes, read once from the model dataset and checked.

    ``tar``: the tracked files (the snapshot item, else ``git archive`` of the recorded commit in
    the repository you are in); ``patch``: the uncommitted patch; ``files``: path in the tree ->
    bytes (the untracked files, or the entry script outside git). ``digest`` covers these bytes,
    so it is the digest of what runs; the tree is rebuilt from them (:func:`materialise`).
    """

    tar: bytes | None
    tar_source: str
    patch: bytes | None
    files: dict[str, bytes]
    digest: str


def load_code(record: ProvenanceRecord, model_ds: Any, *, repo: str | os.PathLike[str] | None = None) -> StoredCode:
    """The code a run-API record re-executes, each item checked before anything is written.

    Every item (snapshot, patch, untracked files, entry script) must be in the model's manifest
    with the same content, and match the sha256 its record gives; snapshot members and file
    paths must stay inside the tree, name no ``.git`` and link nowhere outside. Refused with
    :class:`IntegrityError` naming the item (or member); nothing runs or is written first.
    """
    code, git = record.code, record.code.git
    snap = code.snapshot
    tar, source = None, ""
    if snap is not None and snap.item:
        tar, source = _checked_item(model_ds, snap.item, snap.sha256), snap.item
    elif git is not None and git.commit:
        tar, source = _archive_here(record, model_ds, repo), f"commit {git.commit} in your repository"
    if tar is not None:
        _check_members(tar, source, model_ds.uri)
    patch = _checked_item(model_ds, git.patch_item, git.patch_sha256) if git and git.patch_item else None
    files: dict[str, bytes] = {}
    prefix = f"{keys.CODE_DIR}untracked/"
    for item in git.untracked_items if git else []:
        files[_safe_relpath(item.removeprefix(prefix), item, model_ds.uri)] = _checked_item(model_ds, item, None)
    if (git is None or not git.commit) and code.entry_script_item and code.run and code.run.entry_script:
        rel = _safe_relpath(code.run.entry_script, "the entry script", model_ds.uri)
        files[rel] = _checked_item(model_ds, code.entry_script_item, code.entry_script_sha256)
    parts = [
        f"tracked {hashlib.sha256(tar).hexdigest() if tar is not None else None}",
        f"commit {git.commit if git else None}",
        f"patch {hashlib.sha256(patch).hexdigest() if patch is not None else None}",
        *sorted(f"file {rel} {hashlib.sha256(data).hexdigest()}" for rel, data in files.items()),
    ]
    digest = "sha256:" + hashlib.sha256("\n".join(parts).encode()).hexdigest()
    return StoredCode(tar=tar, tar_source=source, patch=patch, files=files, digest=digest)


def _archive_here(record: ProvenanceRecord, model_ds: Any, repo: str | os.PathLike[str] | None) -> bytes:
    """The tracked files at the recorded commit, from the repository you are in (never the record's root)."""
    git = record.code.git
    assert git is not None and git.commit
    root, why = user_repository(repo)
    res = run_git(root, "archive", "--format=tar", git.commit) if root is not None else None
    if res is None or res.returncode != 0:
        snap = record.code.snapshot
        note = snap.note if snap is not None and snap.note else "no source snapshot was stored"
        where = why or f"commit {git.commit} is not in the repository you are in ({root})"
        raise ReproductionError(
            f"the code of {model_ds.uri} cannot be rebuilt: {note}; and {where}: clone "
            f"{git.remote or 'the repository'}, check out {git.commit} and run reproduce from inside it"
        )
    return res.stdout


def _checked_item(model_ds: Any, relpath: str, recorded_sha256: str | None) -> bytes:
    """The bytes of the item ``relpath``, refused unless they match the manifest and the record."""
    uri = model_ds.uri
    try:
        idn = model_ds.identifier_of(relpath)
        path = model_ds.item_path(idn)
    except (KeyError, OSError) as exc:
        raise IntegrityError(
            f"the code item {relpath!r} named by the record of {uri} is not in its manifest ({exc}): "
            "refused; nothing was run"
        ) from None
    entry = model_ds.item_properties(idn)
    size = entry.get("size_in_bytes")
    limit = size if isinstance(size, int) and size >= 0 else 0  # its manifest's size: a longer item differs
    with open_regular(path, what=f"the code item {relpath!r} of {uri}", error=IntegrityError) as fh:
        data = fh.read(limit + 1)
    if not str(model_ds.hash_function).startswith("md5"):
        raise IntegrityError(f"{uri} uses the hash function {model_ds.hash_function!r}: its code cannot be checked")
    if hashlib.md5(data).hexdigest() != entry.get("hash") or len(data) != entry.get("size_in_bytes"):
        raise IntegrityError(
            f"the code item {relpath!r} of {uri} does not match the dataset's manifest (changed since it was "
            "frozen): refused; nothing was run. `reprodl verify` lists what changed"
        )
    if recorded_sha256 and hashlib.sha256(data).hexdigest() != recorded_sha256:
        raise IntegrityError(
            f"the code item {relpath!r} of {uri} does not match the sha256 its record gives "
            f"({recorded_sha256[:16]}...): refused; nothing was run"
        )
    return data


def _safe_relpath(rel: str, what: str, uri: str) -> str:
    """``rel`` when it is a relative path inside the tree that names no ``.git``; else refused."""
    parts = PurePosixPath(rel).parts
    if not parts or PurePosixPath(rel).is_absolute() or "\\" in rel or any(p in ("..", "") for p in parts):
        raise IntegrityError(f"{what} of {uri} would be written at {rel!r}, outside the code's tree: refused")
    if any(p.lower() == ".git" for p in parts):
        raise IntegrityError(f"{what} of {uri} would be written at {rel!r}, inside a .git directory: refused")
    return "/".join(parts)


def _check_members(tar: bytes, source: str, uri: str) -> None:
    """Refuse a tar with a member that leaves the tree, links outside it, or names a ``.git``."""

    dest = os.path.join(tempfile.gettempdir(), "reprodl-code-check")
    try:
        with tarfile.open(fileobj=io.BytesIO(tar), mode="r:") as archive:
            for member in archive.getmembers():
                if any(p.lower() == ".git" for p in PurePosixPath(member.name).parts):
                    raise IntegrityError(f"{source} of {uri} holds {member.name!r}, inside a .git directory: refused")
                try:
                    tarfile.data_filter(member, dest)
                except tarfile.FilterError as exc:
                    raise IntegrityError(f"{source} of {uri} holds {member.name!r}: {exc}; refused") from None
    except tarfile.TarError as exc:
        raise IntegrityError(f"{source} of {uri} is not a readable tar ({exc}): refused") from None


def materialise(stored: StoredCode, dest: str | os.PathLike[str]) -> Path:
    """Rebuild the code tree in ``dest`` (an empty directory) from checked bytes; returns it.

    Tracked files, then the uncommitted patch, then the untracked files (or the entry script).
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if stored.tar is not None:
        _extract(stored.tar, dest, stored.tar_source)
    if stored.patch is not None:
        _apply_patch(stored.patch, dest)
    for rel, data in stored.files.items():
        _write_inside(dest, rel, data)
    _check_links(dest)
    return dest


def _check_links(dest: Path) -> None:
    """Refuse a symbolic link that leads out of the tree (a patch can make one, to any path): what
    it names would run, and its bytes are not those the code's digest covers."""
    root = os.path.realpath(dest)
    for top, dirs, files in os.walk(dest):
        for name in [*dirs, *files]:
            path = os.path.join(top, name)
            if os.path.islink(path) and not Path(os.path.realpath(path)).is_relative_to(root):
                rel = Path(path).relative_to(dest).as_posix()
                raise IntegrityError(f"the stored code links {rel!r} out of its tree ({os.readlink(path)!r}): refused")


def _write_inside(dest: Path, rel: str, data: bytes) -> None:
    """Write ``data`` at ``dest/rel``, refusing a path that a link in the tree leads outside it."""
    target = dest / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    if os.path.islink(target) or not Path(os.path.realpath(target.parent)).is_relative_to(os.path.realpath(dest)):
        raise IntegrityError(f"the stored file {rel!r} would be written through a link out of the code's tree: refused")
    with open(target, "wb") as fh:
        fh.write(data)


def _extract(data: bytes, dest: Path, source: str) -> None:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        try:
            tar.extractall(dest, filter="data")  # refuses absolute paths, '..' and links out
        except tarfile.FilterError as exc:
            raise IntegrityError(f"{source} holds {exc.tarinfo.name!r}: {exc}; refused") from None


def _apply_patch(patch: bytes, dest: Path) -> None:
    # dest holds no .git (refused above), and GIT_CEILING_DIRECTORIES keeps git from finding a
    # repository above it: the patch is applied to plain files, with hooks and fsmonitor off.
    res = run_git(
        dest,
        "apply",
        "--binary",
        "--whitespace=nowarn",
        "-",
        env={"GIT_CEILING_DIRECTORIES": str(dest.parent)},
        stdin=patch,
    )
    if res.returncode != 0:
        raise ReproductionError(
            f"the recorded uncommitted patch does not apply to the recorded commit: {res.stderr.decode().strip()}"
        )
