"""A hostile step trace (``trace.npy``) in a model dataset: refused by name, never a traceback.

The trace's bytes are covered by the record's sha256, which anyone who edits a copy recomputes
(``rewrite_model``): a well-formed ``.npy`` of another layout (no ``step`` column, two dimensions,
more or fewer digests than the record names tensors, float steps of NaN) must be refused when read,
before the comparison indexes it, by every command that reads it.
"""

from __future__ import annotations

import hashlib
import io
from typing import Any

import numpy as np
import pytest

pytest.register_assert_rewrite("train_fixtures")

from train_fixtures import rewrite_model

from reprodl import keys
from reprodl.errors import ModelLoadError
from reprodl.modeldataset.read import load_trace, read_record
from reprodl.store import open_dataset

pytest_plugins = ["train_fixtures"]

HEAD = [("step", "<i8"), ("epoch", "<i4"), ("batch", "<i4"), ("loss", "<f8"), ("indices", "<u8")]


def _exact(n: int, head: list[Any] = HEAD) -> np.dtype[Any]:
    return np.dtype([*head, ("inputs", "<u8"), ("optimizer", "<u8"), ("digest", "<u8", (n,))])


def _rows(dtype: Any, shape: tuple[int, ...] = (3,)) -> np.ndarray:
    rows = np.zeros(shape, dtype=dtype)
    if rows.dtype.names and "step" in rows.dtype.names and rows.ndim == 1:
        rows["step"] = [np.nan, np.inf, 1] if rows.dtype["step"].kind == "f" else [1, 2, 3]
    return rows


CASES = {
    "no step column": lambda n: _rows([("x", "<i8")]),
    "a plain array": lambda n: _rows("<f8", (3, 4)),
    "two dimensions": lambda n: _rows(_exact(n), (3, 2)),
    "no dimension": lambda n: _rows(_exact(n), ()),
    "more digests than tensors": lambda n: _rows(_exact(n + 5)),
    "fewer digests than tensors": lambda n: _rows(_exact(n - 3)),
    "NaN steps": lambda n: _rows(_exact(n, [("step", "<f8"), *HEAD[1:]])),
    "sampled columns only": lambda n: _rows([("fingerprint", "<f8", (n,))]),
}


def _hostile(trained_model: Any, tmp_path: Any, case: str) -> str:
    n = len(trained_model.record.results.trace.tensors)
    buf = io.BytesIO()
    np.save(buf, CASES[case](n), allow_pickle=False)
    blob = buf.getvalue()

    def edit(raw: dict[str, Any]) -> None:
        raw["results"]["trace"]["sha256"] = "sha256:" + hashlib.sha256(blob).hexdigest()

    return rewrite_model(trained_model.uri, tmp_path, "trace", edit=edit, replace={keys.TRACE_FILE: blob})


@pytest.mark.parametrize("case", list(CASES))
def test_a_trace_of_another_layout_is_refused_when_read_and_by_reproduce(trained_model, tmp_path, cli, case):
    uri = _hostile(trained_model, tmp_path, case)
    ds = open_dataset(uri)
    with pytest.raises(ModelLoadError, match="is not a step trace of the words kind"):
        load_trace(ds, read_record(ds))
    result = cli("reproduce", uri, "-q")
    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # handled, not a traceback
    assert "is not a step trace" in " ".join(result.stderr.split()), result.stderr


def test_an_operation_log_of_other_types_is_compared_without_a_traceback(trained_model, tmp_path, cli):
    """The recorded operation log's entries are anyone's JSON: an ``out`` that is a number and a name of a
    megabyte are compared and shown (cut), never a TypeError after the re-run."""
    (log,) = trained_model.record.results.trace.oplog[:1]
    blob = b'{"i": 0, "op": "' + b"x" * 1_000_000 + b'", "out": 5, "module": {"a": 1}}\n'

    def edit(raw: dict[str, Any]) -> None:
        raw["results"]["trace"]["oplog"] = [{**raw["results"]["trace"]["oplog"][0], "sha256": _sha(blob)}]

    uri = rewrite_model(trained_model.uri, tmp_path, "oplog", edit=edit, replace={log.item: blob})
    result = cli("reproduce", uri, "--json")
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.stderr and len(result.stdout) < 200_000


def _sha(blob: bytes) -> str:
    return "sha256:" + hashlib.sha256(blob).hexdigest()
