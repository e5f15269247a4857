"""The report of a dataset (README, samples per class, sample images), of a claim, and of a
multi-run summary."""

from __future__ import annotations

import datetime
import json
from typing import Any

import numpy as np

from reprodl import keys
from reprodl.errors import DatasetFormatError, ReprodlError
from reprodl.files import read_regular
from reprodl.reports import plots
from reprodl.reports.context import Context, mapping, mappings
from reprodl.reports.html import Raw, esc, kv_table, note, png_img, pre, section, table
from reprodl.store import StoredDataSet

USETYPES = ("train", "valid", "test")
SAMPLES_PER_CLASS = 6
MAX_CLASSES_SHOWN = 20
MAX_ITEMS_LISTED = 50


def _when(timestamp: Any) -> str | None:
    """A dtool timestamp (seconds since the epoch) as UTC ISO 8601."""

    try:
        return datetime.datetime.fromtimestamp(float(timestamp), tz=datetime.timezone.utc).isoformat(timespec="seconds")
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def _about(ds: StoredDataSet, extra: list[tuple[str, Any]]) -> str:
    admin = ds.admin_metadata
    rows: list[tuple[str, Any]] = [
        ("URI", ds.uri),
        ("UUID", ds.uuid),
        ("name", ds.name),
        ("items", len(ds)),
        ("created by", admin.get("creator_username")),
        ("frozen at", _when(admin.get("frozen_at"))),
        *extra,
    ]
    return section("about", "Dataset", kv_table(rows))


def _readme(ds: StoredDataSet) -> str:
    text = ds.get_readme_content()
    return section("readme", "README", pre(text) if text.strip() else note("The README is empty."))


# --- a training dataset -----------------------------------------------------------------
def _open(ds: StoredDataSet, usetype: str | None) -> Any:
    from reprodl.data.kinds import open_training_data

    return open_training_data(ds.uri, usetype)


def _bar(count: int, most: int) -> Raw:
    width = int(160 * count / most) if most else 0
    return Raw(f'<span style="display:inline-block;height:10px;width:{width}px;background:#1f3a5f"></span> {count}')


def counts_section(data: Any, ds: StoredDataSet) -> str:
    """Samples per class, in the whole dataset and in each usetype it has."""
    columns = {"all": data.label_counts()}
    for usetype in USETYPES:
        try:
            columns[usetype] = _open(ds, usetype).label_counts()
        except ReprodlError:
            continue  # the dataset has no samples of this usetype
    most = max(columns["all"].values(), default=0)
    rows = [
        [name, _bar(columns["all"][name], most), *(columns[u].get(name, 0) for u in columns if u != "all")]
        for name in data.categories
    ]
    rows.append(["total", sum(columns["all"].values()), *(sum(columns[u].values()) for u in columns if u != "all")])
    header = ["class", "samples", *(u for u in columns if u != "all")]
    return section("classes", "Samples per class", table(header, rows, numeric=range(2, len(header))))


def _sample_array(data: Any, index: int) -> np.ndarray:
    if hasattr(data, "load_image"):
        return np.asarray(data.load_image(index))
    return np.asarray(data.data[data.rows[index]]).reshape(data.input_shape or (-1,))


def samples_section(data: Any, ctx: Context) -> str:
    """A grid of the first samples of each class (at most SAMPLES_PER_CLASS of MAX_CLASSES_SHOWN classes)."""
    ctx.say("drawing sample images")
    figures = []
    labels = np.asarray(data.labels)
    for label, name in list(enumerate(data.categories))[:MAX_CLASSES_SHOWN]:
        for index in np.flatnonzero(labels == label)[:SAMPLES_PER_CLASS].tolist():
            try:
                img = png_img(plots.thumbnail_png(_sample_array(data, index)), f"{name} sample", cls="sample")
            except (ValueError, OSError, ReprodlError) as exc:
                return section("samples", "Sample images", ctx.missing("sample images", str(exc)))
            figures.append(f"<figure>{img}<figcaption>{esc(name)}</figcaption></figure>")
    note_text = f"The first {SAMPLES_PER_CLASS} samples of each class" + (
        f" (the first {MAX_CLASSES_SHOWN} classes)" if len(data.categories) > MAX_CLASSES_SHOWN else ""
    )
    return section("samples", "Sample images", note(note_text) + f'<div class="samples">{"".join(figures)}</div>')


def _items(ds: StoredDataSet) -> str:
    rows = []
    for idn in sorted(ds.identifiers, key=ds.relpath)[:MAX_ITEMS_LISTED]:
        props = ds.item_properties(idn)
        rows.append((ds.relpath(idn), props.get("size_in_bytes"), props.get("hash")))
    more = note(f"... and {len(ds) - MAX_ITEMS_LISTED} more") if len(ds) > MAX_ITEMS_LISTED else ""
    annotations = [(name, ds.get_annotation(name)) for name in ds.annotation_names()]
    return section(
        "items",
        "Items and annotations",
        table(["item", "bytes", "hash"], rows, numeric=[1]) + more + "<h3>Annotations</h3>" + kv_table(annotations),
    )


