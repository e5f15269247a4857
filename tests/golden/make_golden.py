"""Make the golden files of this provenance schema version (run by hand, never by the tests).

    python tests/golden/make_golden.py        # from the repository root, on a committed tree

It writes, next to this script:

- ``digits-golden/``: a model dataset (a frozen dtool dataset, ``.dtool/`` included): GenNet at
  8x8 trained one epoch (seed 0, SGD lr 0.05 momentum 0.9, StepLR) on the first 1,400 of
  scikit-learn's 8x8 digits, validated on the other 397;
- ``provenance.json``: a copy of that model's record.

The training data are made in a temporary directory and not kept: the record's data URIs
point at a path that no longer exists, so the tests verify the model without ``data=True``.

Make them again only when the record format changes on purpose: bump
``keys.PROVENANCE_SCHEMA_VERSION``, keep the old golden record readable (move it to
``tests/golden/<old version>/`` and keep a test that reads it), then run this script and
``git add -f tests/golden`` (``.dtool/`` is a hidden directory: check that it is staged).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

# OMP_NUM_THREADS is set before numpy and torch load (E402 is ignored under tests/).
import numpy as np
import torch

from reprodl import DerivedDataSet, GenNet, Parameters, TensorDataSet, keys, train_model_with_metadata_capture
from reprodl.data.creators import create_from_arrays, digits_arrays
from reprodl.store import local_path

HERE = Path(__file__).resolve().parent
NAME = "digits-golden"
N_TRAIN, N_VALID = 1400, 397


def make_data(base: Path) -> str:
    """The 1,797 digits as a TensorDataSet split 1,400 train (the first) / 397 test."""
    images, labels = digits_arrays()
    n = N_TRAIN + N_VALID
    usetype = np.array(["train"] * N_TRAIN + ["test"] * N_VALID)
    readme = {
        "description": "scikit-learn's 8x8 digits, the first 1,400 for training (golden test data)",
        "authors": ["reprodl"],
    }
    return create_from_arrays(
        images[:n], labels[:n], str(base), "digits-split", image_dimensions=[1, 8, 8], usetype=usetype, readme=readme
    )


def main() -> None:
    torch.set_num_threads(1)
    target = HERE / NAME
    with tempfile.TemporaryDirectory(prefix="reprodl-golden-") as tmp:
        data_uri = make_data(Path(tmp))
        params = Parameters(batch_size=32, learning_rate=0.05, n_epochs=1, seed=0, init_params={"input_dim": 8})
        train_ds = TensorDataSet(data_uri, usetype="train")
        valid_ds = TensorDataSet(data_uri, usetype="test")
        torch.manual_seed(params.seed)
        net = GenNet(**params.init_params)
        opt = torch.optim.SGD(net.parameters(), lr=params.learning_rate, momentum=0.9)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        # Built beside the data, then moved here: the tree stays clean while training captures the code.
        with DerivedDataSet(tmp, NAME, train_ds, valid=valid_ds) as out:
            train_model_with_metadata_capture(
                net,
                train_ds,
                opt,
                torch.nn.NLLLoss(),
                params,
                out,
                scheduler=sched,
                progress=False,
                store_untracked=False,
            )
        built = local_path(str(out.uri))
        assert built is not None
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(built, target)
    path = target
    shutil.copyfile(path / "data" / keys.PROVENANCE_FILE, HERE / keys.PROVENANCE_FILE)
    total = sum(f.stat().st_size for f in HERE.rglob("*") if f.is_file())
    print(f"wrote {path} and {HERE / keys.PROVENANCE_FILE}: {total} bytes under {HERE}")


if __name__ == "__main__":
    main()
