"""A multi-run summary's ``summary.json`` that is not a regular file of the dataset (a named pipe, a
link to ``/dev/zero``, a link out of it) or is far larger than it may be is refused by name, quickly,
without reading it (see ``tests/hostile_items.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hostile_items import SPECIAL, bounded_call, make_oversized, make_special
from train_fixtures import item_file

from reprodl import keys
from reprodl.store import create_dataset

LOAD_SUMMARY = """
from reprodl.training.multirun import load_summary
load_summary(args[0])
"""


@pytest.mark.parametrize("what", [*SPECIAL, "a file over the bound"])
def test_a_summary_file_that_is_not_a_small_regular_file_is_refused_by_name(base_dir: Path, what: str) -> None:
    with create_dataset(str(base_dir), "summary") as writer:
        writer.put_bytes(b'{"runs": []}', keys.SUMMARY_FILE)
        writer.put_annotation(keys.MODEL_KIND, keys.KIND_SUMMARY)
    assert writer.uri is not None
    path = item_file(writer.uri, keys.SUMMARY_FILE)
    if what == "a file over the bound":
        make_oversized(path, keys.MAX_METADATA_BYTES + 1)
    else:
        make_special(path, what)
    out = bounded_call(LOAD_SUMMARY, writer.uri, timeout=30)
    assert out.startswith("DatasetFormatError") and keys.SUMMARY_FILE in out and "refused" in out, out
