"""Reading a model dataset: its record and its weights (safetensors only, checked).

Example:
    >>> record = load_record("/models/digits-model")       # doctest: +SKIP
    >>> state = load_weights(open_dataset("/models/digits-model"), record)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import io
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from reprodl import keys
from reprodl.errors import IntegrityError, ModelLoadError
from reprodl.files import read_regular
from reprodl.modeldataset.weights import (
    arrays_sha256,
    numpy_readable,
    safetensors_problem,
    sniff_weights,
    state_dict_sha256,
)
from reprodl.provenance import ProvenanceRecord, parse_record
from reprodl.store import StoredDataSet, open_dataset

if TYPE_CHECKING:
    import numpy as np
    import torch

#: File suffixes of weights saved with pickle (``torch.save``), which are never loaded.
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt")


def read_record(ds: StoredDataSet, *, check: bool = True) -> ProvenanceRecord:
    """The record item of a model dataset (digest checked unless ``check=False``)."""
    try:
        idn = ds.identifier_of(keys.PROVENANCE_FILE)
    except KeyError:
        raise ModelLoadError(f"{ds.uri} is not a reprodl model: it has no {keys.PROVENANCE_FILE} item") from None
    what = f"{ds.uri}: its record {keys.PROVENANCE_FILE}"
    data = read_regular(ds.item_path(idn), keys.MAX_RECORD_BYTES, what=what, error=ModelLoadError)
    record = parse_record(data, source=ds.uri)
    if check:
        record.check_digest()
    return record


def load_record(uri: str, *, check: bool = True) -> ProvenanceRecord:
    """The record of the model dataset at ``uri`` (digest checked unless ``check=False``)."""
    return read_record(open_dataset(uri), check=check)


def load_weights(
    ds: StoredDataSet, record: ProvenanceRecord | None = None, *, model: str | None = None
) -> dict[str, torch.Tensor]:
    """The weights of a model dataset, from safetensors only, checked against the record.

    ``model`` names one of the record's models (``record.models``); None: the default (first).
    """
    from safetensors.torch import load_file

    path, relpath, expected = _weights_item(ds, record, model)
    state = _load(load_file, path, ds, relpath)
    _check_weights(ds, expected, state_dict_sha256(state))
    return state


def load_weight_arrays(
    ds: StoredDataSet, record: ProvenanceRecord | None = None, *, model: str | None = None
) -> dict[str, np.ndarray] | None:
    """:func:`load_weights` as NumPy arrays, without importing torch (a comparison needs no more); None
    when a tensor's dtype has no NumPy equal (bfloat16, float8: :data:`~.weights.NUMPY_DTYPES`), which
    :func:`load_weights` reads. Checked against the record's digest as :func:`load_weights` checks."""
    from safetensors.numpy import load_file

    path, relpath, expected = _weights_item(ds, record, model)
    if not numpy_readable(path):
        return None
    state = _load(load_file, path, ds, relpath)
    _check_weights(ds, expected, arrays_sha256(state))
    return state


def _weights_item(ds: StoredDataSet, record: ProvenanceRecord | None, model: str | None) -> tuple[str, str, str | None]:
    """The local path of the weights item of ``model`` (None: the default), its relpath and recorded digest;
    refused when it is missing, a pickle or not safetensors (its header checked before any tensor is read)."""
    relpath, expected = keys.WEIGHTS_FILE, record.results.weights_sha256 if record is not None else None
    if record is not None and (model is not None or record.models):
        component = record.model_component(model)
        if component.weights_file is None:
            raise ModelLoadError(
                f"{ds.uri}: the model {component.name!r} was watched but its weights were not saved "
                "(run.save did not name it): load one of the saved models"
            )
        relpath, expected = component.weights_file, component.weights_sha256
    relpaths = {ds.relpath(i) for i in ds.identifiers}
    if relpath not in relpaths:
        pickles = sorted(r for r in relpaths if r.endswith(PICKLE_SUFFIXES))
        if pickles:
            raise ModelLoadError(
                f"{ds.uri} holds weights as a pickle ({', '.join(pickles)}), which reprodl refuses to "
                "load from a URI (unpickling runs arbitrary code). Convert the weights to safetensors "
                "in a trusted environment"
            )
        raise ModelLoadError(f"{ds.uri} has no {relpath} item: it is not a reprodl model, or not a complete copy")
    path = ds.item_path(ds.identifier_of(relpath))
    problem = safetensors_problem(path)  # the header first: its length may start with 0x80 or PK
    if problem is not None:
        if sniff_weights(path) in ("pickle", "zip"):
            raise ModelLoadError(
                f"{ds.uri}: {relpath} is a pickle/zip (torch.save) file, not safetensors; "
                "reprodl refuses to unpickle weights from a URI. Convert the weights to safetensors "
                "in a trusted environment"
            )
        raise ModelLoadError(f"{ds.uri}: {relpath} is not a valid safetensors file ({problem})")
    return path, relpath, expected


