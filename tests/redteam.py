"""Forge a hostile model dataset as an attacker who can write where models live would.

The attacker copies a real model dataset directory, edits its record and items, and then
recomputes everything anyone can recompute, with nothing but file writes: the dtool manifest
(each item's md5, size and timestamp), the record's self-digest (sha256 of its canonical JSON
without ``digest``) and the annotations that mirror the record. No reprodl writer is used, so no
check of reprodl's own writing path stands between the forged bytes and the reader under test.
Only a signature by a key the reader trusts tells such a copy from the author's.

Imported by name (``tests`` is on ``pythonpath``): ``from redteam import forge``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

PROVENANCE = "provenance.json"
RECORD_DIGEST_ANNOTATION = "reprodl.record_digest"

Edit = Callable[[dict[str, Any]], None]


def canonical(value: Any) -> bytes:
    """The canonical JSON the record's self-digest is taken over (sorted keys, no spaces)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def seal(raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` with its ``digest`` recomputed over the rest, as anyone can."""
    body = {k: v for k, v in raw.items() if k != "digest"}
    return {**body, "digest": "sha256:" + hashlib.sha256(canonical(body)).hexdigest()}


def mirrors(raw: dict[str, Any]) -> dict[str, Any]:
    """The annotations a model dataset carries as mirrors of its record (what verify compares)."""
    out: dict[str, Any] = {RECORD_DIGEST_ANNOTATION: raw.get("digest")}
    arch = raw.get("architecture")
    training = raw.get("training")
    if isinstance(arch, dict) and isinstance(training, dict) and isinstance(training.get("params"), dict):
        out["model_name"] = arch.get("import_path")
        out["model_parameters"] = {**training["params"], "init_params": arch.get("init_params")}
    data = raw.get("data")
    train = [d for d in data if isinstance(d, dict) and d.get("role") == "train"] if isinstance(data, list) else []
    if train:
        out.update(
            source_dataset_uri=train[0].get("uri"),
            source_dataset_uuid=train[0].get("uuid"),
            source_dataset_name=train[0].get("name"),
            category_encoding=train[0].get("category_encoding"),
        )
    return out


def _reseal_manifest(dest: Path) -> None:
    """Rewrite ``.dtool/manifest.json`` so every item under ``data/`` is listed with its md5 and size."""
    manifest_path = dest / ".dtool" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    items: dict[str, Any] = {}
    data = dest / "data"
    for path in sorted(p for p in data.rglob("*") if p.is_file()):
        rel = path.relative_to(data).as_posix()
        items[hashlib.sha1(rel.encode()).hexdigest()] = {
            "hash": hashlib.md5(path.read_bytes()).hexdigest(),
            "relpath": rel,
            "size_in_bytes": path.stat().st_size,
            "utc_timestamp": path.stat().st_mtime,
        }
    manifest["items"] = items
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True))


def _rename(dest: Path, name: str) -> None:
    admin_path = dest / ".dtool" / "dtool"
    admin = json.loads(admin_path.read_text())
    admin.update(name=name, uuid=str(uuid.uuid4()), frozen_at=time.time())
    admin_path.write_text(json.dumps(admin))


def forge(
    src: str | os.PathLike[str],
    base: str | os.PathLike[str],
    name: str,
    *,
    edit: Edit | None = None,
    replace: dict[str, bytes] | None = None,
    drop: tuple[str, ...] = (),
    reseal: bool = True,
    annotations: bool = True,
) -> str:
    """A copy of the model dataset directory ``src`` at ``base/name``, edited and resealed.

    ``edit`` changes the record (a plain dict: any JSON, valid for reprodl or not); ``replace``
    writes items (relpath -> bytes; new ones are added), ``drop`` removes items. With
    ``reseal`` the record's digest is recomputed, and with ``annotations`` the mirror
    annotations are rewritten to agree with the record. The dtool manifest is always rewritten
    (an attacker who forgets it gets caught by the manifest: that is a different case).
    Returns the copy's path.
    """
    dest = Path(base) / name
    shutil.copytree(src, dest)
    _rename(dest, name)
    data = dest / "data"
    raw = json.loads((data / PROVENANCE).read_text())
    if edit is not None:
        edit(raw)
        if reseal:
            raw = seal(raw)
        (data / PROVENANCE).write_text(json.dumps(raw, indent=2))
    for rel, blob in (replace or {}).items():
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        (data / rel).write_bytes(blob)
    for rel in drop:
        (data / rel).unlink()
    _reseal_manifest(dest)
    if annotations:
        for key, value in mirrors(raw).items():
            (dest / ".dtool" / "annotations" / f"{key}.json").write_text(json.dumps(value))
    return str(dest)


def strings(value: Any, change: Callable[[str], str]) -> Any:
    """``value`` with every string value in it passed through ``change`` (mapping keys kept)."""
    if isinstance(value, str):
        return change(value)
    if isinstance(value, list):
        return [strings(v, change) for v in value]
    if isinstance(value, dict):
        return {k: strings(v, change) for k, v in value.items()}
    return value
