"""The catalog's SQLite file: writing entries, reading them back, finding one by name.

Its schema, where the file lives and the checks made on opening it are in ``catalog/_schema.py``
(:data:`SCHEMA`, :func:`default_path` and :func:`check_schema` are re-exported here).

Tables: ``entries`` (one per UUID and manifest digest), ``locations`` (every URI an entry was
found at, with its base URI), ``links`` (what an entry derives from), ``fields`` (flat values
for ``--where``) and ``search`` (an FTS5 index over names, READMEs and annotations). Every
statement is parameterised; user text never becomes SQL.

``search`` is an external-content FTS5 table: it keeps only its index, and reads the text
(name, README, ``annotation_text``) from ``entries``, so each README is stored once. No trigger
keeps the two in step (a catalog file holds none, see :func:`check_schema`): :meth:`Catalog.put`
and :meth:`Catalog.remove_location` delete an entry's index row while ``entries`` still holds
the text it was indexed from, then write the new one.

Example:
    >>> with Catalog(":memory:") as cat:
    ...     _ = cat.put(Entry(uuid="u1", kind="dataset", name="digits", manifest_digest="m"))
    ...     [e.name for e in cat.entries()]
    ['digits']
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from reprodl import keys
from reprodl.catalog._schema import (
    SCHEMA,
    _make_parent,
    _open_error,
    _version_error,
    check_schema,
    data_dir_path,
    default_path,
)
from reprodl.catalog.entry import Entry, FieldValue, Link
from reprodl.errors import CatalogEntryNotFoundError, CatalogError
from reprodl.store import normalise_uri

__all__ = ["SCHEMA", "Catalog", "base_of", "check_schema", "data_dir_path", "default_path", "now"]

_COLUMNS = (
    "id, uuid, manifest_digest, kind, name, readme, readme_fields, annotations, record_digest, "
    "created_at, creator, verdict, indexed_at"
)


def now() -> str:
    """The time now, UTC, ISO 8601 to the second."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def base_of(uri: str) -> str:
    """The base URI of a dataset URI: its directory (file://) or bucket (s3://)."""
    return uri.rstrip("/").rsplit("/", 1)[0]


def _field_row(entry_id: int, name: str, value: FieldValue) -> tuple[int, str, float | None, str | None]:
    if isinstance(value, bool):
        return entry_id, name, float(value), None
    if isinstance(value, (int, float)):
        return entry_id, name, float(value), None
    return entry_id, name, None, str(value)


def _search_text(entry: Entry) -> str:
    """Annotations as searchable text: each name and its value."""
    return " ".join(f"{k} {json.dumps(v, default=str)[:4000]}" for k, v in sorted(entry.annotations.items()))


