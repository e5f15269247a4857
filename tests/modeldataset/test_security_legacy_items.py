"""A dtoolAI-format model whose ``model.pt`` or ``history.json`` is not a regular file of the dataset
(a named pipe, a link to ``/dev/zero``, a link out of it), or whose history is far larger than it may
be, is refused by name, quickly, without reading it (see ``tests/hostile_items.py``)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from hostile_items import SPECIAL, bounded_call, make_oversized, make_special
from train_fixtures import item_file

from reprodl import keys
from reprodl.store import create_dataset

LOAD = """
from reprodl.modeldataset.legacy import load_dtoolai_model
from reprodl.store import open_dataset
load_dtoolai_model(open_dataset(args[0]))
"""


def _dtoolai_model(base: Path) -> str:
    """A model dataset in dtoolAI's layout: model.pt (a state dict), history.json, its annotations."""
    weights = io.BytesIO()
    torch.save(torch.nn.Linear(2, 2).state_dict(), weights)
    with create_dataset(str(base), "dtoolai-model") as writer:
        writer.put_bytes(weights.getvalue(), keys.DTOOLAI_WEIGHTS_FILE)
        writer.put_bytes(b'{"epoch_loss": [2.3]}', keys.HISTORY_FILE)
        writer.put_annotation(keys.MODEL_NAME, "dtoolai.simpleScalingCNN")
        writer.put_annotation(keys.MODEL_PARAMETERS, {"init_params": {"input_channels": 1, "input_dim": 16}})
        writer.put_annotation(keys.CATEGORY_ENCODING, {"0": 0, "1": 1})
    assert writer.uri is not None
    return writer.uri


CASES = [(rel, what) for rel in (keys.DTOOLAI_WEIGHTS_FILE, keys.HISTORY_FILE) for what in SPECIAL]


@pytest.mark.parametrize(("relpath", "what"), [*CASES, (keys.HISTORY_FILE, "a file over the bound")])
def test_a_dtoolai_item_that_is_not_a_regular_file_is_refused_by_name(base_dir: Path, what: str, relpath: str) -> None:
    uri = _dtoolai_model(base_dir)
    if what == "a file over the bound":
        make_oversized(item_file(uri, relpath), keys.MAX_METADATA_BYTES + 1)
    else:
        make_special(item_file(uri, relpath), what)
    out = bounded_call(LOAD, uri, timeout=30)
    assert out.split(":")[0] in ("DatasetFormatError", "ModelLoadError") and relpath in out and "refused" in out, out
