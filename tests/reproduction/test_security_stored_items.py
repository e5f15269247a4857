"""A claim's ``claim.json`` and a record's stored patch that are not regular files of the dataset
(a named pipe, a link to ``/dev/zero``, a link out of it) or are far larger than they may be are
refused by name, quickly, without reading them (see ``tests/hostile_items.py``)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from hostile_items import SPECIAL, bounded_call, make_oversized, make_special
from train_fixtures import item_file, rewrite_model

from reprodl import keys
from reprodl.store import create_dataset

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "digits-golden"
PATCH = b"--- a/x.py\n+++ b/x.py\n@@ -1 +1 @@\n-x = 1\n+x = 2\n"

LOAD_CLAIM = """
from reprodl.reproduction.claim_dataset import load_claim
load_claim(args[0])
"""

CHECK_PATCH = """
from reprodl.modeldataset.read import load_record
from reprodl.reproduction.code import CodeCheck, check_patch
from reprodl.store import open_dataset
code = CodeCheck(status="available", message="", commit_available=True, repository=args[1])
print(check_patch(load_record(args[0]), open_dataset(args[0]), code).message)
"""


def _claim(base: Path) -> str:
    with create_dataset(str(base), "claim") as writer:
        writer.put_bytes(b'{"metric": "accuracy"}', keys.CLAIM_FILE)
        writer.put_annotation(keys.MODEL_KIND, keys.KIND_CLAIM)
    assert writer.uri is not None
    return writer.uri


@pytest.mark.parametrize("what", [*SPECIAL, "a file over the bound"])
def test_a_claim_file_that_is_not_a_small_regular_file_is_refused_by_name(base_dir: Path, what: str) -> None:
    uri = _claim(base_dir)
    path = item_file(uri, keys.CLAIM_FILE)
    if what == "a file over the bound":
        make_oversized(path, keys.MAX_METADATA_BYTES + 1)
    else:
        make_special(path, what)
    out = bounded_call(LOAD_CLAIM, uri, timeout=30)
    assert out.startswith("DatasetFormatError") and keys.CLAIM_FILE in out and "refused" in out, out


@pytest.mark.parametrize("what", [*SPECIAL, "a file over the bound"])
def test_a_stored_patch_that_is_not_a_regular_file_is_not_read(tmp_path: Path, what: str) -> None:
    def edit(raw: dict) -> None:
        raw["code"]["git"].update(patch_item=keys.CODE_PATCH_FILE, patch_sha256=hashlib.sha256(PATCH).hexdigest())

    (tmp_path / "models").mkdir()
    model = tmp_path / "models" / "m"
    shutil.copytree(GOLDEN, tmp_path / "golden")
    uri = rewrite_model(
        str(tmp_path / "golden"), tmp_path / "models", "m", edit=edit, replace={keys.CODE_PATCH_FILE: PATCH}
    )
    path = model / "data" / keys.CODE_PATCH_FILE
    if what == "a file over the bound":  # longer than its manifest says: the recorded sha256 cannot match
        make_oversized(path, 4 << 30)
        expected = "does not match its recorded sha256"
    else:
        make_special(path, what)
        expected = "DatasetFormatError"
    out = bounded_call(CHECK_PATCH, uri, str(tmp_path), timeout=30)
    assert expected in out and keys.CODE_PATCH_FILE in out, out