class Catalog:
    """An open catalog file (created with its schema when missing). Use as a context manager.

    Args:
        path: the SQLite file (``":memory:"`` for a throwaway one); default :func:`default_path`.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        target = default_path() if path is None else path
        self.path = str(target)
        try:
            if self.path != ":memory:":
                _make_parent(Path(self.path).expanduser())
            self.db = sqlite3.connect(self.path)
        except (sqlite3.Error, OSError) as exc:
            raise _open_error(self.path, exc) from None
        try:
            # A catalog file is data: functions in its schema run only when innocuous, and
            # nothing but reprodl's own tables and indexes may be in it (no trigger, no view).
            self.db.execute("PRAGMA trusted_schema = OFF")
            check_schema(self.db, self.path)
            self.db.execute("PRAGMA foreign_keys = ON")
            self.db.execute("PRAGMA journal_mode = WAL")
            self.db.executescript(SCHEMA)
            self._check_version()
        except (sqlite3.Error, OSError) as exc:
            self.db.close()
            raise _open_error(self.path, exc) from None
        except CatalogError:
            self.db.close()
            raise

    def _check_version(self) -> None:
        row = self.db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None:
            with self.db:
                self.db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (keys.CATALOG_SCHEMA_VERSION,))
                # bm25 weights of the columns: a word in the name counts most, then annotations, then the README.
                self.db.execute("INSERT INTO search (search, rank) VALUES ('rank', 'bm25(10.0, 1.0, 2.0)')")
        elif row[0] != keys.CATALOG_SCHEMA_VERSION:
            raise _version_error(self.path, str(row[0]))

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- writing ----------------------------------------------------------------------
    def put(self, entry: Entry, *, base_uri: str | None = None) -> int:
        """Add or replace ``entry`` (matched by UUID and manifest digest); returns its row id.

        Its URIs are added to those already known (a copy elsewhere adds a location); a URI
        that pointed at another entry now points at this one.
        """
        with self.db:
            return self._put(entry, base_uri=base_uri)

    def put_many(self, entries: Iterable[Entry], *, base_uri: str | None = None) -> int:
        """Add many entries in one transaction (the fast path for a bulk load); how many."""
        n = 0
        with self.db:
            for entry in entries:
                self._put(entry, base_uri=base_uri)
                n += 1
        return n

    def _put(self, entry: Entry, *, base_uri: str | None) -> int:
        key = (entry.uuid, entry.manifest_digest)
        old = self.db.execute("SELECT id FROM entries WHERE uuid = ? AND manifest_digest = ?", key).fetchone()
        if old is not None:  # unindex it while entries still holds the text it was indexed from
            self.db.execute("DELETE FROM search WHERE rowid = ?", (old[0],))
        row = (
            entry.uuid,
            entry.manifest_digest,
            entry.kind,
            entry.name,
            entry.readme,
            json.dumps(entry.readme_fields, default=str),
            json.dumps(entry.annotations, default=str),
            _search_text(entry),
            entry.record_digest,
            entry.created_at,
            entry.creator,
            entry.verdict,
            entry.indexed_at or now(),
        )
        written = self.db.execute(
            "INSERT INTO entries (uuid, manifest_digest, kind, name, readme, readme_fields, annotations, "
            "annotation_text, record_digest, created_at, creator, verdict, indexed_at) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?) "
            "ON CONFLICT (uuid, manifest_digest) DO UPDATE SET kind=excluded.kind, name=excluded.name, "
            "readme=excluded.readme, readme_fields=excluded.readme_fields, annotations=excluded.annotations, "
            "annotation_text=excluded.annotation_text, record_digest=excluded.record_digest, "
            "created_at=excluded.created_at, creator=excluded.creator, "
            "verdict=excluded.verdict, indexed_at=excluded.indexed_at",
            row,
        )
        # lastrowid is stale after an upsert that updated: that row's id was looked up above.
        entry_id = int(old[0]) if old is not None else int(written.lastrowid or 0)
        self.db.execute(
            "INSERT INTO search (rowid, name, readme, annotation_text) VALUES (?,?,?,?)",
            (entry_id, entry.name, entry.readme, row[7]),
        )
        self._replace_children(entry_id, entry)
        for uri in entry.uris:
            self.db.execute(
                "INSERT INTO locations (uri, entry_id, base_uri, seen_at) VALUES (?,?,?,?) ON CONFLICT (uri) "
                "DO UPDATE SET entry_id=excluded.entry_id, base_uri=coalesce(excluded.base_uri, base_uri), "
                "seen_at=excluded.seen_at",
                (uri, entry_id, base_uri or base_of(uri), entry.indexed_at or now()),
            )
        return entry_id

    def _replace_children(self, entry_id: int, entry: Entry) -> None:
        """The entry's links and fields, written afresh."""
        for table in ("links", "fields"):
            self.db.execute(f"DELETE FROM {table} WHERE entry_id = ?", (entry_id,))
        self.db.executemany(
            "INSERT INTO links (entry_id, relation, target_uuid, target_uri, target_digest, role, target_name) "
            "VALUES (?,?,?,?,?,?,?)",
            [(entry_id, k.relation, k.uuid, k.uri, k.digest, k.role, k.name) for k in entry.links],
        )
        self.db.executemany(
            "INSERT INTO fields (entry_id, name, num, txt) VALUES (?,?,?,?)",
            [_field_row(entry_id, name, value) for name, value in entry.fields.items()],
        )

    def resolve_links(self) -> None:
        """Fill in the UUID of links known only by URI (a claim's members) from the locations."""
        with self.db:
            self.db.execute(
                "UPDATE links SET target_uuid = (SELECT e.uuid FROM locations l JOIN entries e ON e.id = l.entry_id "
                "WHERE l.uri = links.target_uri) WHERE target_uuid IS NULL AND target_uri IS NOT NULL"
            )

    def remove_location(self, uri: str) -> None:
        """Forget ``uri``; an entry left with no location is forgotten too."""
        with self.db:
            self.db.execute("DELETE FROM locations WHERE uri = ?", (uri,))
            # Unindexed first: the index reads the text to take out of it from the entries row.
            self.db.execute("DELETE FROM search WHERE rowid NOT IN (SELECT entry_id FROM locations)")
            self.db.execute("DELETE FROM entries WHERE id NOT IN (SELECT entry_id FROM locations)")

    def move_location(self, old: str, new: str, *, base_uri: str | None = None) -> None:
        """Record that the dataset at ``old`` is now at ``new``."""
        with self.db:
            if self.db.execute("SELECT 1 FROM locations WHERE uri = ?", (new,)).fetchone():
                self.db.execute("DELETE FROM locations WHERE uri = ?", (old,))
                return
            self.db.execute(
                "UPDATE locations SET uri = ?, base_uri = coalesce(?, base_uri), seen_at = ? WHERE uri = ?",
                (new, base_uri, now(), old),
            )

    # --- reading ----------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM entries").fetchone()[0])

    def entries(self, ids: Iterable[int] | None = None, *, kind: str | None = None) -> list[Entry]:
        """Entries, all or those with the given row ids (in that order), optionally of one kind."""
        if ids is None:
            sql, args = f"SELECT {_COLUMNS} FROM entries", []
            if kind is not None:
                sql, args = sql + " WHERE kind = ?", [kind]
            rows = self.db.execute(sql + " ORDER BY id", args).fetchall()
        else:
            wanted = list(ids)
            rows = []
            for chunk in _chunks(wanted, 500):
                marks = ",".join("?" * len(chunk))
                rows += self.db.execute(f"SELECT {_COLUMNS} FROM entries WHERE id IN ({marks})", chunk).fetchall()
            order = {i: n for n, i in enumerate(wanted)}
            rows = sorted((r for r in rows if kind is None or r[3] == kind), key=lambda r: order[r[0]])
        return self._build([r[0] for r in rows], rows)

    def _build(self, ids: list[int], rows: list[tuple[Any, ...]]) -> list[Entry]:
        """Entries from their rows, with their URIs, links and fields (one query each, in chunks)."""
        uris: dict[int, list[str]] = {}
        links: dict[int, list[Link]] = {}
        fields: dict[int, dict[str, FieldValue]] = {}
        for chunk in _chunks(ids, 500):
            marks = ",".join("?" * len(chunk))
            q = f"entry_id IN ({marks})"
            for eid, uri in self.db.execute(f"SELECT entry_id, uri FROM locations WHERE {q} ORDER BY uri", chunk):
                uris.setdefault(eid, []).append(uri)
            cols = "entry_id, relation, target_uuid, target_uri, target_digest, role, target_name"
            sql = f"SELECT {cols} FROM links WHERE {q}"
            for eid, *link in self.db.execute(sql, chunk):
                links.setdefault(eid, []).append(Link(link[0], link[1], link[2], link[3], link[4] or "", link[5]))
            for eid, name, num, txt in self.db.execute(f"SELECT entry_id, name, num, txt FROM fields WHERE {q}", chunk):
                fields.setdefault(eid, {})[name] = txt if num is None else (int(num) if num.is_integer() else num)
        return [_entry(r, uris.get(r[0], []), links.get(r[0], []), fields.get(r[0], {})) for r in rows]

    def ids_of_uuids(self, uuids: Iterable[str]) -> dict[str, list[int]]:
        """Row ids by UUID (several when copies differ in their manifests)."""
        out: dict[str, list[int]] = {}
        for chunk in _chunks(list(set(uuids)), 500):
            marks = ",".join("?" * len(chunk))
            for eid, uuid in self.db.execute(f"SELECT id, uuid FROM entries WHERE uuid IN ({marks})", chunk):
                out.setdefault(uuid, []).append(eid)
        return out

    def record_digests(self, uuids: Iterable[str]) -> dict[str, set[str]]:
        """The record digests of the catalogued models with these UUIDs, by UUID."""
        out: dict[str, set[str]] = {}
        for chunk in _chunks(list(set(uuids)), 500):
            marks = ",".join("?" * len(chunk))
            sql = (
                "SELECT uuid, record_digest FROM entries WHERE kind = 'model' AND record_digest IS NOT NULL "
                f"AND uuid IN ({marks})"
            )
            for uuid, digest in self.db.execute(sql, chunk):
                out.setdefault(uuid, set()).add(digest)
        return out

    def find(self, ref: str) -> list[Entry]:
        """The entries ``ref`` names: a UUID, a URI (or path) where one was found, or a name.

        Raises:
            CatalogEntryNotFoundError: nothing matches.
        """
        rows = self.db.execute("SELECT id FROM entries WHERE uuid = ?", (ref,)).fetchall()
        if not rows:
            rows = self.db.execute("SELECT entry_id FROM locations WHERE uri = ?", (_as_uri(ref),)).fetchall()
        if not rows:
            rows = self.db.execute("SELECT id FROM entries WHERE name = ? ORDER BY id", (ref,)).fetchall()
        if not rows:
            raise CatalogEntryNotFoundError(
                f"nothing in the catalog is called {ref!r} (tried it as a UUID, a URI and a name): "
                "`reprodl catalog add URI` indexes a dataset or a base URI; "
                f"`reprodl catalog search {ref}` looks for it"
            )
        return self.entries([r[0] for r in rows])

    def locations(self) -> list[tuple[str, int, str | None]]:
        """Every (uri, entry row id, base URI) known."""
        return [
            (u, int(i), b) for u, i, b in self.db.execute("SELECT uri, entry_id, base_uri FROM locations ORDER BY uri")
        ]

    def bases(self) -> list[str]:
        """The base URIs datasets were found under."""
        rows = self.db.execute("SELECT DISTINCT base_uri FROM locations WHERE base_uri IS NOT NULL ORDER BY 1")
        return [r[0] for r in rows]


def _as_uri(ref: str) -> str:
    with contextlib.suppress(Exception):  # not a URI reprodl reads: matches no location
        return normalise_uri(ref)
    return ref


def _chunks(values: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(values), size):
        yield values[i : i + size]


def _entry(row: tuple[Any, ...], uris: list[str], links: list[Link], fields: dict[str, FieldValue]) -> Entry:
    (_id, uuid, manifest, kind, name, readme, readme_fields, annotations, record, created, creator, verdict, at) = row
    return Entry(
        uuid=uuid,
        kind=kind,
        name=name,
        manifest_digest=manifest,
        uris=uris,
        readme=readme,
        readme_fields=json.loads(readme_fields),
        annotations=json.loads(annotations),
        record_digest=record,
        created_at=created,
        creator=creator,
        fields=fields,
        links=links,
        verdict=verdict,
        indexed_at=at,
    )
