"""The lineage of a model (data, ancestors, what it reproduces, its reproductions and
replications) as a drawn graph, and the divergence of a reproduction from its original.

Ancestors come from the record's parent chain (each link's digest checked offline);
reproductions, replications and the summaries and claims a model belongs to are found
beside it: the datasets in the same local base directory (at most :data:`MAX_NEIGHBOURS`)
whose record reproduces it, or whose members list it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from reprodl import keys
from reprodl.errors import ReprodlError
from reprodl.modeldataset.read import load_trace, read_record
from reprodl.provenance import ProvenanceRecord
from reprodl.reports.context import Context
from reprodl.reports.graph import Edge, Node, lineage_svg
from reprodl.reports.html import esc, kv_table, note, section, table
from reprodl.store import StoredDataSet, local_path, open_dataset

MAX_NEIGHBOURS = 200
MAX_DIVERGENCES = 3


@dataclasses.dataclass
class Neighbours:
    """Datasets beside a model that refer to it."""

    reproductions: list[tuple[str, ProvenanceRecord]] = dataclasses.field(default_factory=list)
    groups: list[tuple[str, str, list[str]]] = dataclasses.field(default_factory=list)  # (uri, kind, members)


def neighbours(ds: StoredDataSet) -> Neighbours:
    """Reproductions of ``ds`` and the summaries/claims listing it, among the datasets beside it (local only)."""

    found = Neighbours()
    path = local_path(ds.uri)
    if path is None:
        return found
    siblings = sorted(p for p in path.parent.iterdir() if (p / ".dtool").is_dir() and p != path)[:MAX_NEIGHBOURS]
    for p in siblings:
        try:
            other = open_dataset(str(p))
            kind = other.get_annotation(keys.MODEL_KIND) if keys.MODEL_KIND in other.annotation_names() else None
            if kind in (keys.KIND_SUMMARY, keys.KIND_CLAIM):
                members = [str(m) for m in other.get_annotation(keys.SUMMARY_MEMBERS) or []]
                if ds.uri in members:
                    found.groups.append((other.uri, str(kind), members))
            elif kind == keys.KIND_MODEL:
                record = read_record(other, check=False)
                if record.lineage.reproduces and record.lineage.reproduces.uuid == ds.uuid:
                    found.reproductions.append((other.uri, record))
        except (ReprodlError, OSError, TypeError):
            continue  # a neighbour that cannot be read is not part of this lineage
    return found


def _graph(ds: StoredDataSet, record: ProvenanceRecord, chain: list[dict[str, Any]], near: Neighbours) -> tuple:
    nodes = [Node("this", record.model_name, f"this model · {ds.uuid[:8]}", "this", 2)]
    edges = []
    for d in {d.uuid: d for d in record.data}.values():
        roles = "+".join(sorted({r.role for r in record.data if r.uuid == d.uuid}))
        nodes.append(Node(f"data:{d.uuid}", d.name, f"dataset · {d.uuid[:8]}", "data", 0))
        edges.append(Edge(f"data:{d.uuid}", "this", roles))
    child = "this"
    for entry in chain[1:]:
        key = f"model:{entry.get('uuid') or entry['uri']}"
        ok = "" if entry.get("link_ok", True) else " · LINK BROKEN"
        nodes.append(Node(key, str(entry.get("name", entry["uri"])), f"ancestor{ok}", "model", 1))
        edges.append(Edge(key, child, "fine-tuned into"))
        child = key
    if record.lineage.reproduces:
        ref = record.lineage.reproduces
        nodes.append(Node("original", ref.uri.rsplit("/", 1)[-1], f"original · {ref.uuid[:8]}", "model", 1))
        edges.append(Edge("original", "this", "reproduced as"))
    for uri, rec in near.reproductions:
        nodes.append(Node(f"repro:{uri}", rec.model_name, "reproduction", "reproduction", 3))
        edges.append(Edge("this", f"repro:{uri}", "reproduced as"))
    for uri, kind, members in near.groups:
        nodes.append(Node(f"group:{uri}", uri.rsplit("/", 1)[-1], f"{kind} of {len(members)} runs", "summary", 3))
        edges.append(Edge("this", f"group:{uri}", "member of"))
        for m in members:
            if m != ds.uri and kind == keys.KIND_SUMMARY:
                nodes.append(Node(f"rep:{m}", m.rsplit("/", 1)[-1], "replication (other seed)", "replication", 4))
                edges.append(Edge(f"group:{uri}", f"rep:{m}", "member"))
    return nodes, edges


def lineage_section(ds: StoredDataSet, record: ProvenanceRecord, near: Neighbours, ctx: Context) -> str:
    """The drawn graph and a table of every node's URI."""
    from reprodl.modeldataset.verify import lineage

    ctx.say("tracing the lineage")
    chain = lineage(ds.uri) if record.lineage.parent else [{"uri": ds.uri}]
    nodes, edges = _graph(ds, record, chain, near)
    rows: list[tuple[str, Any, Any, Any]] = [("this model", record.model_name, ds.uuid, ds.uri)]
    rows += [("data (" + d.role + ")", d.name, d.uuid, d.uri) for d in record.data]
    rows += [("ancestor", e.get("name"), e.get("uuid"), e["uri"]) for e in chain[1:]]
    if record.lineage.reproduces:
        rows.append(("reproduces", "", record.lineage.reproduces.uuid, record.lineage.reproduces.uri))
    rows += [("reproduction", rec.model_name, "", uri) for uri, rec in near.reproductions]
    for uri, kind, members in near.groups:
        rows.append((kind, "", "", uri))
        rows += [("replication", "", "", m) for m in members if m != ds.uri and kind == keys.KIND_SUMMARY]
    body = (
        f'<div style="overflow-x:auto">{lineage_svg(nodes, edges, start_rows={1: 1})}</div>'
        + table(["relation", "name", "UUID", "URI"], rows)
        + note("Reproductions and replications are found among the datasets beside this one (local bases only).")
    )
    return section("lineage", "Lineage", body)


