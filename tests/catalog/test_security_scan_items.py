"""Indexing a claim or a multi-run summary whose ``claim.json`` or ``summary.json`` is not a regular
file of the dataset (a named pipe, a link to ``/dev/zero``, a link out of it) or is larger than its
manifest says refuses it by name, quickly, without reading it (see ``tests/hostile_items.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hostile_items import SPECIAL, bounded_call, make_oversized, make_special
from train_fixtures import item_file

from reprodl import keys
from reprodl.store import create_dataset

DESCRIBE = """
from reprodl.catalog.scan import describe
from reprodl.store import open_dataset
describe(open_dataset(args[0]))
"""


@pytest.mark.parametrize("what", [*SPECIAL, "a file over the bound"])
@pytest.mark.parametrize(
    ("kind", "relpath"), [(keys.KIND_CLAIM, keys.CLAIM_FILE), (keys.KIND_SUMMARY, keys.SUMMARY_FILE)]
)
def test_a_claim_or_summary_item_that_is_not_a_small_regular_file_is_refused_by_name(
    base_dir: Path, what: str, kind: str, relpath: str
) -> None:
    with create_dataset(str(base_dir), kind) as writer:
        writer.put_bytes(b"{}", relpath)
        writer.put_annotation(keys.MODEL_KIND, kind)
    assert writer.uri is not None
    path = item_file(writer.uri, relpath)
    if what == "a file over the bound":  # its manifest says 2 bytes
        make_oversized(path, keys.MAX_METADATA_BYTES + 1)
    else:
        make_special(path, what)
    out = bounded_call(DESCRIBE, writer.uri, timeout=30)
    assert out.startswith("DatasetFormatError") and relpath in out and "refused" in out, out
