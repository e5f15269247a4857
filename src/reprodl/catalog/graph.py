"""The lineage graph of a catalog, as Graphviz DOT, SVG or a self-contained HTML page.

Arrows point from what something derives from to what derives from it (dataset -> model ->
fine-tuned model; model -> its reproduction; model -> the claim holding it), each labelled with
the relation ("reproduced (unverified)" where the record digest a reproduction names is not the
catalogued original's). DOT is always written by reprodl itself. SVG comes from Graphviz's ``dot`` when
it is installed, else from reprodl's own layered layout (columns by depth, no crossing
minimisation): readable for the few dozen nodes around one model, which ``focus`` selects.

Example:
    >>> g = build_graph(cat, focus="digits-model")       # doctest: +SKIP
    >>> write_graph(g, "graph.html")                      # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import html
import shutil
import subprocess
from pathlib import Path
from typing import Any

from reprodl.catalog.db import Catalog
from reprodl.catalog.entry import Entry
from reprodl.catalog.files import check_output, writing
from reprodl.catalog.query import _one, descendants, lineage, original_digests, reproduction_verified
from reprodl.errors import CatalogError

SHAPES = {"dataset": "cylinder", "model": "box", "claim": "note", "summary": "folder", "unknown": "box"}
COLOURS = {"dataset": "#dbeafe", "model": "#dcfce7", "claim": "#fef9c3", "summary": "#fae8ff", "unknown": "#e5e7eb"}
FORMATS = (".dot", ".svg", ".html")
EDGE_LABELS = {"trained_on": "trained on", "parent": "fine-tuned", "reproduces": "reproduced", "member": "member"}
_BOX_W, _BOX_H, _GAP_X, _GAP_Y, _MARGIN = 190, 44, 90, 26, 20
_ARC = _BOX_H / 2 + _GAP_Y / 2  # how far above its row an edge arcs per column it skips


@dataclasses.dataclass
class Node:
    uuid: str
    name: str
    kind: str  # an entry's kind, or "unknown" for a target not in the catalog
    uri: str = ""


@dataclasses.dataclass
class Graph:
    nodes: dict[str, Node] = dataclasses.field(default_factory=dict)
    # (from, to, label); (from, to, relation, role) while being built
    edges: list[Any] = dataclasses.field(default_factory=list)


def _add_entry(graph: Graph, entry: Entry, digests: dict[str, set[str]]) -> None:
    graph.nodes[entry.uuid] = Node(entry.uuid, entry.name, entry.kind, entry.uris[0] if entry.uris else "")
    for link in entry.links:
        key = link.uuid or link.uri or ""
        if not key:
            continue
        if key not in graph.nodes:
            graph.nodes[key] = Node(key, link.name or key[:12], "unknown", link.uri or "")
        role = link.role
        if link.relation == "reproduces" and not reproduction_verified(entry, digests, of=key):
            role = "unverified"  # the original's record digest is not the one named
        graph.edges.append((key, entry.uuid, EDGE_LABELS.get(link.relation, link.relation), role))


def build_graph(cat: Catalog, *, focus: str | None = None) -> Graph:
    """The graph of every entry, or (``focus``: a UUID, URI or name) of one entry's lineage and descendants."""

    if focus is None:
        entries = cat.entries()
    else:
        start = _one(cat, focus)
        related = [n["uuid"] for n in descendants(cat, focus)]
        if start.kind == "model":
            related += [n["uuid"] for n in lineage(cat, focus) if n["in_catalog"]]
        ids = cat.ids_of_uuids([start.uuid, *related])
        entries = cat.entries([i for uuid in [start.uuid, *related] for i in ids.get(uuid, [])])
    graph = Graph()
    digests = original_digests(cat, entries)
    for entry in entries:
        if entry.uuid not in graph.nodes or graph.nodes[entry.uuid].kind == "unknown":
            _add_entry(graph, entry, digests)
    graph.edges = _merged(graph.edges)
    return graph


def _merged(edges: list[Any]) -> list[tuple[str, str, str]]:
    """One edge per (from, to, relation), its roles joined: ``trained on (train, valid)``."""
    roles: dict[tuple[str, str, str], list[str]] = {}
    for a, b, relation, role in edges:
        kept = roles.setdefault((a, b, relation), [])
        if role and role not in kept:
            kept.append(role)
    return sorted((a, b, f"{rel} ({', '.join(r)})" if r else rel) for (a, b, rel), r in roles.items())


