"""`reprodl catalog ...`: index datasets, models and claims, and ask about their lineage."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer

from reprodl import keys
from reprodl.cli.common import JSON_OPT, QUIET_OPT, handle_errors, out, print_json, progress_bar
from reprodl.errors import ExitCode

if TYPE_CHECKING:
    from reprodl.catalog import Catalog, Entry

app = typer.Typer(
    help="Find datasets, models and claims wherever they live; ask about lineage and reproductions.",
    no_args_is_help=True,
)

CATALOG_OPT = typer.Option(
    None,
    "--catalog",
    envvar=keys.CATALOG_ENV,
    help="The catalog file (default: catalog.sqlite in your data directory, e.g. ~/.local/share/reprodl).",
)
OVERWRITE_OPT = typer.Option(False, "--overwrite", help="Replace the output file if it exists.")
_UNVERIFIED = ", unverified"  # a reproduction whose named original record digest is not the catalogued one


@contextlib.contextmanager
def _open(path: Optional[Path]) -> Iterator[Catalog]:
    from reprodl.catalog import Catalog

    with Catalog(path) as cat:
        yield cat


def _print_entries(cat: Catalog, entries: list[Entry], as_json: bool) -> None:
    from reprodl.catalog.query import summaries

    listed = summaries(cat, entries)  # a reproduction's ``verified``
    if as_json:
        print_json([s | {"fields": e.fields} for s, e in zip(listed, entries)])
        return
    for s, e in zip(listed, entries):
        verdict = f"  [{e.verdict}{_UNVERIFIED if s.get('verified') is False else ''}]" if e.verdict else ""
        out.print(f"{e.kind:8} {e.name}  {e.uuid}  {', '.join(e.uris)}{verdict}", markup=False)
    if not entries:
        out.print("nothing found")


def _print_nodes(nodes: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        print_json(nodes)
        return
    for n in nodes:
        where = ", ".join(n["uris"]) if n["in_catalog"] else f"not in the catalog ({', '.join(n['uris'])})"
        role = f" ({n['role']})" if n["role"] else ""
        role += " (unverified)" if n.get("verified") is False else ""
        kind = n.get("kind", "?")
        out.print(
            f"{'  ' * (n['depth'] - 1)}{n['relation']}{role}: {kind} {n['name']}  {n['uuid']}  {where}", markup=False
        )
    if not nodes:
        out.print("nothing found")


@app.command("add")
@handle_errors
def add_cmd(
    uri: str = typer.Argument(..., help="A dataset's URI, or a base URI (directory, s3://bucket) to index all of."),
    catalog: Optional[Path] = CATALOG_OPT,
    quiet: bool = QUIET_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Index every dataset, model, claim and summary at URI (re-adding is idempotent)."""
    from reprodl.catalog import add

    with _open(catalog) as cat, progress_bar(f"Indexing {uri}", None, quiet=quiet or as_json) as advance:
        report = add(cat, uri, progress=lambda done, total: advance(1))
    if as_json:
        print_json(report.to_dict())
    else:
        kinds: dict[str, int] = {}
        for item in report.indexed:
            kinds[item["kind"]] = kinds.get(item["kind"], 0) + 1
        counts = ", ".join(f"{n} {k}(s)" for k, n in sorted(kinds.items())) or "nothing"
        out.print(f"indexed {counts} from {report.base_uri}; {report.new_entries} new in {cat.path}", markup=False)
        for failure in report.failed:
            out.print(f"  could not index {failure['uri']}: {failure['error']}", markup=False)
    if report.failed:
        raise typer.Exit(int(ExitCode.FAILED))