# --- divergence ---------------------------------------------------------------------------
def _divergence(original: StoredDataSet, orig: ProvenanceRecord, copy: StoredDataSet, rec: ProvenanceRecord) -> Any:
    """The first step at which ``rec``'s trace leaves ``orig``'s (None when either has none)."""
    from reprodl.reproduction.divergence import TraceComparer
    from reprodl.reproduction.environment import compare_environments

    was, now = load_trace(original, orig), load_trace(copy, rec)
    if was is None or now is None or orig.results.trace is None or rec.results.trace is None:
        return None
    if orig.results.trace.kind != rec.results.trace.kind:  # digests of two kinds: no step compares
        return None
    comparer = TraceComparer(was, orig.results.trace.tensors, kind=orig.results.trace.kind)
    comparer.compare_all(now)
    commits = [r.code.git.commit if r.code.git else None for r in (orig, rec)]
    settings = [f"git commit {commits[0]} -> {commits[1]}"] if commits[0] != commits[1] else []
    return comparer.result(environment=compare_environments(orig.environment, rec.environment), settings=settings)


def _divergence_html(title: str, div: Any) -> str:
    rows = [("result", div.summary()), ("steps compared", div.compared_steps)]
    if div.loss is not None:
        rows.append(("loss at that step", f"{div.loss['recorded']!r} -> {div.loss['reproduced']!r}"))
    said = {True: "differed", False: "were the same", None: "not traced"}
    if div.step is not None:
        rows.append(("batch", f"sample indices {said[div.indices_differ]}; contents {said[div.contents_differ]}"))
    rows += [("cause", c) for c in div.causes]
    moved = [(t["name"], t["recorded"], t["reproduced"], t["abs_diff"]) for t in div.tensors]
    body = f"<h3>{esc(title)}</h3>" + kv_table(rows)
    if moved:
        body += table(["tensor", "recorded digest", "reproduced", "abs diff"], moved, numeric=[3])
    return body


Found = list[tuple[str, Any]]  # (title, a Divergence, None when a side has no trace, or why not compared)


def divergences(ds: StoredDataSet, record: ProvenanceRecord, near: Neighbours, ctx: Context) -> Found:
    """Where this reproduction left its original, and where this model's reproductions left it."""
    pairs: list[tuple[str, Any]] = []
    try:
        if record.lineage.reproduces:
            original = open_dataset(record.lineage.reproduces.uri)
            pair = (original, read_record(original, check=False), ds, record)
            pairs.append(("this model against the original it reproduces", pair))
        for uri, rec in near.reproductions[:MAX_DIVERGENCES]:
            pairs.append((f"reproduction {rec.model_name} against this model", (ds, record, open_dataset(uri), rec)))
    except ReprodlError as exc:
        return [("divergence", f"a model of the pair is unreadable ({exc})")]
    if pairs:
        ctx.say("comparing step traces")
    found: Found = []
    for title, args in pairs:
        try:
            found.append((title, _divergence(*args)))
        except (ReprodlError, ValueError, KeyError, TypeError, IndexError) as exc:  # a trace of another shape
            found.append((title, f"the step traces cannot be compared ({type(exc).__name__}: {exc})"))
    return found


def first_divergent_step(found: Found) -> int | None:
    """The step of the first divergence found, to mark on the trace."""
    return next((div.step for _, div in found if getattr(div, "step", None) is not None), None)


def divergence_section(found: Found, ctx: Context) -> str:
    """Each comparison: where the traces parted and why, or why there is none."""
    if not found:
        return ""
    body = ""
    for title, div in found:
        if isinstance(div, str):
            body += ctx.missing(title, div)
        else:
            body += _divergence_html(title, div) if div is not None else note(f"{title}: no step trace on both sides")
    return section("divergence", "Divergence", body)
