"""An attestation bundle handed over beside a model that is not a regular file (a named pipe, a link
to ``/dev/zero``) is refused by name, quickly, without reading it (see ``tests/hostile_items.py``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hostile_items import bounded_call

READ_BUNDLE = """
from reprodl.modeldataset.attestation import read_bundle
read_bundle(args[0])
"""


@pytest.mark.parametrize("what", ["a named pipe", "a link to /dev/zero"])
def test_an_attestation_that_is_not_a_regular_file_is_refused_by_name(tmp_path: Path, what: str) -> None:
    bundle = tmp_path / "model.sigstore.json"
    if what == "a named pipe":
        os.mkfifo(bundle)
    else:
        bundle.symlink_to("/dev/zero")
    out = bounded_call(READ_BUNDLE, str(bundle), timeout=30)
    assert out.startswith("SigningError") and "model.sigstore.json" in out and "refused" in out, out
