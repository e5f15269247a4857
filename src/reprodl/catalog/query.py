"""Questions the catalog answers: search, listing with ``--where``, and lineage in both directions.

Each function takes an open :class:`~reprodl.catalog.db.Catalog` and returns plain data
(entries, or dicts that are their JSON form). Graph walks go one level per query, following
the ``links`` table's index, so each costs a few milliseconds per level whatever the size.

Example:
    >>> [e.name for e in search(cat, "digits")]              # doctest: +SKIP
    ['digits', 'digits-model']
"""

from __future__ import annotations

import re
from typing import Any

from reprodl.catalog.db import Catalog
from reprodl.catalog.entry import KINDS, Entry, Link
from reprodl.catalog.where import COLUMNS, check_types, compile_where, parse_where
from reprodl.errors import CatalogError

_WORD = re.compile(r"\w+", re.UNICODE)
SEARCH_CANDIDATES = 5_000  # matches ranked per search (bm25 over every match of a common word is slow)
MAX_DEPTH = 100  # lineage deeper than this is cut (a cycle in hand-edited records cannot loop)


def fts_query(text: str) -> str:
    """An FTS5 query for the words of ``text``, all required, each a prefix (``"digit"*``).

    Only word characters reach FTS5, each inside double quotes, so no text can use FTS5's
    own operators.
    """
    words = _WORD.findall(text)
    if not words:
        raise CatalogError(f"search text {text!r} has no words to look for: give a name or a word of a README")
    return " ".join(f'"{w}"*' for w in words)


def search(cat: Catalog, text: str, *, kind: str | None = None, limit: int = 20) -> list[Entry]:
    """Entries whose name, README or annotations contain every word of ``text`` (best first).

    Ranked (FTS5's bm25) among the first :data:`SEARCH_CANDIDATES` matches: a word that nearly
    every entry holds stays fast, and a second, rarer word narrows it.
    """
    where = "search MATCH ?"
    args: list[Any] = [fts_query(text)]
    if kind is not None:
        where, args = where + " AND e.kind = ?", [*args, _check_kind(kind)]
    # CROSS JOIN keeps the full-text index the outer loop (SQLite does not reorder it): else the
    # planner may walk every entry of the kind and probe the index for each (seconds at 10^5).
    sql = (
        "SELECT c.id FROM (SELECT e.id AS id, s.rank AS rank FROM search s CROSS JOIN entries e ON e.id = s.rowid "
        f"WHERE {where} LIMIT ?) c"
    )
    args.append(SEARCH_CANDIDATES)
    rows = cat.db.execute(sql + " ORDER BY c.rank LIMIT ?", [*args, int(limit)]).fetchall()
    return cat.entries([r[0] for r in rows])


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise CatalogError(f"--kind {kind!r} is not one of {', '.join(KINDS)}")
    return kind


def ls(cat: Catalog, *, kind: str | None = None, where: str = "", limit: int | None = None) -> list[Entry]:
    """Entries of ``kind`` (all kinds when None) matching the ``where`` clause (:mod:`.where`)."""
    conditions = parse_where(where)
    _check_fields(cat, [c.field for c in conditions if c.field not in COLUMNS])
    for c in conditions:
        check_types(c, *_field_types(cat, c.field))
    sql, args = compile_where(conditions)
    if kind is not None:
        sql, args = f"e.kind = ? AND {sql}", [_check_kind(kind), *args]
    query = f"SELECT e.id FROM entries e WHERE {sql} ORDER BY e.created_at, e.id"
    if limit is not None:
        query, args = query + " LIMIT ?", [*args, int(limit)]
    return cat.entries([r[0] for r in cat.db.execute(query, args)])


def _field_types(cat: Catalog, name: str) -> tuple[bool, bool]:
    """Whether some entry holds the field ``name`` as a number, and as text (a column: text)."""
    if name in COLUMNS:
        return False, True
    # EXISTS over the (name, num) and (name, txt) indexes: one probe each, whatever the catalog's size
    sql = "SELECT EXISTS (SELECT 1 FROM fields WHERE name = ? AND {} IS NOT NULL)"
    nums = cat.db.execute(sql.format("num"), (name,)).fetchone()[0]
    texts = cat.db.execute(sql.format("txt"), (name,)).fetchone()[0]
    return bool(nums), bool(texts)


def _check_fields(cat: Catalog, names: list[str]) -> None:
    """Refuse a ``--where`` field no entry has (a typo would otherwise just match nothing)."""
    for name in names:
        if cat.db.execute("SELECT 1 FROM fields WHERE name = ? LIMIT 1", (name,)).fetchone() is None:
            known = [r[0] for r in cat.db.execute("SELECT DISTINCT name FROM fields ORDER BY name LIMIT 200")]
            raise CatalogError(
                f"no catalogued entry has a field {name!r}: use a column ({', '.join(COLUMNS)}) or a field "
                f"entries have ({', '.join(known) or 'none yet: add a base URI first'})"
            )


