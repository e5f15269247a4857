"""No operation leaves a dataset worse than before (issue 7, point 5).

Metadata writes are atomic (a full disk or a SIGKILL mid-write keeps the old value); a
damaged metadata file is named as such; ``copy`` refuses a tampered or symlinked source
and takes its final name only when complete; staging directories of killed processes are
found and removed safely; two processes creating one name get one dataset and one clear
error. Kill points are real SIGKILLs: a child process either kills itself at an exact
point (a patched function) or is killed from outside while it copies.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import snapshot

from reprodl import keys
from reprodl.errors import DatasetFormatError, IntegrityError, StorageError
from reprodl.store import (
    clean_staging,
    copy_dataset,
    create_dataset,
    find_staging,
    local_path,
    open_dataset,
)

SRC = str(Path(__file__).resolve().parents[2] / "src")


# --- helpers ---------------------------------------------------------------------------
def make_items(base: Path, name: str = "small", n: int = 3, size: int = 10) -> Path:
    with create_dataset(str(base), name, readme=f"name: {name}\n") as writer:
        for i in range(n):
            writer.put_bytes(bytes([i % 256]) * size, f"d{i % 7}/item{i}.bin")
        writer.put_annotation("colour", "blue")
    path = local_path(writer.uri)
    assert path is not None
    return path


def run_child(code: str, *args: str, check_killed: bool = True) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh Python (this checkout's reprodl) with ``args`` as sys.argv[1:]."""
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    if check_killed:
        assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr)
    return proc


# The child kills itself with SIGKILL the n-th time `target` (module:attribute) is called.
KILL_AT = """
import os, signal, sys, importlib
mod_name, path = sys.argv[1].split(":")
*owners, attr = path.split(".")
mod = importlib.import_module(mod_name)
for owner in owners:
    mod = getattr(mod, owner)
real, count, n = getattr(mod, attr), [0], int(sys.argv[2])
def killer(*a, **k):
    count[0] += 1
    if count[0] >= n:
        {before}
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*a, **k)
setattr(mod, attr, killer)
{body}
"""


def kill_at(target: str, n: int, body: str, *args: str, before: str = "pass") -> None:
    run_child(KILL_AT.format(body=body, before=before), target, str(n), *args)


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def plant_staging(base: Path, name: str, *, pid: int, hostname: str | None = None, start: str | None = None) -> Path:
    staging = base / f"{keys.STAGING_PREFIX}{name}-planted{pid}"
    (staging / name / "data").mkdir(parents=True)
    (staging / name / "data" / "x.bin").write_bytes(b"x" * 100)
    marker = {
        "pid": pid,
        "hostname": hostname or socket.gethostname(),
        "name": name,
        "purpose": "create",
        "created": time.time(),
        "start": start,
    }
    (staging / keys.STAGING_MARKER).write_text(json.dumps(marker))
    return staging


# --- atomic metadata writes --------------------------------------------------------------
def _full_disk_after(nbytes: int):
    """An os.fdopen whose files take ``nbytes`` and then raise ENOSPC (a partial write)."""
    real = os.fdopen

    def fdopen(fd, *args, **kwargs):
        fh = real(fd, *args, **kwargs)
        write = fh.write

        def partial(text):
            write(text[:nbytes])
            fh.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        fh.write = partial
        return fh

    return fdopen


@pytest.mark.parametrize("nbytes", [0, 1, 40])
def test_full_disk_during_split_keeps_the_old_split(image_uri, monkeypatch, cli, nbytes):
    from reprodl.data.ops import split_dataset

    split_dataset(image_uri, test=0.3, seed=0)
    before = open_dataset(image_uri)
    old = (before.get_overlay(keys.USETYPE_OVERLAY), before.get_annotation(keys.SPLIT_INFO))
    monkeypatch.setattr(os, "fdopen", _full_disk_after(nbytes))
    with pytest.raises(
        StorageError, match="could not write the overlay 'usetype'.*No space left.*previous value is kept"
    ):
        split_dataset(image_uri, test=0.5, seed=1, force=True)
    monkeypatch.undo()
    after = open_dataset(image_uri)
    assert (after.get_overlay(keys.USETYPE_OVERLAY), after.get_annotation(keys.SPLIT_INFO)) == old
    dot_dtool = Path(local_path(after.uri)) / ".dtool"
    assert not list(dot_dtool.rglob(f"{keys.METADATA_TMP_PREFIX}*"))  # the temporary file is gone
    assert cli("dataset", "info", image_uri).exit_code == 0


