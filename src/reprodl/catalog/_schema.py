"""The catalog file's schema, where the file lives, and the checks made on opening one.

:data:`SCHEMA` is every table and index reprodl creates; :func:`check_schema` refuses a file holding
anything else (a catalog file is data: no trigger or view of it ever runs) and names a file an older
reprodl wrote as such. :class:`~reprodl.catalog.db.Catalog` opens its file through these.
"""

from __future__ import annotations

import functools
import os
import sqlite3
import sys
from pathlib import Path

from reprodl import keys
from reprodl.errors import CatalogError

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY,
    uuid TEXT NOT NULL,
    manifest_digest TEXT NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    readme TEXT NOT NULL DEFAULT '',
    readme_fields TEXT NOT NULL DEFAULT '{}',
    annotations TEXT NOT NULL DEFAULT '{}',
    annotation_text TEXT NOT NULL DEFAULT '',
    record_digest TEXT,
    created_at TEXT,
    creator TEXT,
    verdict TEXT,
    indexed_at TEXT,
    UNIQUE (uuid, manifest_digest)
);
CREATE INDEX IF NOT EXISTS entries_kind ON entries (kind);
CREATE INDEX IF NOT EXISTS entries_name ON entries (name);
CREATE TABLE IF NOT EXISTS locations (
    uri TEXT PRIMARY KEY,
    entry_id INTEGER NOT NULL REFERENCES entries (id) ON DELETE CASCADE,
    base_uri TEXT,
    seen_at TEXT
);
CREATE INDEX IF NOT EXISTS locations_entry ON locations (entry_id);
CREATE TABLE IF NOT EXISTS links (
    entry_id INTEGER NOT NULL REFERENCES entries (id) ON DELETE CASCADE,
    relation TEXT NOT NULL,
    target_uuid TEXT,
    target_uri TEXT,
    target_digest TEXT,
    role TEXT NOT NULL DEFAULT '',
    target_name TEXT
);
CREATE INDEX IF NOT EXISTS links_entry ON links (entry_id);
CREATE INDEX IF NOT EXISTS links_target ON links (target_uuid, relation);
CREATE TABLE IF NOT EXISTS fields (
    entry_id INTEGER NOT NULL REFERENCES entries (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    num REAL,
    txt TEXT
);
CREATE INDEX IF NOT EXISTS fields_entry ON fields (entry_id);
CREATE INDEX IF NOT EXISTS fields_num ON fields (name, num, entry_id);
CREATE INDEX IF NOT EXISTS fields_txt ON fields (name, txt, entry_id);
CREATE VIRTUAL TABLE IF NOT EXISTS search USING fts5 (
    name, readme, annotation_text, content = 'entries', content_rowid = 'id', tokenize = 'unicode61'
);
"""

_SHADOW_PREFIX = "search_"  # the FTS5 table's shadow tables: search_data, search_idx, search_config...


def default_path() -> Path:
    """Where the catalog lives when no ``--catalog`` is given.

    ``$REPRODL_CATALOG`` if set; else ``catalog.sqlite`` in the user's data directory:
    ``$XDG_DATA_HOME/reprodl`` (default ``~/.local/share/reprodl``) on Linux,
    ``~/Library/Application Support/reprodl`` on macOS, ``%LOCALAPPDATA%\\reprodl`` on Windows.
    """
    env = os.environ.get(keys.CATALOG_ENV)
    if env:
        return Path(env).expanduser()
    return data_dir_path()


def data_dir_path() -> Path:
    """``catalog.sqlite`` in the user's data directory (see :func:`default_path`)."""
    home = Path.home()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or home / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = home / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or home / ".local" / "share")
    return base / "reprodl" / keys.CATALOG_FILE


def _open_error(path: str, exc: Exception) -> CatalogError:
    fix = (
        "this Python's SQLite lacks the FTS5 extension: use a Python built with it (python.org and conda builds are)"
        if "fts5" in str(exc)
        else "give another file with --catalog (or REPRODL_CATALOG), or move this one away and add your base URIs again"
    )
    return CatalogError(f"cannot open the catalog {path}: {exc}. To go on, {fix}")


@functools.cache
def _expected_schema() -> dict[tuple[str, str], str | None]:
    """(type, name) -> SQL of every object :data:`SCHEMA` creates, as this SQLite stores it."""
    db = sqlite3.connect(":memory:")
    try:
        db.executescript(SCHEMA)
        return {(t, n): sql for t, n, sql in db.execute("SELECT type, name, sql FROM sqlite_master")}
    finally:
        db.close()


def _version_error(path: str, found: str) -> CatalogError:
    if found.isdigit() and int(found) < int(keys.CATALOG_SCHEMA_VERSION):
        fix = (
            "build it again: `reprodl catalog add URI` for each base URI, or `reprodl catalog import` of what "
            "`reprodl catalog export` wrote with the reprodl that made it"
        )
    else:
        fix = "upgrade reprodl, or export it with the reprodl that wrote it"
    return CatalogError(
        f"the catalog {path} has schema version {found}, this reprodl reads {keys.CATALOG_SCHEMA_VERSION}: {fix}"
    )


def _stored_version(db: sqlite3.Connection) -> str | None:
    """The file's schema version, read only when its ``meta`` is reprodl's own table (a view may never end)."""
    row = db.execute("SELECT type, sql FROM sqlite_master WHERE name = 'meta'").fetchone()
    if row is None or row[0] != "table" or row[1] != _expected_schema()[("table", "meta")]:
        return None
    found = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return None if found is None else str(found[0])


def check_schema(db: sqlite3.Connection, path: str) -> None:
    """Refuse a catalog file holding anything reprodl's schema does not: a trigger, a view, another
    table or index, or one of reprodl's defined otherwise. Reads ``sqlite_master``, and on a
    difference the schema version in ``meta`` (when that is reprodl's plain table): a catalog an
    older reprodl wrote is refused as such, with how to build it again.

    The full-text index's own tables (``search_data``...) are SQLite's, and their definitions may
    differ between SQLite versions: only their names are checked.

    Raises:
        CatalogError: naming the first object that is not reprodl's.
    """
    expected = _expected_schema()
    for kind, name, table, sql in db.execute("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY rowid"):
        key = (kind, name)
        if key not in expected:
            problem = "that reprodl's schema does not have"
        elif sql == expected[key] or (kind == "table" and name.startswith(_SHADOW_PREFIX)):
            continue
        else:
            problem = "defined otherwise than reprodl defines it"
        version = _stored_version(db)
        if version is not None and version != keys.CATALOG_SCHEMA_VERSION:
            raise _version_error(path, version)
        on = f" (on {table!r})" if table != name else ""
        raise CatalogError(
            f"the catalog {path} holds a {kind} {name!r}{on} {problem}: reprodl refuses a catalog file with "
            "triggers, views or tables it did not create, and runs nothing from it. To go on, give another file "
            "with --catalog (or REPRODL_CATALOG), or build the catalog again with `reprodl catalog add` or "
            "`reprodl catalog import`"
        )


def _make_parent(path: Path) -> None:
    """Create the data directory for the default catalog; refuse any other catalog whose directory is missing."""
    if path == data_dir_path():
        path.parent.mkdir(parents=True, exist_ok=True)
    elif not path.parent.is_dir():
        raise CatalogError(
            f"cannot open the catalog {path}: its directory {path.parent} does not exist. To go on, create it "
            "(mkdir -p), or give another file with --catalog (or REPRODL_CATALOG)"
        )
