"""Exports of a model's record (or of a dataset) to open standards, from the one record.

One module per format: ``ro_crate`` (RO-Crate, Process Run Crate profile), ``prov_doc``
(W3C PROV-JSON and PROV-N with ML-Schema terms), ``croissant`` (MLCommons Croissant 1.1, for
a dataset), ``model_card`` (a Hugging Face style model card), ``onnx_model`` (the model as
ONNX, checked with onnxruntime) and ``mlflow_run`` (a finished MLflow run), each with the same
``write`` function, named by one line of the table in :mod:`reprodl.exports.formats`. Each
format's module and package are imported only when that format is asked for (extras ``export``
and ``mlflow``); importing this package imports neither (nor the store: ``reprodl --help``
reads the table).

Example:
    >>> from reprodl import export
    >>> export("models/digits-cnn", "model-card", "MODEL_CARD.md")   # doctest: +SKIP
    ExportResult(format='model-card', ...)
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reprodl.exports.formats import FORMATS, ExportFormat, ExportOptions, get_format

if TYPE_CHECKING:
    from reprodl.exports.source import ExportError, ExportResult, Source

__all__ = ["FORMATS", "ExportError", "ExportFormat", "ExportResult", "export"]


def __getattr__(name: str) -> Any:
    """``ExportError`` and ``ExportResult``, imported from :mod:`.source` when first asked for."""
    if name in ("ExportError", "ExportResult"):
        from reprodl.exports import source

        return getattr(source, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    from reprodl.exports.source import ExportResult, open_source, size_of

    fmt = get_format(format)
    started = time.perf_counter()
    source = open_source(uri)
    _check_needs(fmt, source)
    options = ExportOptions(allow=tuple(allow), experiment=experiment)
    if fmt.output == "location":
        written, details = _write_location(fmt, source, output, options)
        local = Path(output) if "://" not in str(output) and not str(output).startswith("file:") else None
        size = size_of(local) if local is not None and local.exists() else 0
    else:
        path, details = _write_path(fmt, source, output, options, overwrite=overwrite)
        written, size = str(path), size_of(path)
    return ExportResult(fmt.name, source.uri, written, time.perf_counter() - started, size, details)


def _check_needs(fmt: ExportFormat, source: Source) -> None:
    """Refuse a dataset where ``fmt`` exports a model, and a model where it describes training data."""
    from reprodl.exports.source import check_dataset_kind

    if fmt.needs == "model":
        source.model_record(fmt.name)
    else:
        check_dataset_kind(source, fmt.name)


def _write_location(
    fmt: ExportFormat, source: Source, output: str | os.PathLike[str], options: ExportOptions
) -> tuple[str, dict[str, Any]]:
    """Write into a location (a URI, not a file reprodl moves into place): (the location, the details)."""
    from reprodl.files import writing_output

    target = fmt.locate(output) if fmt.locate is not None else os.fspath(output)
    with writing_output(f"the {fmt.name} export into", target):
        return target, fmt.write(source, target, options)


def _write_path(
    fmt: ExportFormat, source: Source, output: str | os.PathLike[str], options: ExportOptions, *, overwrite: bool
) -> tuple[Path, dict[str, Any]]:
    """Write a file or a directory atomically (a failed export leaves nothing there)."""
    from reprodl.exports.source import ExportError, check_output, writing_dir, writing_file
    from reprodl.files import writing_output

    directory = fmt.output == "directory"
    path = check_output(output, overwrite=overwrite, directory=directory)
    if directory and fmt.marker and path.exists() and not (path / fmt.marker).is_file():
        raise ExportError(
            f"{path} is a directory but not a {fmt.name} export (it holds no {fmt.marker}): --overwrite replaces "
            "only such an export; choose another output"
        )
    with writing_output(f"the {fmt.name} export", path), (writing_dir if directory else writing_file)(path) as tmp:
        details = fmt.write(source, tmp, options)
    return path, details