def test_cli_split_on_a_full_disk_is_a_clear_error_not_a_traceback(digits_uri, monkeypatch, cli):
    monkeypatch.setattr(os, "fdopen", _full_disk_after(5))
    result = cli("dataset", "split", digits_uri)
    assert result.exit_code == 2
    assert "No space left on device" in result.stderr and "Traceback" not in result.stderr
    monkeypatch.undo()
    assert open_dataset(digits_uri).get_annotation(keys.TENSOR_USETYPE) is None  # nothing half-written
    assert cli("dataset", "split", digits_uri).exit_code == 0


@pytest.mark.parametrize(
    "target",
    [
        "os:fsync",  # the new overlay written to its temporary file, not yet flushed
        "os:replace",  # flushed, before the rename
    ],
)
def test_sigkill_during_split_keeps_the_old_split(image_uri, target):
    from reprodl.data.ops import split_dataset

    split_dataset(image_uri, test=0.3, seed=0)
    old = open_dataset(image_uri).get_overlay(keys.USETYPE_OVERLAY)
    body = "from reprodl.data.ops import split_dataset\nsplit_dataset(sys.argv[3], test=0.5, seed=1, force=True)"
    kill_at(target, 1, body, image_uri)
    after = open_dataset(image_uri)
    assert after.get_overlay(keys.USETYPE_OVERLAY) == old
    assert after.overlay_names() == sorted(["category", "usetype"])  # no stray names listed
    assert after.verify(deep=True).ok


# --- damaged metadata is named --------------------------------------------------------------
DAMAGE = {"truncated": b'{"abc": "tr', "empty": b"", "binary": b"\xff\xfe\x00garbage", "nul": b"\x00" * 8}


@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_overlay_is_named_not_could_not_reach(image_uri, cli, damage):
    path = Path(local_path(open_dataset(image_uri).uri)) / ".dtool" / "overlays" / "category.json"
    path.write_bytes(DAMAGE[damage])
    result = cli("dataset", "info", image_uri)
    assert result.exit_code != 0
    assert "could not reach" not in result.stderr
    assert re.search(
        r"overlay 'category'.*is damaged.*category\.json is not valid JSON", result.stderr.replace("\n", " ")
    )


@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_annotation_is_named(digits_uri, damage):
    path = Path(digits_uri) / ".dtool" / "annotations" / f"{keys.INPUT_TYPE}.json"
    path.write_bytes(DAMAGE[damage])
    with pytest.raises(DatasetFormatError, match=re.escape(f"{keys.INPUT_TYPE}.json is not valid JSON")):
        open_dataset(digits_uri).get_annotation(keys.INPUT_TYPE)


@pytest.mark.parametrize("file", ["manifest.json", "dtool"])
def test_damaged_manifest_or_admin_metadata_is_named(digits_uri, file):
    (Path(digits_uri) / ".dtool" / file).write_bytes(b'{"items": {')
    with pytest.raises(DatasetFormatError, match=rf"is damaged: .*\.dtool/{file} is not valid JSON"):
        open_dataset(digits_uri)


