"""One self-contained HTML page about a model, a dataset, a claim or a multi-run summary.

Everything on the page comes from the dataset at the URI (and, for a model, from evaluating
it on its recorded held-out data): a summary card, the curves, the confusion matrix, the seed
envelope, the lineage as a drawn graph, the step trace and any divergence, the environment.
The page loads nothing at view time (its Content-Security-Policy forbids it): plots are
embedded PNGs, the lineage graph is inline SVG, and every recorded string is escaped.

Example:
    >>> result = report("models/digits-cnn", "report.html")   # doctest: +SKIP
    >>> result.kind, result.bytes                              # doctest: +SKIP
    ('model', 183112)
"""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from reprodl import keys
from reprodl.errors import ParametersError
from reprodl.files import share_as_umask, writing_output
from reprodl.reports.context import Context
from reprodl.reports.html import page
from reprodl.store import StoredDataSet, open_dataset

__all__ = ["ReportResult", "render", "report"]


@dataclasses.dataclass
class ReportResult:
    """What :func:`report` wrote (``to_dict`` is what ``reprodl report --json`` prints)."""

    uri: str
    output: str
    kind: str
    bytes: int
    seconds: float
    sections: list[str]
    notes: list[str]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def kind_of(ds: StoredDataSet) -> str:
    """model, claim, multirun-summary or dataset: what the report shows."""
    kind = ds.get_annotation(keys.MODEL_KIND) if keys.MODEL_KIND in ds.annotation_names() else None
    if kind in (keys.KIND_MODEL, keys.KIND_CLAIM, keys.KIND_SUMMARY):
        return str(kind)
    relpaths = {ds.relpath(i) for i in ds.identifiers} if len(ds) < 10_000 else set()
    return keys.KIND_MODEL if keys.PROVENANCE_FILE in relpaths else "dataset"


def render(
    uri: str,
    *,
    allow: Iterable[str] = (),
    evaluate: bool = True,
    on_progress: Callable[[str], None] | None = None,
) -> tuple[str, str, list[str]]:
    """The report's HTML for the dataset at ``uri``, its kind, and the notes on what is not shown."""
    from reprodl.reports.dataset import claim_page, dataset_page, summary_page
    from reprodl.reports.model import model_page

    ctx = Context(allow=tuple(allow), evaluate=evaluate, say=on_progress or (lambda message: None))
    ctx.say(f"opening {uri}")
    ds = open_dataset(uri)
    kind = kind_of(ds)
    build = {keys.KIND_MODEL: model_page, keys.KIND_CLAIM: claim_page, keys.KIND_SUMMARY: summary_page}
    title, subtitle, sections, banner = build.get(kind, dataset_page)(ds, ctx)
    return page(title, subtitle, sections, banner=banner), kind, ctx.notes


def _write(text: str, output: Path) -> None:
    """Write ``text`` to ``output`` whole or not at all (a temporary file beside it, renamed)."""
    if output.is_dir():
        raise ParametersError(
            f"the report output {output} is a directory: give a file name such as {output / 'report.html'}"
        )
    if not output.parent.is_dir():
        raise ParametersError(f"the report output's directory {output.parent} does not exist: create it first")
    with writing_output("the report", output):
        fd, tmp = tempfile.mkstemp(prefix=".reprodl-report-", suffix=".html", dir=output.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            share_as_umask(tmp)
            os.replace(tmp, output)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def report(
    uri: str,
    output: str | os.PathLike[str],
    *,
    allow: Iterable[str] = (),
    evaluate: bool = True,
    overwrite: bool = False,
    on_progress: Callable[[str], None] | None = None,
) -> ReportResult:
    """Write the one-page HTML report of the model, dataset, claim or summary at ``uri``.

    Args:
        uri: the dataset's URI or path.
        output: the HTML file to write (its directory must exist).
        allow: modules (or ``module:Class``) trusted to be imported to evaluate the model.
        evaluate: evaluate a model on its recorded held-out data for the confusion matrix.
        overwrite: replace an existing ``output`` (else it is refused).
        on_progress: called with a line as each step starts.

    Returns:
        The :class:`ReportResult`: the kind of dataset, the page's size, the time it took,
        its sections, and notes on what could not be shown (and why).

    Raises:
        ParametersError: ``output`` is a directory, exists (without ``overwrite``), or its directory
            does not exist.
        ReprodlError: the URI names no readable dataset (the subclass says which problem).
    """

    t0 = time.perf_counter()
    target = Path(output)
    if target.is_dir() or not target.parent.is_dir():
        _write("", target)  # raises, naming the problem, before any work
    if target.exists() and not overwrite:
        raise ParametersError(
            f"the report output {target} already exists: choose another file, or replace it with --overwrite"
        )
    text, kind, notes = render(uri, allow=allow, evaluate=evaluate, on_progress=on_progress)
    _write(text, target)
    return ReportResult(
        uri=uri,
        output=str(target),
        kind=kind,
        bytes=len(text.encode("utf-8")),
        seconds=round(time.perf_counter() - t0, 3),
        sections=re.findall(r'<section id="([^"]+)"', text),
        notes=notes,
    )