@app.command("search")
@handle_errors
def search_cmd(
    text: str = typer.Argument(..., help="Words to find in names, READMEs and annotations (each a prefix)."),
    kind: Optional[str] = typer.Option(None, "--kind", help="dataset, model, claim or summary."),
    limit: int = typer.Option(20, "--limit", help="At most this many, best first."),
    catalog: Optional[Path] = CATALOG_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Full-text search over names, READMEs and annotations."""
    from reprodl.catalog import search

    with _open(catalog) as cat:
        _print_entries(cat, search(cat, text, kind=kind, limit=limit), as_json)


@app.command("ls")
@handle_errors
def ls_cmd(
    kind: Optional[str] = typer.Option(None, "--kind", help="dataset, model, claim or summary."),
    where: str = typer.Option(
        "",
        "--where",
        help=(
            "FIELD OP VALUE joined by 'and', e.g. 'valid_accuracy>0.95'. Fields: the columns name, kind, uuid, "
            "creator, created_at, verdict; a model's metrics, epochs, architecture (=GenNet matches "
            "reprodl.zoo:GenNet), params.NAME...; a dataset's n_items (dtool items, i.e. files), n_samples "
            "(tensor rows), size_bytes. See docs/catalog.md."
        ),
    ),
    limit: Optional[int] = typer.Option(None, "--limit", help="At most this many."),
    catalog: Optional[Path] = CATALOG_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """List entries, filtered by kind and by a --where clause on their fields."""
    from reprodl.catalog import ls

    with _open(catalog) as cat:
        _print_entries(cat, ls(cat, kind=kind, where=where, limit=limit), as_json)


@app.command("models-trained-on")
@handle_errors
def trained_on_cmd(
    dataset: str = typer.Argument(..., help="The dataset: UUID, URI or name."),
    role: Optional[list[str]] = typer.Option(None, "--role", help="Roles counted (default train); repeatable."),
    catalog: Optional[Path] = CATALOG_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Models trained on DATASET, directly or through fine-tuning (a parent trained on it)."""
    from reprodl.catalog import models_trained_on

    with _open(catalog) as cat:
        _print_nodes(models_trained_on(cat, dataset, roles=tuple(role or ("train",))), as_json)


@app.command("lineage")
@handle_errors
def lineage_cmd(
    model: str = typer.Argument(..., help="The model: UUID, URI or name."),
    catalog: Optional[Path] = CATALOG_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Ancestors of MODEL: parent models, the model it reproduces, and their datasets."""
    from reprodl.catalog import lineage

    with _open(catalog) as cat:
        _print_nodes(lineage(cat, model), as_json)


@app.command("descendants")
@handle_errors
def descendants_cmd(
    ref: str = typer.Argument(..., metavar="DATASET|MODEL", help="UUID, URI or name."),
    catalog: Optional[Path] = CATALOG_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Everything derived from a dataset or model: models, fine-tunes, reproductions, claims."""
    from reprodl.catalog import descendants

    with _open(catalog) as cat:
        _print_nodes(descendants(cat, ref), as_json)


@app.command("reproductions")
@handle_errors
def reproductions_cmd(
    model: str = typer.Argument(..., help="The model: UUID, URI or name."),
    catalog: Optional[Path] = CATALOG_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Reproductions of MODEL with each verdict, and the multi-runs and claims it is part of."""
    from reprodl.catalog import reproductions

    with _open(catalog) as cat:
        result = reproductions(cat, model)
    if as_json:
        print_json(result)
        return
    out.print(f"model {result['model']['name']} {result['model']['uuid']}", markup=False)
    for r in result["reproductions"]:
        verdict = r["verdict"] or "no verdict"
        if r.get("attested") is False:
            verdict += " (unverified: its attestation does not check)"
        elif not r.get("verified"):
            verdict += " (unverified: the record digest it names is not this model's)"
        elif r.get("attested"):
            verdict += f" (verified, attested by key {str(r.get('attested_by'))[:16]})"
        out.print(f"  reproduction {r['name']}  {', '.join(r['uris'])}: {verdict}", markup=False)
    for g in result["replications"]:
        verdict = f": {g['verdict']}" if g["verdict"] else ""
        out.print(f"  {g['kind']} {g['name']} with {len(g['members'])} other run(s){verdict}", markup=False)
    if not (result["reproductions"] or result["replications"]):
        out.print("  no reproduction or replication catalogued")


@app.command("graph")
@handle_errors
def graph_cmd(
    output: Path = typer.Option(..., "-o", "--output", help="graph.dot, graph.svg or graph.html."),
    focus: Optional[str] = typer.Option(None, "--focus", help="Only this entry's lineage and descendants."),
    overwrite: bool = OVERWRITE_OPT,
    catalog: Optional[Path] = CATALOG_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Draw the lineage graph: DOT, SVG (Graphviz if installed, else reprodl's layout) or HTML."""
    from reprodl.catalog import build_graph, write_graph

    with _open(catalog) as cat:
        graph = build_graph(cat, focus=focus)
    path = write_graph(graph, output, overwrite=overwrite)
    if as_json:
        print_json({"path": str(path), "nodes": len(graph.nodes), "edges": len(graph.edges)})
    else:
        out.print(f"wrote {path}: {len(graph.nodes)} nodes, {len(graph.edges)} links", markup=False)


@app.command("export")
@handle_errors
def export_cmd(
    output: Path = typer.Option(..., "-o", "--output", help="The JSON Lines file to write."),
    overwrite: bool = OVERWRITE_OPT,
    catalog: Optional[Path] = CATALOG_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Write every entry as JSON Lines (one entry a line), to share or merge."""
    from reprodl.catalog import export_jsonl

    with _open(catalog) as cat:
        n = export_jsonl(cat, output, overwrite=overwrite)
    if as_json:
        print_json({"path": str(output), "entries": n})
    else:
        out.print(f"exported {n} entries to {output}", markup=False)


@app.command("import")
@handle_errors
def import_cmd(
    path: Path = typer.Argument(..., exists=True, dir_okay=False, help="A JSON Lines export."),
    catalog: Optional[Path] = CATALOG_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Add the entries of an export (idempotent: entries are matched by UUID and manifest)."""
    from reprodl.catalog import import_jsonl

    with _open(catalog) as cat:
        n = import_jsonl(cat, path)
        total = len(cat)
    if as_json:
        print_json({"path": str(path), "entries": n, "catalog_entries": total})
    else:
        out.print(f"imported {n} entries from {path}; the catalog holds {total}")


@app.command("check")
@handle_errors
def check_cmd(
    deep: bool = typer.Option(False, "--deep", help="Re-hash every item too (downloads remote items)."),
    update: bool = typer.Option(False, "--update", help="Rewrite moved URIs and forget vanished ones."),
    catalog: Optional[Path] = CATALOG_OPT,
    quiet: bool = QUIET_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Re-verify every entry where the catalog says it is: ok, changed, moved, vanished or unreachable.

    With -q only the locations that are not ok are listed (and the summary line).
    """
    from reprodl.catalog import check

    with _open(catalog) as cat, progress_bar("Checking", len(cat.locations()), quiet=quiet or as_json) as advance:
        results = check(cat, deep=deep, update=update, progress=lambda done, total: advance(1))
    bad = [r for r in results if r.status != "ok"]
    if as_json:
        print_json({"ok": not bad, "locations": [r.to_dict() for r in results]})
    else:
        for r in results:
            if quiet and r.status == "ok":
                continue
            detail = f": {r.detail}" if r.detail and r.status != "ok" else ""
            out.print(f"{r.status:11} {r.kind} {r.name}  {r.uri}{detail}", markup=False)
        out.print(f"{len(results) - len(bad)}/{len(results)} locations ok")
    if bad:
        raise typer.Exit(int(ExitCode.FAILED))


def register(root: typer.Typer) -> None:
    """Add the ``catalog`` group to ``root``, the ``reprodl`` app (:func:`reprodl.cli.build`)."""
    root.add_typer(app, name="catalog")
