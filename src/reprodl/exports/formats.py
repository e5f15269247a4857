"""The export formats: one table, each entry naming its module's ``write`` function.

Every format module has the same shape (as safetensors has one module per framework): a
``write(source, target, options) -> details`` function that writes the format for a
:class:`~reprodl.exports.source.Source` into ``target`` (a temporary file or directory that
:func:`reprodl.exports.export` moves into place only when ``write`` returns; for an output
that is a location, such as MLflow's tracking URI, that location) and returns what the format
adds to the result. Adding a format is its module plus one line of :data:`FORMATS`; the CLI's
``--format`` lists and dispatches through this table.

This module imports nothing heavy (``reprodl --help`` reads it); a format's module, and the
package it needs, are imported only when that format is written.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import Any, Literal

#: What a format exports: a reprodl model (it has a provenance record) or training data.
Needs = Literal["model", "dataset"]
#: What a format writes: a file, a directory, or into a location (a URI) that is not a local path.
Output = Literal["file", "directory", "location"]


@dataclasses.dataclass(frozen=True)
class ExportOptions:
    """The options a format may read: ``allow`` (modules trusted to build the architecture) and
    ``experiment`` (an experiment's name, for a tracking store)."""

    allow: tuple[str, ...] = ()
    experiment: str = "reprodl"


#: A format's writer: (the source, the target, the options) -> the details it adds to the result.
Writer = Callable[[Any, Any, ExportOptions], dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class ExportFormat:
    """One export format.

    Attributes:
        name: what ``--format`` takes.
        suffix: the usual file suffix of its output ("" for a directory or a location).
        needs: "model" (a model dataset, its record) or "dataset" (training data, not a model).
        output: "file", "directory" or "location" (written into a URI; ``locate`` turns the
            output given into it).
        description: what it writes, for help texts and docs.
        write: the writer (see the module's docstring); :class:`Lazy` keeps its import for later.
        extra: the pip extra that installs the package it needs ("" when none).
        locate: for a "location" output, the URI written into, from the output given.
        marker: for a "directory" output, the file that marks a directory as this format's
            export (``--overwrite`` replaces only such a directory).
    """

    name: str
    suffix: str
    needs: Needs
    output: Output
    description: str
    write: Writer
    extra: str = ""
    locate: Callable[[Any], str] | None = None
    marker: str = ""


@dataclasses.dataclass(frozen=True)
class Lazy:
    """``module.function``, imported when first called (a format's table line names its writer so)."""

    module: str
    function: str = "write"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(self.module), self.function)(*args, **kwargs)


_M = "reprodl.exports."

#: The formats, by name, in the order help texts list them.
FORMATS: dict[str, ExportFormat] = {
    f.name: f
    for f in (
        ExportFormat(
            "ro-crate",
            "",
            "model",
            "directory",
            "a directory: ro-crate-metadata.json and the record (Process Run Crate)",
            Lazy(_M + "ro_crate"),
            extra="export",
            marker="ro-crate-metadata.json",
        ),
        ExportFormat(
            "prov",
            ".json",
            "model",
            "file",
            "a PROV-JSON file with ML-Schema terms",
            Lazy(_M + "prov_doc"),
            extra="export",
        ),
        ExportFormat(
            "prov-n",
            ".provn",
            "model",
            "file",
            "a PROV-N file with ML-Schema terms",
            Lazy(_M + "prov_doc", "write_n"),
            extra="export",
        ),
        ExportFormat(
            "croissant",
            ".json",
            "dataset",
            "file",
            "a Croissant 1.1 JSON-LD file describing a dataset",
            Lazy(_M + "croissant"),
        ),
        ExportFormat(
            "model-card",
            ".md",
            "model",
            "file",
            "a Markdown model card with YAML front matter (Hugging Face style)",
            Lazy(_M + "model_card"),
        ),
        ExportFormat(
            "onnx",
            ".onnx",
            "model",
            "file",
            "the model as an ONNX file, checked with onnxruntime against torch",
            Lazy(_M + "onnx_model"),
            extra="export",
        ),
        ExportFormat(
            "mlflow",
            "",
            "model",
            "location",
            "a finished run in an MLflow tracking store, the model its logged model "
            "(the output is the tracking URI or directory)",
            Lazy(_M + "mlflow_run"),
            extra="mlflow",
            locate=Lazy(_M + "mlflow_run", "tracking_uri_of"),
        ),
    )
}


def get_format(name: str) -> ExportFormat:
    """The format called ``name``; an unknown one is an :class:`~reprodl.exports.source.ExportError`
    naming the formats there are."""
    if name not in FORMATS:
        from reprodl.exports.source import ExportError

        raise ExportError(f"unknown export format {name!r}: use one of {', '.join(FORMATS)}")
    return FORMATS[name]


def names(needs: Needs | None = None) -> list[str]:
    """The formats' names (those exporting a ``needs``, when given), in the table's order."""
    return [f.name for f in FORMATS.values() if needs is None or f.needs == needs]