def _dot_text(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def to_dot(graph: Graph) -> str:
    """Graphviz DOT text of ``graph``."""
    lines = ["digraph lineage {", "  rankdir=LR;", '  node [fontname="Helvetica", fontsize=10, style=filled];']
    for n in graph.nodes.values():
        label = _dot_text(f"{n.name}\n{n.kind}")
        lines.append(
            f'  "{_dot_text(n.uuid)}" [label="{label}", shape={SHAPES[n.kind]}, fillcolor="{COLOURS[n.kind]}"];'
        )
    for a, b, label in graph.edges:
        lines.append(f'  "{_dot_text(a)}" -> "{_dot_text(b)}" [label="{_dot_text(label)}", fontsize=8];')
    return "\n".join([*lines, "}"]) + "\n"


def _ranks(graph: Graph) -> dict[str, int]:
    """Column of each node: the longest path to it from a node with no incoming edge."""
    rank = dict.fromkeys(graph.nodes, 0)
    for _ in range(len(graph.nodes)):  # Bellman-Ford style; a cycle stops at len(nodes) rounds
        changed = False
        for a, b, _label in graph.edges:
            if rank[b] < rank[a] + 1 <= len(graph.nodes):
                rank[b], changed = rank[a] + 1, True
        if not changed:
            break
    return rank


def to_svg(graph: Graph) -> str:
    """SVG of ``graph``: Graphviz's when ``dot`` is installed, else reprodl's own layered layout."""
    dot = shutil.which("dot")
    if dot is not None:
        try:
            done = subprocess.run([dot, "-Tsvg"], input=to_dot(graph), capture_output=True, text=True, timeout=120)
            if done.returncode == 0:
                return done.stdout
        except (OSError, subprocess.SubprocessError):
            pass  # fall back to our own layout
    return _own_svg(graph)


def _own_svg(graph: Graph) -> str:
    rank = _ranks(graph)
    columns: dict[int, list[str]] = {}
    for key in sorted(graph.nodes, key=lambda k: (graph.nodes[k].kind, graph.nodes[k].name)):
        columns.setdefault(rank[key], []).append(key)
    top = _MARGIN + int(_ARC * max(0, max(columns, default=0) - 1))  # room for the arcs above the first row
    pos = {
        key: (_MARGIN + r * (_BOX_W + _GAP_X), top + i * (_BOX_H + _GAP_Y))
        for r, keys_ in columns.items()
        for i, key in enumerate(keys_)
    }
    width = _MARGIN * 2 + (max(columns, default=0) + 1) * (_BOX_W + _GAP_X)
    height = top + _MARGIN + max((len(c) for c in columns.values()), default=1) * (_BOX_H + _GAP_Y)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="Helvetica,Arial" '
        'font-size="11"><defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker></defs>'
    ]
    for a, b, label in graph.edges:
        parts.append(_edge_svg(pos[a], pos[b], label))
    for key, (x, y) in pos.items():
        n = graph.nodes[key]
        name = n.name if len(n.name) <= 28 else n.name[:27] + "\u2026"
        parts.append(
            f"<g><title>{html.escape(f'{n.kind} {n.name} {n.uuid} {n.uri}')}</title>"
            f'<rect x="{x}" y="{y}" width="{_BOX_W}" height="{_BOX_H}" rx="6" fill="{COLOURS[n.kind]}" stroke="#333"/>'
            f'<text x="{x + 8}" y="{y + 18}" font-weight="bold">{html.escape(name)}</text>'
            f'<text x="{x + 8}" y="{y + 34}" fill="#444">{html.escape(n.kind)} {html.escape(n.uuid[:8])}</text></g>'
        )
    return "\n".join([*parts, "</svg>"]) + "\n"


def _edge_svg(start: tuple[int, int], end: tuple[int, int], label: str) -> str:
    """A curve from the right of one box to the left of another; one that skips columns arcs above them."""
    x1, y1 = start[0] + _BOX_W, start[1] + _BOX_H / 2
    x2, y2 = end[0], end[1] + _BOX_H / 2
    bump = _ARC * max(0, round((end[0] - start[0]) / (_BOX_W + _GAP_X)) - 1)
    dx = max(30.0, (x2 - x1) / 2)
    path = f"M{x1},{y1} C{x1 + dx},{y1 - bump} {x2 - dx},{y2 - bump} {x2},{y2}"
    lx, ly = (x1 + x2) / 2, (y1 + y2) / 2 - bump * 0.75 - 3
    return (
        f'<path d="{path}" fill="none" stroke="#555" marker-end="url(#arrow)"/>'
        f'<text x="{lx}" y="{ly}" font-size="9" fill="#555" text-anchor="middle">{html.escape(label)}</text>'
    )


def to_html(graph: Graph, *, title: str = "reprodl lineage") -> str:
    """A self-contained HTML page: the SVG inline, a table of the nodes and the DOT text."""
    rows = "\n".join(
        f"<tr><td>{html.escape(n.kind)}</td><td>{html.escape(n.name)}</td><td><code>{html.escape(n.uuid)}</code></td>"
        f"<td>{html.escape(n.uri)}</td></tr>"
        for n in sorted(graph.nodes.values(), key=lambda n: (n.kind, n.name))
    )
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        "<style>body{font-family:Helvetica,Arial,sans-serif;margin:1.5em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 6px;font-size:12px;text-align:left}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>{len(graph.nodes)} nodes, {len(graph.edges)} links.</p>\n"
        f"{to_svg(graph)}<h2>Nodes</h2><table><tr><th>kind</th><th>name</th><th>uuid</th><th>uri</th></tr>\n{rows}"
        f"</table><details><summary>DOT</summary><pre>{html.escape(to_dot(graph))}</pre></details></body></html>\n"
    )


def write_graph(graph: Graph, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``graph`` to ``path`` as DOT, SVG or HTML, chosen by its suffix (whole or not at all).

    Raises:
        CatalogError: a suffix other than .dot, .svg or .html; ``path`` exists and ``overwrite``
            is False; or it cannot be written.
    """
    out = Path(path)
    suffix = out.suffix.lower()
    if suffix not in FORMATS:
        raise CatalogError(f"cannot write a graph to {out}: name it .dot, .svg or .html")
    check_output(out, overwrite=overwrite, what="graph")
    text = {".dot": to_dot, ".svg": to_svg, ".html": to_html}[suffix](graph)
    with writing(out, overwrite=overwrite, what="graph") as fh:
        fh.write(text)
    return out