def _one(cat: Catalog, ref: str, *, kind: str | None = None) -> Entry:
    """The entry ``ref`` names; an error listing them when it names several of different UUIDs."""
    found = cat.find(ref)
    if kind is not None:
        found = [e for e in found if e.kind == kind] or found
    if len({e.uuid for e in found}) > 1:
        listed = "; ".join(f"{e.kind} {e.name} {e.uuid} ({', '.join(e.uris[:1])})" for e in found[:10])
        raise CatalogError(f"{ref!r} names {len(found)} catalog entries: {listed}. Give a UUID or a URI instead")
    return found[0]


def original_digests(cat: Catalog, entries: list[Entry]) -> dict[str, set[str]]:
    """The record digests of the catalogued models that ``entries`` say they reproduce, by UUID."""
    return cat.record_digests({k.uuid for e in entries for k in e.links if k.relation == "reproduces" and k.uuid})


def reproduction_verified(entry: Entry, digests: dict[str, set[str]], *, of: str | None = None) -> bool | None:
    """Whether ``entry``'s claim to reproduce a model (``of``, or any) holds; None when it claims none.

    It holds when the record digest it names for the original is the catalogued original's
    (``digests``: :func:`original_digests`) and its own record is intact, and, where it carries
    an attestation (``reprodl reproduce --attest``), when that is signed and states the same
    (``attested``). A claim anyone can write (an annotation with a made-up digest, an original
    not in the catalog) is unverified.
    """
    links = [k for k in entry.links if k.relation == "reproduces" and k.uuid and (of is None or k.uuid == of)]
    if not links:
        return None
    if any(_said_no(entry.fields.get(name)) for name in ("record_digest_ok", "attested")):
        return False
    return any(k.digest is not None and k.digest in digests.get(str(k.uuid), set()) for k in links)


def _said_no(value: Any) -> bool:
    """A boolean field that says no: False, or 0 as the catalog file keeps it (None: not said)."""
    return value is not None and not value


def summaries(cat: Catalog, entries: list[Entry]) -> list[dict[str, Any]]:
    """Each entry's :meth:`~Entry.summary`, with ``verified`` (:func:`reproduction_verified`) for a reproduction."""
    digests = original_digests(cat, entries)
    out = []
    for e in entries:
        verified = reproduction_verified(e, digests)
        attested = (
            {"attested": bool(e.fields["attested"]), "attested_by": e.fields.get("attested_by")}
            if ("attested" in e.fields)
            else {}
        )
        out.append(e.summary() if verified is None else {**e.summary(), "verified": verified, **attested})
    return out


def _node(
    entry: Entry | None, link: Any, depth: int, relation: str, role: str, of: str, *, verified: bool | None = None
) -> dict[str, Any]:
    """One step of a walk: the entry reached (or what the link says of an uncatalogued target);
    ``verified`` (a ``reproduces`` step): whether that reproduction is verified."""
    base: dict[str, Any] = {"depth": depth, "relation": relation, "role": role, "of": of}
    if verified is not None:
        base["verified"] = verified
    if entry is not None:
        return {**base, **entry.summary(), "in_catalog": True}
    return {**base, "uuid": link[0], "name": link[2], "uris": [link[1]] if link[1] else [], "in_catalog": False}


def lineage(cat: Catalog, model: str) -> list[dict[str, Any]]:
    """Ancestors of ``model``: parent models (fine-tuning), the models it reproduces, and
    every dataset any of them was trained, validated or tested on; nearest first.

    Each item: ``depth`` (1 = direct), ``relation`` (parent, reproduces, trained_on), ``role``,
    ``of`` (the UUID it is an ancestor of), the entry's summary and ``in_catalog``; a
    ``reproduces`` step also says whether it is ``verified`` (:func:`reproduction_verified`).
    """
    start = _one(cat, model, kind="model")
    out: list[dict[str, Any]] = []
    seen = {start.uuid}
    frontier = [start]
    for depth in range(1, MAX_DEPTH + 1):
        nxt: list[Entry] = []
        for child in frontier:
            for link in child.links:
                if link.relation == "member" or link.uuid is None or link.uuid in seen:
                    continue
                seen.add(link.uuid)
                target = _pick(cat, link.uuid, link.digest)
                verified = _step_verified(cat, child, link)
                what = (link.uuid, link.uri, link.name)
                out.append(_node(target, what, depth, link.relation, link.role, child.uuid, verified=verified))
                if target is not None:
                    nxt.append(target)
        if not nxt:
            break
        frontier = nxt
    return out