def dataset_page(ds: StoredDataSet, ctx: Context) -> tuple[str, str, list[str], str | None]:
    """(title, subtitle, sections, banner) of a training dataset (or any dtool dataset)."""
    ctx.say("reading the dataset")
    kind = ds.get_annotation(keys.INPUT_TYPE)
    sections = [_about(ds, [("input type", kind)]), _readme(ds)]
    try:
        data = _open(ds, None)
    except ReprodlError as exc:
        sections.append(section("classes", "Samples per class", ctx.missing("classes and samples", str(exc))))
    else:
        sections += [counts_section(data, ds), samples_section(data, ctx)]
    sections.append(_items(ds))
    return f"Dataset report: {ds.name}", f"{ds.uri} · UUID {ds.uuid}", sections, None


# --- a claim and a multi-run summary -------------------------------------------------------
# claim.json and summary.json are read from a URI: every value is checked for its type here.
def _fmt(value: Any, spec: str) -> str:
    """A recorded number formatted by ``spec``; '?' for anything that is not a number."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    return format(value, spec) if ok else "?"


def _document(ds: StoredDataSet, data: Any, item: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise DatasetFormatError(f"{ds.uri}: {item} holds a JSON {type(data).__name__}, not an object")
    return data


def _runs_table(runs: dict[str, Any]) -> str:
    rows = [
        (side.upper(), r.get("seed"), r.get("value"), r.get("uri"), r.get("record_digest"))
        for side, side_runs in runs.items()
        for r in mappings(side_runs)
    ]
    return table(["recipe", "seed", "value", "model", "record digest"], rows, numeric=[1, 2])


def _claim_body(claim: dict[str, Any]) -> str:
    recipes = mapping(claim.get("recipes"))
    verdict = (
        f'<p><span class="big">{esc(claim.get("verdict"))}</span> — P(A&gt;B) on {esc(claim.get("metric"))} '
        f"{_fmt(claim.get('probability_a_better'), '.3f')}, {_fmt(claim.get('confidence'), '.0%')} interval "
        f"[{_fmt(claim.get('ci_low'), '.3f')}, {_fmt(claim.get('ci_high'), '.3f')}] over {esc(claim.get('n'))} "
        "paired runs</p>"
    )
    facts = [
        ("A", recipes.get("a")),
        ("B", recipes.get("b")),
        ("varied", claim.get("vary")),
        ("rule", claim.get("rule")),
    ]
    baselines = {name: mapping(row) for name, row in mapping(claim.get("baselines")).items()}
    body = verdict + kv_table(facts)
    if baselines:
        columns = sorted({k for row in baselines.values() for k in row})
        rows = [(name, *(row.get(c) for c in columns)) for name, row in baselines.items()]
        body += "<h3>Baselines</h3>" + table(["baseline", *columns], rows, numeric=range(1, 1 + len(columns)))
    return body


def claim_page(ds: StoredDataSet, ctx: Context) -> tuple[str, str, list[str], str | None]:
    """(title, subtitle, sections, banner) of a claim dataset (``reprodl compare``)."""
    from reprodl.reproduction.claims import load_claim

    ctx.say("reading the claim")
    claim = _document(ds, load_claim(ds.uri), keys.CLAIM_FILE)
    sections = [
        _about(ds, []),
        section("claim", "Claim", _claim_body(claim)),
        _plot_item(ds, keys.CLAIM_PLOT_FILE, "distributions"),
        section("runs", "Runs", _runs_table(mapping(claim.get("runs")))),
        _readme(ds),
    ]
    return f"Claim report: {ds.name}", f"{ds.uri} · UUID {ds.uuid}", [s for s in sections if s], None


def _plot_item(ds: StoredDataSet, relpath: str, what: str) -> str:
    try:
        path = ds.item_path(ds.identifier_of(relpath))
    except KeyError:
        return ""
    data = read_regular(path, keys.MAX_METADATA_BYTES, what=f"{ds.uri}: {relpath}", error=DatasetFormatError)
    return section("plot", what.capitalize(), png_img(data, what))


def summary_page(ds: StoredDataSet, ctx: Context) -> tuple[str, str, list[str], str | None]:
    """(title, subtitle, sections, banner) of a multi-run summary (``reprodl train --seeds N``)."""
    from reprodl.training.multirun import load_summary

    ctx.say("reading the multi-run summary")
    summary = _document(ds, load_summary(ds.uri), keys.SUMMARY_FILE)
    final = [
        (m, s.get("mean"), s.get("std"), s.get("min"), s.get("max"), s.get("n"))
        for m, s in ((m, mapping(s)) for m, s in mapping(summary.get("final")).items())
    ]
    models = [
        (m.get("seed"), m.get("uri"), m.get("uuid"), json.dumps(m.get("final"), default=str))
        for m in mappings(summary.get("models"))
    ]
    body = (
        note(f"{summary.get('n_runs')} runs varying the {summary.get('varied')}.")
        + ctx.plot("seed envelope", lambda: plots.envelope_png(summary))
        + table(["final metric", "mean", "std", "min", "max", "runs"], final, numeric=range(1, 6))
    )
    sections = [
        _about(ds, []),
        section("envelope", "Seed envelope", body),
        section("runs", "Runs", table(["seed", "model", "UUID", "final metrics"], models)),
        _readme(ds),
    ]
    return f"Multi-run report: {ds.name}", f"{ds.uri} · UUID {ds.uuid}", sections, None
