"""The catalog: find datasets, models and claims wherever they live, and ask about their lineage.

An embedded SQLite file (default: ``catalog.sqlite`` in the user's data directory, or
``$REPRODL_CATALOG``) indexes every dataset, model, claim and multi-run summary under the
base URIs added to it: identity (UUID, manifest and record digests), every URI it was found
at, README, annotations, creator and time, and what it derives from. It answers full-text
search (SQLite FTS5), ``--where`` listings, lineage and descendants, models trained on a
dataset (through fine-tuning too) and reproductions with their verdicts; it draws the lineage
graph, exports and imports JSON Lines, and checks every entry against storage.

Modules: ``entry`` (:class:`Entry`, :class:`Link`), ``db`` (:class:`Catalog`, the SQLite file),
``scan`` (:func:`add`), ``where`` (the ``--where`` grammar), ``query`` (the questions),
``graph`` (DOT, SVG, HTML), ``exchange`` (JSON Lines), ``check`` (integrity).

Example:
    >>> from reprodl.catalog import Catalog, add, models_trained_on   # doctest: +SKIP
    >>> with Catalog() as cat:                                          # doctest: +SKIP
    ...     add(cat, "/data")
    ...     models_trained_on(cat, "digits")
"""

from __future__ import annotations

from reprodl.catalog.check import LocationCheck, check
from reprodl.catalog.db import Catalog, default_path
from reprodl.catalog.entry import KINDS, RELATIONS, Entry, Link
from reprodl.catalog.exchange import export_jsonl, import_jsonl
from reprodl.catalog.graph import Graph, build_graph, write_graph
from reprodl.catalog.query import descendants, lineage, ls, models_trained_on, reproductions, search
from reprodl.catalog.scan import AddReport, add, describe
from reprodl.catalog.where import parse_where

__all__ = [
    "KINDS",
    "RELATIONS",
    "AddReport",
    "Catalog",
    "Entry",
    "Graph",
    "Link",
    "LocationCheck",
    "add",
    "build_graph",
    "check",
    "default_path",
    "descendants",
    "describe",
    "export_jsonl",
    "import_jsonl",
    "lineage",
    "ls",
    "models_trained_on",
    "parse_where",
    "reproductions",
    "search",
    "write_graph",
]
