"""What every export shares: the thing exported (a model's record, or a dataset), its
optional packages, and writing the output without leaving half a file behind."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import os
import posixpath
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from reprodl import keys
from reprodl.errors import DatasetFormatError, MissingDependencyError, ReprodlError
from reprodl.exports.formats import names
from reprodl.files import share_as_umask
from reprodl.modeldataset.read import read_record
from reprodl.parsing import load_yaml
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


#: Licences known by their SPDX identifiers; a README's text matches one case-insensitively,
#: with spaces for dashes ("CC BY 4.0" is CC-BY-4.0). The Hub's ids are these, lower-case.
SPDX_LICENCES = (
    "Apache-2.0",
    "BSD-2-Clause",
    "BSD-3-Clause",
    "CC-BY-4.0",
    "CC-BY-NC-4.0",
    "CC-BY-NC-SA-4.0",
    "CC-BY-SA-4.0",
    "CC0-1.0",
    "GPL-3.0",
    "LGPL-3.0",
    "MIT",
    "ODbL-1.0",
)


@dataclasses.dataclass(frozen=True)
class Licence:
    """A licence as a README states it: its text, its SPDX id when known, and whose README said it."""

    text: str
    origin: str

    @property
    def spdx(self) -> str | None:
        key = re.sub(r"[\s_]+", "-", self.text.strip()).lower()
        return next((s for s in SPDX_LICENCES if s.lower() == key), None)

    @property
    def url(self) -> str | None:
        """The SPDX page of a known licence (the form Croissant and RO-Crate recommend)."""
        return f"https://spdx.org/licenses/{self.spdx}.html" if self.spdx else None


def readme_licence(fields: Any) -> str | None:
    """The ``license`` a README's fields state (None when absent or "unspecified")."""
    value = fields.get("license") if isinstance(fields, dict) else None
    text = str(value).strip() if value is not None else ""
    return text if text and text.lower() not in ("unspecified", "unknown", "none") else None


def model_licence(source: Source, record: ProvenanceRecord) -> Licence | None:
    """The model's licence: its README's ``license``, else the one licence its training data's
    READMEs all state (recorded with the data); None when neither says."""
    own = readme_licence(source.dataset.readme())
    if own is not None:
        return Licence(own, "the model's README")
    found: dict[str, str] = {}
    for ref in record.data_by_role("train"):
        try:
            text = readme_licence(load_yaml(record.readme_for(ref), what=f"the README of {ref.name}"))
        except ReprodlError:
            text = None
        if text is None:
            return None
        found.setdefault(text, ref.name)
    if len(found) != 1:
        return None
    ((text, name),) = found.items()
    return Licence(text, f"the training data's README ({name}); the model's README states none")


def code_name(record: ProvenanceRecord) -> str:
    """The training code's name without the training machine's directories: the script's or the
    config file's base name, else the architecture's import path."""
    path = record.code.entry_script or record.code.config_file
    return posixpath.basename(path.replace("\\", "/")) if path else record.architecture.import_path


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
            f"export a model with --format {', '.join(names('model'))}"
        )