# --- copy: the source is checked, links refused ----------------------------------------------
def _edit_keeping_mtime(path: Path, data: bytes) -> None:
    st = path.stat()
    path.write_bytes(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


TAMPER = {
    "same size, mtime restored": lambda d: _edit_keeping_mtime(d / "data/d1/item1.bin", b"X" * 10),
    "same size": lambda d: (d / "data/d1/item1.bin").write_bytes(b"X" * 10),
    "resized": lambda d: (d / "data/d1/item1.bin").write_bytes(b"X" * 11),
    "missing": lambda d: (d / "data/d1/item1.bin").unlink(),
    "added": lambda d: (d / "data/d1/evil.bin").write_bytes(b"evil"),
}


@pytest.mark.parametrize("how", TAMPER)
def test_copy_refuses_a_tampered_source_and_writes_nothing(base_dir, tmp_path, how):
    source = make_items(base_dir)
    TAMPER[how](source)
    dest = tmp_path / "copies"
    dest.mkdir()
    before = snapshot(tmp_path)
    with pytest.raises(IntegrityError, match=r"does not match its manifest \(.*d1/(item1|evil)\.bin") as info:
        copy_dataset(str(source), str(dest))
    assert info.value.problems
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("link", ["item", "directory"])
def test_copy_refuses_symlinked_items(base_dir, tmp_path, link):
    source = make_items(base_dir)
    secret = tmp_path / "secret"
    secret.mkdir()
    if link == "item":
        (secret / "item1.bin").write_bytes((source / "data/d1/item1.bin").read_bytes())
        (source / "data/d1/item1.bin").unlink()
        (source / "data/d1/item1.bin").symlink_to(secret / "item1.bin")
    else:  # a directory of the dataset replaced by a link to one outside it
        (source / "data/d1").rename(secret / "d1")
        (source / "data/d1").symlink_to(secret / "d1")
    dest = tmp_path / "copies"
    dest.mkdir()
    before = snapshot(tmp_path)
    with pytest.raises(DatasetFormatError, match=r"symlinks \(e\.g\. d1/item1\.bin\).*not copied"):
        copy_dataset(str(source), str(dest))
    assert snapshot(tmp_path) == before


def test_copy_stages_and_keeps_uuid_manifest_and_metadata(base_dir, tmp_path):
    source = open_dataset(make_items(base_dir))
    dest = tmp_path / "copies"
    dest.mkdir()
    copy = open_dataset(copy_dataset(source.uri, str(dest)))
    assert (copy.uuid, copy.manifest_digest(), copy.get_annotation("colour")) == (
        source.uuid,
        source.manifest_digest(),
        "blue",
    )
    assert sorted(p.name for p in dest.iterdir()) == ["small"]  # no staging left


def test_no_message_advises_freezing_a_partial_dataset():
    src = Path(SRC) / "reprodl"
    text = "\n".join(p.read_text() for p in src.rglob("*.py"))
    assert not re.search(r"(?i)freeze it|dtool freeze", text)


# --- kill points: create and copy -----------------------------------------------------------
COPY = "from reprodl.store import copy_dataset\ncopy_dataset(sys.argv[3], sys.argv[4])"
CREATE = """
from reprodl.store import create_dataset
with create_dataset(sys.argv[3], "made") as w:
    for i in range(20):
        w.put_bytes(bytes([i]) * 100, f"item{i}.bin")
"""


@pytest.mark.parametrize(
    "target,n",
    [
        ("shutil:copyfile", 3),  # mid-copy, after two items
        ("reprodl.store.staging:rename_noreplace", 1),  # frozen in staging, before the rename
        ("reprodl.store.transfer:_check_copied", 1),  # before the copy's manifest is checked
    ],
)
def test_sigkill_mid_copy_leaves_no_dataset_and_clean_removes_the_leftover(base_dir, tmp_path, target, n):
    source = make_items(base_dir, n=12)
    dest = tmp_path / "copies"
    dest.mkdir()
    kill_at(target, n, COPY, str(source), str(dest))
    assert not (dest / "small").exists()
    [left] = find_staging(dest)
    assert (left.state, left.name, left.purpose) == ("stale", "small", "copy")
    assert clean_staging(dest, dry_run=True)[0].removed is False and Path(left.path).exists()
    [removed] = clean_staging(dest)
    assert removed.removed and not Path(left.path).exists()
    assert os.listdir(dest) == []
    assert open_dataset(copy_dataset(str(source), str(dest))).verify(deep=True).ok


@pytest.mark.parametrize(
    "target,n",
    [
        ("shutil:copyfile", 5),  # mid-create, items half put
        ("dtoolcore.storagebroker:DiskStorageBroker.put_manifest", 1),  # freezing: items hashed
        ("reprodl.store.staging:rename_noreplace", 1),  # frozen, before the rename
    ],
)
def test_sigkill_mid_create_leaves_nothing_and_the_next_create_cleans_up(base_dir, target, n):
    kill_at(target, n, CREATE, str(base_dir))
    assert not (base_dir / "made").exists()
    assert [s.state for s in find_staging(base_dir)] == ["stale"]
    with create_dataset(str(base_dir), "made") as w:  # removes the dead process's leftover
        w.put_bytes(b"ok", "ok.txt")
    assert os.listdir(base_dir) == ["made"]


@pytest.mark.slow
def test_external_sigkill_during_a_large_copy_leaves_no_dataset(base_dir, tmp_path):
    """A real `kill -9` from outside, once the copy's staging directory has appeared."""
    source = make_items(base_dir, name="big", n=400, size=256 * 1024)  # 100 MiB
    dest = tmp_path / "copies"
    dest.mkdir()
    env = {**os.environ, "PYTHONPATH": SRC}
    proc = subprocess.Popen(
        [sys.executable, "-c", "from reprodl.cli import main; main()", "dataset", "copy", "-q", str(source), str(dest)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while not list(dest.glob(f"{keys.STAGING_PREFIX}*/big/data/*")) and time.monotonic() < deadline:
        assert proc.poll() is None, "the copy finished before it could be killed: make the dataset larger"
        time.sleep(0.002)
    # Freeze it the moment its first item lands (a fast disk copies 100 MiB in a fraction of a second),
    # then kill it from outside while it is mid-copy.
    proc.send_signal(signal.SIGSTOP)
    assert not (dest / "big").exists(), "the copy finished before it could be stopped: make the dataset larger"
    proc.kill()
    assert proc.wait() == -signal.SIGKILL
    assert not (dest / "big").exists()
    [left] = find_staging(dest)
    assert left.state == "stale"
    clean_staging(dest)
    assert os.listdir(dest) == []


def test_model_datasets_are_staged_with_a_marker_too(digits_uri, base_dir):
    """DerivedDataSet (a model) goes through create_dataset: staged, marked, discarded on error."""
    from reprodl.data.datasets import TensorDataSet
    from reprodl.modeldataset.write import DerivedDataSet

    with pytest.raises(RuntimeError, match="boom"), DerivedDataSet(str(base_dir), "model", TensorDataSet(digits_uri)):
        [staging] = find_staging(base_dir)
        assert (staging.state, staging.name, staging.pid) == ("running", "model", os.getpid())
        raise RuntimeError("boom")
    assert not (base_dir / "model").exists() and find_staging(base_dir) == []


# --- clean: only marked, stale staging directories ------------------------------------------
def test_clean_removes_only_stale_marked_staging_dirs(base_dir, tmp_path, cli):
    keep_dataset = make_items(base_dir, "kept")
    stale = plant_staging(base_dir, "a", pid=dead_pid())
    running = plant_staging(base_dir, "b", pid=os.getpid())
    other_host = plant_staging(base_dir, "c", pid=dead_pid(), hostname="elsewhere.example")
    reused = plant_staging(base_dir, "d", pid=os.getpid(), start="1")  # our pid, another start
    unmarked = base_dir / f"{keys.STAGING_PREFIX}e-unmarked"
    (unmarked / "e").mkdir(parents=True)
    bad_marker = plant_staging(base_dir, "f", pid=dead_pid())
    (bad_marker / keys.STAGING_MARKER).write_text('{"pid": "1; rm -rf /", "hostname": 3}')
    # A link named like a staging dir, to a directory with a stale marker: never followed.
    target = plant_staging(tmp_path, "g", pid=dead_pid())
    (base_dir / f"{keys.STAGING_PREFIX}g-link").symlink_to(target)
    # A marker that is a link to a stale marker: not ours, kept.
    linked_marker = base_dir / f"{keys.STAGING_PREFIX}h-linkedmarker"
    linked_marker.mkdir()
    (linked_marker / keys.STAGING_MARKER).symlink_to(stale / keys.STAGING_MARKER)
    # A stale staging dir holding a link to a file outside: the link goes, not the file.
    outside = tmp_path / "precious.txt"
    outside.write_text("keep me")
    (stale / "a" / "link").symlink_to(outside)
    (base_dir / f"{keys.STAGING_PREFIX}file").write_text("not a directory")

    dry = cli("dataset", "clean", str(base_dir), "--dry-run", "--json")
    assert dry.exit_code == 0, dry.stderr
    states = {Path(r["path"]).name: (r["state"], r["removed"]) for r in json.loads(dry.stdout)}
    assert states == {
        stale.name: ("stale", False),
        running.name: ("running", False),
        other_host.name: ("other-host", False),
        reused.name: ("stale", False),
        unmarked.name: ("unmarked", False),
        bad_marker.name: ("unmarked", False),
        linked_marker.name: ("unmarked", False),
    }
    assert stale.exists() and reused.exists()

    result = cli("dataset", "clean", str(base_dir))
    assert result.exit_code == 0, result.stderr
    assert f"{stale}" in result.stdout and "removed" in result.stdout
    assert not stale.exists() and not reused.exists()
    for kept in (running, other_host, unmarked, bad_marker, linked_marker, target, keep_dataset, outside):
        assert kept.exists(), kept
    assert (base_dir / f"{keys.STAGING_PREFIX}g-link").is_symlink()
    assert open_dataset(keep_dataset).verify(deep=True).ok
    assert (base_dir / f"{keys.STAGING_PREFIX}file").read_text() == "not a directory"
    for path in (running, other_host, unmarked, bad_marker, linked_marker, target):  # tidy up
        shutil.rmtree(path)
    (base_dir / f"{keys.STAGING_PREFIX}g-link").unlink()
    (base_dir / f"{keys.STAGING_PREFIX}file").unlink()


def test_clean_of_a_base_without_staging_says_so(base_dir, cli):
    result = cli("dataset", "clean", str(base_dir))
    assert result.exit_code == 0 and "No staging directories" in result.stdout


def test_clean_refuses_a_missing_base(tmp_path, cli):
    result = cli("dataset", "clean", str(tmp_path / "nope"))
    assert result.exit_code == 2 and "not an existing directory" in result.stderr


def test_create_removes_only_its_own_names_stale_leftovers(base_dir):
    mine = plant_staging(base_dir, "made", pid=dead_pid())
    other = plant_staging(base_dir, "made-too", pid=dead_pid())  # a name sharing the prefix
    live = plant_staging(base_dir, "made", pid=os.getpid())
    with create_dataset(str(base_dir), "made") as w:
        w.put_bytes(b"ok", "ok.txt")
    assert not mine.exists() and other.exists() and live.exists()
    shutil.rmtree(other)
    shutil.rmtree(live)


# --- two processes, one name ------------------------------------------------------------------
RACE = """
import os, sys, time
from pathlib import Path
import reprodl.store.staging as staging
if sys.argv[4] == "fallback":
    staging._renameat2 = lambda: None
from reprodl.errors import DatasetExistsError
from reprodl.store import create_dataset, copy_dataset
ready = Path(sys.argv[2])
def barrier():
    (ready / sys.argv[3]).touch()
    deadline = time.monotonic() + 30
    while len(os.listdir(ready)) < 2 and time.monotonic() < deadline:
        time.sleep(0.005)
try:
    if sys.argv[5] == "create":
        with create_dataset(sys.argv[1], "same") as w:
            w.put_bytes(sys.argv[3].encode(), "who.txt")
            barrier()  # both past the existence check, neither frozen yet
    else:
        real = staging.make_staging
        def make(*a, **k):
            s = real(*a, **k)
            barrier()
            return s
        import reprodl.store.transfer as transfer
        transfer.make_staging = make
        copy_dataset(sys.argv[6], sys.argv[1])
except DatasetExistsError as exc:
    print("EXISTS", exc)
    sys.exit(17)
print("WON")
"""


@pytest.mark.parametrize("op", ["create", "copy"])
@pytest.mark.parametrize("rename", ["renameat2", "fallback"])
def test_two_processes_creating_one_name_one_wins_one_clear_error(base_dir, tmp_path, rename, op):
    source = make_items(base_dir, "same") if op == "copy" else base_dir
    dest = tmp_path / "dest"
    dest.mkdir()
    ready = tmp_path / "ready"
    ready.mkdir()
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACE, str(dest), str(ready), who, rename, op, str(source)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for who in ("one", "two")
    ]
    results = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    codes = sorted(r[0] for r in results)
    assert codes == [0, 17], results
    loser = next(r for r in results if r[0] == 17)
    assert re.search(r"EXISTS a dataset called 'same' (appeared|already exists)", loser[1]), loser
    assert "ENOTEMPTY" not in loser[1] + loser[2] and "Traceback" not in loser[2]
    assert os.listdir(dest) == ["same"]
    assert open_dataset(dest / "same").verify(deep=True).ok
