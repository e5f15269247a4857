"""Exports of a model's record (or of a dataset) to open standards, from the one record.

One module per format: ``ro_crate`` (RO-Crate, Process Run Crate profile), ``prov_doc``
(W3C PROV-JSON and PROV-N with ML-Schema terms), ``croissant`` (MLCommons Croissant 1.1, for
a dataset), ``model_card`` (a Hugging Face style model card), ``onnx_model`` (the model as
ONNX, checked with onnxruntime) and ``mlflow_run`` (a finished MLflow run). Each format's
package is imported only when that format is asked for (extras ``export`` and ``mlflow``).

Example:
    >>> from reprodl import export
    >>> export("models/digits-cnn", "model-card", "MODEL_CARD.md")   # doctest: +SKIP
    ExportResult(format='model-card', ...)
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from reprodl.exports.source import (
    ExportError,
    ExportResult,
    check_output,
    open_source,
    size_of,
    write_text,
    writing_dir,
    writing_file,
)
from reprodl.files import writing_output

#: The formats, with what each writes.
FORMATS: dict[str, str] = {
    "ro-crate": "a directory: ro-crate-metadata.json and the record (Process Run Crate)",
    "prov": "a PROV-JSON file with ML-Schema terms",
    "prov-n": "a PROV-N file with ML-Schema terms",
    "croissant": "a Croissant 1.1 JSON-LD file describing a dataset",
    "model-card": "a Markdown model card with YAML front matter (Hugging Face style)",
    "onnx": "the model as an ONNX file, checked with onnxruntime against torch",
    "mlflow": "a finished run in an MLflow tracking store, the model its logged model "
    "(the output is the tracking URI or directory)",
}

__all__ = ["FORMATS", "ExportError", "ExportResult", "export"]


def export(
    uri: str,
    format: str,
    output: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    allow: Iterable[str] = (),
    experiment: str = "reprodl",
) -> ExportResult:
    """Export the model (or dataset) at ``uri`` in ``format`` to ``output``.

    Args:
        uri: a model dataset's URI (a dataset's URI for ``croissant``).
        format: one of :data:`FORMATS`.
        output: the file or directory to write (``ro-crate``: a directory; ``mlflow``: the
            tracking URI or a directory for MLflow's file store).
        overwrite: replace an existing output (otherwise it is refused).
        allow: modules trusted to build the architecture (``onnx``, and ``mlflow``'s pytorch flavour;
            reprodl's zoo always is).
        experiment: the MLflow experiment's name (``mlflow`` only).

    Returns:
        What was written, how long it took and its size; ``details`` holds what the format
        adds (``onnx``: ``max_abs_diff``; ``mlflow``: ``run_id``, ``model_uri``).

    Raises:
        ExportError: an unknown format, an output in the way, or a model where a dataset is needed.
        MissingDependencyError: the format's package is not installed (``pip install 'reprodl[export]'``).
    """
    if format not in FORMATS:
        raise ExportError(f"unknown export format {format!r}: use one of {', '.join(FORMATS)}")
    started = time.perf_counter()
    source = open_source(uri)
    if format == "mlflow":
        from reprodl.exports.mlflow_run import log_to_mlflow, tracking_uri_of

        tracking = tracking_uri_of(output)
        with writing_output("the MLflow run into", tracking):
            details = log_to_mlflow(source, tracking, experiment=experiment, allow=allow)
        target = Path(output) if "://" not in str(output) and not str(output).startswith("file:") else None
        size = size_of(target) if target is not None and target.exists() else 0
        return ExportResult(format, source.uri, tracking, time.perf_counter() - started, size, details)
    path = check_output(output, overwrite=overwrite, directory=format == "ro-crate")
    if format == "ro-crate" and path.exists() and not (path / "ro-crate-metadata.json").is_file():
        raise ExportError(f"{path} is a directory but not an RO-Crate: overwrite replaces only a crate; choose another")
    with writing_output(f"the {format} export", path):
        details = _write(source, format, path, allow=allow)
    return ExportResult(format, source.uri, str(path), time.perf_counter() - started, size_of(path), details)


def _write(source: Any, format: str, path: Path, *, allow: Iterable[str]) -> dict[str, Any]:
    """Write one format to ``path`` (atomically: a failed export leaves nothing there)."""
    if format == "ro-crate":
        from reprodl.exports.ro_crate import write_ro_crate

        with writing_dir(path) as tmp:
            return write_ro_crate(source, tmp)
    if format in ("prov", "prov-n"):
        from reprodl.exports.prov_doc import write_prov

        with writing_file(path) as tmp:
            return write_prov(source, tmp, notation="provn" if format == "prov-n" else "json")
    if format == "croissant":
        from reprodl.exports.croissant import croissant

        doc = croissant(source)
        write_text(path, json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
        return {"record_sets": [r["name"] for r in doc["recordSet"]], "files": len(doc["distribution"])}
    if format == "model-card":
        from reprodl.exports.model_card import model_card

        write_text(path, model_card(source))
        return {}
    from reprodl.exports.onnx_model import write_onnx

    with writing_file(path) as tmp:
        return write_onnx(source, tmp, allow=allow)
