"""What every export shares: the thing exported (a model's record, or a dataset), its
optional packages, and writing the output without leaving half a file behind."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from reprodl import keys
from reprodl.errors import DatasetFormatError, MissingDependencyError, ReprodlError
from reprodl.files import share_as_umask
from reprodl.modeldataset.read import read_record
from reprodl.provenance import ProvenanceRecord
from reprodl.store import StoredDataSet, open_dataset


class ExportError(ReprodlError, ValueError):
    """An export that cannot be made (wrong kind of dataset, output in the way...)."""


@dataclasses.dataclass
class ExportResult:
    """What an export wrote.

    Attributes:
        format: the format written (ro-crate, prov, prov-n, croissant, model-card, onnx, mlflow).
        uri: the exported dataset's URI.
        output: the file or directory written (for mlflow: the tracking URI).
        seconds: how long the export took.
        bytes: size of what was written (all files of a directory).
        details: what the format adds (for onnx: max_abs_diff; for mlflow: run_id...).
    """

    format: str
    uri: str
    output: str
    seconds: float = 0.0
    bytes: int = 0
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Source:
    """A dataset opened for export, with its provenance record when it is a model."""

    dataset: StoredDataSet
    record: ProvenanceRecord | None

    @property
    def uri(self) -> str:
        return self.dataset.uri

    def model_record(self, fmt: str) -> ProvenanceRecord:
        """The record, or a clear refusal when the dataset is not a model."""
        if self.record is None:
            raise ExportError(
                f"{self.uri} is a dataset, not a reprodl model (it has no {keys.PROVENANCE_FILE}): "
                f"the {fmt} export describes a trained model; a data dataset exports with --format croissant "
                "(a claim or a multi-run summary has no export format yet: export its member models)"
            )
        return self.record


def model_identity(source: Source, record: ProvenanceRecord) -> dict[str, str]:
    """The model's URI, UUID and digests and its architecture, as ``reprodl.*`` string properties
    (MLflow tags, ONNX metadata): one set of names wherever a format carries them."""
    return {
        "reprodl.model_uri": source.uri,
        "reprodl.model_uuid": source.dataset.uuid,
        "reprodl.record_digest": record.digest or "",
        "reprodl.weights_sha256": record.results.weights_sha256 or "",
        "reprodl.architecture": record.architecture.import_path,
    }


def open_source(uri: str) -> Source:
    """The dataset at ``uri``; its record (digest checked) when it holds ``provenance.json``."""
    ds = open_dataset(uri)
    relpaths = {ds.relpath(i) for i in ds.identifiers}
    record = read_record(ds) if keys.PROVENANCE_FILE in relpaths else None
    return Source(dataset=ds, record=record)


def require(module: str, *, extra: str, feature: str) -> Any:
    """Import an optional package, or say which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(
            f"{feature} needs the {module.split('.')[0]} package: install it with `pip install 'reprodl[{extra}]'`"
        ) from None


def check_output(output: str | os.PathLike[str], *, overwrite: bool, directory: bool = False) -> Path:
    """The output path (a file, or a directory when ``directory``), refused when something is
    there and ``overwrite`` is False, or when it is the other kind of thing."""
    path = Path(output)
    kind = "directory" if directory else "file"
    if path.exists() and not overwrite:
        raise ExportError(f"{path} already exists: choose another output, or replace it with --overwrite")
    if path.exists() and (path.is_dir() != directory or path.is_symlink()):
        raise ExportError(f"{path} exists and is not a {kind}: this export writes a {kind}; choose another output")
    if not path.parent.is_dir():
        raise ExportError(f"the directory of {path} does not exist: create {path.parent} first")
    return path


@contextlib.contextmanager
def writing_file(path: Path) -> Iterator[Path]:
    """A temporary file beside ``path``, moved onto it only when the block succeeds."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        share_as_umask(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def writing_dir(path: Path) -> Iterator[Path]:
    """A temporary directory beside ``path``, moved onto it only when the block succeeds."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        share_as_umask(tmp)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with writing_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def size_of(path: Path) -> int:
    """Bytes of a file, or of every file under a directory."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def check_dataset_kind(source: Source, fmt: str) -> None:
    """Refuse a model where a format describes training data."""
    if source.record is not None:
        raise DatasetFormatError(
            f"{source.uri} is a reprodl model, not training data: {fmt} describes a dataset; "
            "export a model with --format ro-crate, prov, model-card, onnx or mlflow"
        )
