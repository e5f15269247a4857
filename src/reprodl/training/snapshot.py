"""The source snapshot: the code that trained a model, stored with the model.

A run made with :func:`reprodl.start_run` stores a tar of the tracked files at the recorded
commit (``git archive``), beside the uncommitted patch and the untracked files that
:func:`reprodl.training.capture.capture_code` already keeps. Together they rebuild the working
tree as it was, so a model reproduces from its URI alone, even where its repository is gone.
Tracked files named like secrets are left out (named in the record). Above
:data:`MAX_SNAPSHOT_BYTES` only the commit, remote and patch are kept, with a note.

Example:
    >>> info, tar_path = capture_snapshot(code.git, workdir)      # doctest: +SKIP
    >>> materialise(record, model_ds, "/tmp/code")                # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

from reprodl import keys
from reprodl.errors import IntegrityError, ReproductionError
from reprodl.provenance.record import GitInfo, ProvenanceRecord, SourceSnapshot
from reprodl.training.capture import secret_pattern

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


def code_digest(record: ProvenanceRecord) -> str:
    """One digest of the code a run-API record re-executes: snapshot, patch and untracked files."""
    code = record.code
    parts = [
        f"snapshot {code.snapshot.sha256 if code.snapshot else None}",
        f"commit {code.git.commit if code.git else None}",
        f"patch {code.git.patch_sha256 if code.git else None}",
        f"entry {code.entry_script_sha256}",
        *sorted(code.git.untracked_items if code.git else []),
    ]
    return "sha256:" + hashlib.sha256("\n".join(parts).encode()).hexdigest()


def materialise(record: ProvenanceRecord, model_ds: Any, dest: str | os.PathLike[str]) -> Path:
    """Rebuild the recorded code tree in ``dest`` (an empty directory); returns it.

    Tracked files from the snapshot (else from the recorded repository when it is here and has
    the commit), then the uncommitted patch, then the stored untracked files; outside git, the
    stored entry script. Raises :class:`ReproductionError` when the code cannot be had.
    """
    dest = Path(dest)
    code, git = record.code, record.code.git
    snap = code.snapshot
    if snap is not None and snap.item:
        stored = _item_bytes(model_ds, snap.item)
        if hashlib.sha256(stored).hexdigest() != snap.sha256:
            raise IntegrityError(
                f"the source snapshot {snap.item} of {model_ds.uri} does not match its recorded sha256"
            )
        _extract(stored, dest)
    elif git is not None and git.commit:
        data = _git_bytes(["archive", "--format=tar", git.commit], git.root) if git.root else None
        if data is None:
            note = snap.note if snap is not None and snap.note else "no source snapshot was stored"
            raise ReproductionError(
                f"the code of {model_ds.uri} cannot be rebuilt: {note}; and commit {git.commit} is not in a repository "
                f"at {git.root}: clone {git.remote or 'the repository'} there and check out that commit"
            )
        _extract(data, dest)
    if git is not None and git.patch_item:
        _apply_patch(_item_bytes(model_ds, git.patch_item), dest)
    prefix = f"{keys.CODE_DIR}untracked/"
    for item in git.untracked_items if git else []:
        _copy_item(model_ds, item, dest / item.removeprefix(prefix))
    if (git is None or not git.commit) and code.entry_script_item and code.run and code.run.entry_script:
        _copy_item(model_ds, code.entry_script_item, dest / code.run.entry_script)
    return dest


def _item_bytes(model_ds: Any, relpath: str) -> bytes:
    return Path(model_ds.item_path(model_ds.identifier_of(relpath))).read_bytes()


def _copy_item(model_ds: Any, relpath: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model_ds.item_path(model_ds.identifier_of(relpath)), target)


def _extract(data: bytes, dest: Path) -> None:
    import io

    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        tar.extractall(dest, filter="data")  # refuses absolute paths, '..' and links out


def _apply_patch(patch: bytes, dest: Path) -> None:
    # GIT_CEILING_DIRECTORIES: never find (and patch) a repository above the temporary tree.
    env = {**os.environ, "GIT_CEILING_DIRECTORIES": str(dest.parent)}
    res = subprocess.run(
        ["git", "apply", "--binary", "--whitespace=nowarn", "-"],
        cwd=dest,
        input=patch,
        env=env,
        capture_output=True,
        timeout=120,
    )
    if res.returncode != 0:
        raise ReproductionError(
            f"the recorded uncommitted patch does not apply to the recorded commit: {res.stderr.decode().strip()}"
        )