def _load(load_file: Callable[[str], dict[str, Any]], path: str, ds: StoredDataSet, relpath: str) -> dict[str, Any]:
    from safetensors import SafetensorError

    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelLoadError(f"{ds.uri}: {relpath} is not a valid safetensors file ({exc})") from None


def _check_weights(ds: StoredDataSet, expected: str | None, actual: str) -> None:
    if expected and actual != expected:
        raise IntegrityError(
            f"{ds.uri}: the weights do not match the provenance record (record {expected}, weights {actual})",
            problems=["weights digest mismatch"],
        )


def load_trace(ds: StoredDataSet, record: ProvenanceRecord) -> np.ndarray | None:
    """The step trace of a model dataset (``trace.npy``), checked against the record; None when it has none.

    Rows of a NumPy structured array (see :mod:`reprodl.training.trace`), read with
    ``allow_pickle=False``.
    """

    info = record.results.trace
    if info is None:
        return None
    try:
        path = ds.item_path(ds.identifier_of(info.item))
    except KeyError:
        raise ModelLoadError(
            f"{ds.uri} has no {info.item} item, but its record names a step trace: use a complete copy of the model"
        ) from None
    # the most a trace holds: 2 x max_rows rows (reprodl.training.trace), twice over
    limit = max(1 << 28, 4000 * (48 + 8 * len(info.tensors)))
    data = read_regular(path, limit, what=f"{ds.uri}: the step trace {info.item}", error=ModelLoadError)
    actual = "sha256:" + hashlib.sha256(data).hexdigest()
    if info.sha256 and actual != info.sha256:
        raise IntegrityError(
            f"{ds.uri}: the step trace {info.item} does not match the provenance record "
            f"(record {info.sha256}, item {actual})",
            problems=["trace digest mismatch"],
        )
    what = f"{ds.uri}: the step trace {info.item}"
    rows = _npy_rows(data, what)
    _check_trace_layout(rows, info.kind, len(info.tensors), what)
    return rows


# The row of a step trace, as reprodl.training.trace.row_dtype writes it (that layer is above this one).
_TRACE_HEAD = [("step", "<i8"), ("epoch", "<i4"), ("batch", "<i4"), ("loss", "<f8"), ("indices", "<u8")]
_TRACE_TAIL = {
    "words": [("inputs", "<u8"), ("optimizer", "<u8"), ("rng", "<u8"), ("digest", "<u8")],
    "exact": [("inputs", "<u8"), ("optimizer", "<u8"), ("digest", "<u8")],
    "sampled": [("contents", "<f8"), ("fingerprint", "<f8")],
}


def _check_trace_layout(rows: np.ndarray, kind: str, n_tensors: int, what: str) -> None:
    """Refuse a trace that is not one row per step of the record's kind, one digest per recorded tensor:
    its columns are read by name, its digests matched to the record's tensor names."""
    import numpy as np

    *tail, (last, per_tensor) = _TRACE_TAIL[kind]
    expected = np.dtype([*_TRACE_HEAD, *tail, (last, per_tensor, (n_tensors,))])
    if rows.ndim != 1 or rows.dtype != expected:
        raise ModelLoadError(
            f"{what} is not a step trace of the {kind} kind over the record's {n_tensors} tensors (shape "
            f"{rows.shape}, dtype {rows.dtype}): the model dataset is damaged or was edited: use an intact copy"
        )


def _npy_rows(data: bytes, what: str) -> np.ndarray:
    """The array in the ``.npy`` bytes ``data``, its header checked against the bytes there
    before anything is allocated (a header may claim 2^40 rows in a file of a few kilobytes)."""

    import numpy as np

    fix = "the model dataset is damaged or was edited: use an intact copy"
    buf = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(buf)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in read_header:
            raise ValueError(f"format version {version[0]}.{version[1]} is not one reprodl writes")
        shape, fortran, dtype = read_header[version](buf)
    except (ValueError, SyntaxError, TypeError, OverflowError) as exc:
        raise ModelLoadError(f"{what} is not a NumPy array file ({exc}): {fix}") from None
    if dtype.hasobject:
        raise ModelLoadError(f"{what} holds Python objects (dtype {dtype}), which are never unpickled: {fix}")
    needed = math.prod(shape) * dtype.itemsize
    if needed != len(data) - buf.tell():
        raise ModelLoadError(
            f"{what}: its header claims shape {shape} ({needed:,} bytes) but the file holds "
            f"{len(data) - buf.tell():,} bytes of data: {fix}"
        )
    array = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=buf.tell())
    return array.reshape(shape, order="F" if fortran else "C").copy()