def _step_verified(cat: Catalog, child: Entry, link: Link) -> bool | None:
    """For a ``reproduces`` link: whether ``child``'s reproduction of its target is verified."""
    if link.relation != "reproduces":
        return None
    return bool(reproduction_verified(child, original_digests(cat, [child]), of=link.uuid))


def _pick(cat: Catalog, uuid: str, digest: str | None) -> Entry | None:
    """The entry of ``uuid`` whose record or manifest digest is ``digest`` (else any of that UUID)."""
    ids = cat.ids_of_uuids([uuid]).get(uuid, [])
    found = cat.entries(ids)
    for e in found:
        if digest in (e.record_digest, e.manifest_digest):
            return e
    return found[0] if found else None


def _children(
    cat: Catalog, uuids: list[str], relations: tuple[str, ...], roles: tuple[str, ...] | None = None
) -> list[tuple[int, str, str, str]]:
    """(row id, relation, role, parent UUID) of the entries linking to any of ``uuids``."""
    out = []
    rel_marks = ",".join("?" * len(relations))
    for i in range(0, len(uuids), 500):
        chunk = uuids[i : i + 500]
        marks = ",".join("?" * len(chunk))
        sql = (
            "SELECT DISTINCT entry_id, relation, role, target_uuid FROM links "
            f"WHERE target_uuid IN ({marks}) AND relation IN ({rel_marks})"
        )
        out += [r for r in cat.db.execute(sql, [*chunk, *relations]) if roles is None or r[2] in roles]
    return out


def _walk_down(
    cat: Catalog, start: list[str], first: tuple[str, ...], then: tuple[str, ...], roles: tuple[str, ...] | None
) -> list[dict[str, Any]]:
    """Entries reached from ``start`` UUIDs: one level by ``first`` relations, then by ``then``."""
    out: list[dict[str, Any]] = []
    seen = set(start)
    frontier, relations, want_roles = list(start), first, roles
    for depth in range(1, MAX_DEPTH + 1):
        rows = _children(cat, frontier, relations, want_roles)
        new_ids: dict[int, tuple[str, str, str]] = {}
        for eid, relation, role, of in rows:
            new_ids.setdefault(eid, (relation, role, of))
        frontier = []
        found = cat.entries(list(new_ids))
        digests = original_digests(cat, found)
        for eid, e in zip(list(new_ids), found):
            if e.uuid in seen:
                continue
            seen.add(e.uuid)
            frontier.append(e.uuid)
            relation, role, of = new_ids[eid]
            verified = bool(reproduction_verified(e, digests, of=of)) if relation == "reproduces" else None
            out.append(_node(e, None, depth, relation, role, of, verified=verified))
        if not frontier or not then:
            break
        relations, want_roles = then, None
    return out


def descendants(cat: Catalog, ref: str) -> list[dict[str, Any]]:
    """Everything derived from a dataset or model: models trained on it, fine-tuned from or
    reproducing those, claims and summaries holding them; nearest first."""
    start = _one(cat, ref)
    every = ("trained_on", "parent", "reproduces", "member")
    return _walk_down(cat, [start.uuid], every, every, None)


def models_trained_on(cat: Catalog, dataset: str, *, roles: tuple[str, ...] = ("train",)) -> list[dict[str, Any]]:
    """Models trained on ``dataset`` directly (``depth`` 1) or through fine-tuning: a model
    whose parent (or its parent...) was trained on it (``relation`` parent, ``of`` its parent)."""
    start = _one(cat, dataset)
    found = _walk_down(cat, [start.uuid], ("trained_on",), ("parent",), roles)
    return [n for n in found if n["kind"] == "model"]


def reproductions(cat: Catalog, model: str) -> dict[str, Any]:
    """The reproductions of ``model`` with each verdict, and its replications.

    ``reproductions``: catalogued models whose record says they reproduce it (``reprodl
    reproduce --output`` keeps one and writes its verdict on it), each ``verified`` only when
    the record digest it names is this model's (:func:`reproduction_verified`). ``replications``: each
    multi-run summary or claim it is a member of, with its verdict and its other members.
    """
    start = _one(cat, model, kind="model")
    repro = _children(cat, [start.uuid], ("reproduces",))
    out_repro = summaries(cat, cat.entries([r[0] for r in repro]))
    groups = _children(cat, [start.uuid], ("member",))
    replications = []
    for group in cat.entries([r[0] for r in groups]):
        members = [link for link in group.links if link.relation == "member" and link.uuid != start.uuid]
        replications.append(
            {
                **group.summary(),
                "fields": group.fields,
                "members": [{"uuid": m.uuid, "uri": m.uri, "role": m.role} for m in members],
            }
        )
    return {"model": start.summary(), "reproductions": out_repro, "replications": replications}
