"""The lineage as a drawn graph: an inline SVG laid out in columns (no graphviz needed).

Nodes are placed in the column their caller gives (data, ancestors, this model, what derives
from it), stacked top to bottom; edges are straight arrows from one node's right side to
another's left side. Every label is escaped and shortened; its full text is the node's
``<title>`` (shown on hover).
"""

from __future__ import annotations

import dataclasses

from reprodl.reports.html import esc

NODE_W, NODE_H = 180, 46
COL_GAP, ROW_GAP, MARGIN = 90, 18, 14
COLOURS = {
    "data": ("#e8f5e9", "#2e7d32"),
    "model": ("#e3f2fd", "#1565c0"),
    "this": ("#1f3a5f", "#1f3a5f"),
    "reproduction": ("#fff3e0", "#ef6c00"),
    "replication": ("#f3e5f5", "#6a1b9a"),
    "summary": ("#eceff1", "#455a64"),
}


@dataclasses.dataclass
class Node:
    key: str
    label: str
    detail: str
    kind: str
    column: int


@dataclasses.dataclass
class Edge:
    source: str
    target: str
    label: str


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _positions(nodes: list[Node], start_rows: dict[int, int]) -> dict[str, tuple[int, int]]:
    rows: dict[int, int] = dict(start_rows)
    columns = sorted({n.column for n in nodes})
    place = {c: i for i, c in enumerate(columns)}
    out = {}
    for n in nodes:
        row = rows.get(n.column, 0)
        rows[n.column] = row + 1
        out[n.key] = (MARGIN + place[n.column] * (NODE_W + COL_GAP), MARGIN + 20 + row * (NODE_H + ROW_GAP))
    return out


def _node_svg(n: Node, x: int, y: int) -> str:
    fill, stroke = COLOURS.get(n.kind, COLOURS["model"])
    ink = "#ffffff" if n.kind == "this" else "#1d2330"
    return (
        f"<g><title>{esc(n.label)}&#10;{esc(n.detail)}</title>"
        f'<rect x="{x}" y="{y}" width="{NODE_W}" height="{NODE_H}" rx="6" fill="{fill}" stroke="{stroke}"/>'
        f'<text x="{x + 8}" y="{y + 18}" font-size="12" font-weight="600" fill="{ink}">{esc(_clip(n.label, 25))}</text>'
        f'<text x="{x + 8}" y="{y + 35}" font-size="10" fill="{ink}">{esc(_clip(n.detail, 30))}</text></g>'
    )


def _edge_svg(e: Edge, src: tuple[int, int], dst: tuple[int, int]) -> str:
    x1, y1 = src[0] + NODE_W, src[1] + NODE_H // 2
    x2, y2 = dst[0], dst[1] + NODE_H // 2
    if x2 <= x1:  # same column: go down the right side
        x1, x2 = src[0] + NODE_W // 2, dst[0] + NODE_W // 2
        y1, y2 = src[1] + NODE_H, dst[1]
    head = (
        f"{x2},{y2} {x2 - 8},{y2 - 4} {x2 - 8},{y2 + 4}"
        if x2 > x1
        else f"{x2},{y2} {x2 - 4},{y2 - 8} {x2 + 4},{y2 - 8}"
    )
    mx, my = (x1 + x2) // 2, (y1 + y2) // 2 - 4
    return (
        f'<line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="#8a94a6" stroke-width="1.4"/>'
        f'<polygon points="{head}" fill="#8a94a6"/>'
        f'<text x="{mx}" y="{my}" font-size="10" fill="#56607a" text-anchor="middle" stroke="#fff" '
        f'stroke-width="3" paint-order="stroke">{esc(_clip(e.label, 16))}</text>'
    )


def lineage_svg(nodes: list[Node], edges: list[Edge], *, start_rows: dict[int, int] | None = None) -> str:
    """An inline ``<svg>`` of the graph (edges to unknown nodes are left out).

    ``start_rows`` gives the first row of a column (so that a column can leave room for the
    edges that pass it by).
    """
    pos = _positions(nodes, start_rows or {})
    width = max((x for x, _ in pos.values()), default=0) + NODE_W + MARGIN
    height = max((y for _, y in pos.values()), default=0) + NODE_H + MARGIN
    parts = [_edge_svg(e, pos[e.source], pos[e.target]) for e in edges if e.source in pos and e.target in pos]
    parts += [_node_svg(n, *pos[n.key]) for n in nodes]
    return (
        f'<svg role="img" aria-label="lineage graph" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" font-family="system-ui,sans-serif">'
        + "".join(parts)
        + "</svg>"
    )
