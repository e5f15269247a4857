"""Sharing a catalog: export to JSON Lines and import it elsewhere (one entry per line).

Each line is :meth:`Entry.to_dict` (with ``"format": "reprodl-catalog-entry/1"``): the same
fields the dtool lookup server (dserver) indexes, plus the links and fields reprodl adds, so a
team can merge catalogs, or load them into a shared server, without losing anything.

Example:
    >>> export_jsonl(cat, "team.jsonl")            # doctest: +SKIP
    >>> import_jsonl(other, "team.jsonl")          # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from reprodl import keys
from reprodl.catalog.db import Catalog
from reprodl.catalog.entry import Entry
from reprodl.catalog.files import check_output, writing
from reprodl.errors import CatalogError
from reprodl.parsing import check_size, load_json


def export_jsonl(cat: Catalog, path: str | os.PathLike[str], *, overwrite: bool = False) -> int:
    """Write every entry of ``cat`` to ``path`` as JSON Lines (sorted by UUID); how many.

    The file is written whole or not at all (a temporary file beside it, renamed).

    Raises:
        CatalogError: ``path`` exists and ``overwrite`` is False, or it cannot be written.
    """
    check_output(path, overwrite=overwrite, what="export")
    entries = sorted(cat.entries(), key=lambda e: (e.uuid, e.manifest_digest))
    with writing(path, overwrite=overwrite, what="export") as fh:
        for entry in entries:
            fh.write(json.dumps(entry.to_dict(), sort_keys=True, default=str) + "\n")
    return len(entries)


def import_jsonl(cat: Catalog, path: str | os.PathLike[str]) -> int:
    """Add every entry of a JSON Lines export to ``cat`` (idempotent, as ``add`` is); how many.

    Raises:
        CatalogError: a line that is not a catalog entry, naming the file and line.
    """
    if not Path(path).is_file():
        raise CatalogError(f"no catalog export at {path}: give the JSON Lines file `reprodl catalog export` wrote")
    entries = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path} line {n}"
            check_size(line, keys.MAX_RECORD_BYTES, what=where, error=CatalogError)
            data = load_json(line, what=where, error=CatalogError)
            if not isinstance(data, dict):
                raise CatalogError(f"{where} holds a JSON {type(data).__name__}, not a catalog entry")
            try:
                entries.append(Entry.from_dict(data))
            except CatalogError as exc:
                raise CatalogError(f"{where}: {exc}") from None
    cat.put_many(entries)
    cat.resolve_links()
    return len(entries)
