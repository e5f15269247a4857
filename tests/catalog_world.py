"""The catalog tests' world, a pytest plugin (``pytest_plugins = [..., "catalog_world"]``).

One session-scoped world (read-only): the digits (and a second digits dataset for a fine-tuning),
the session's trained model, a model fine-tuned from it, a kept reproduction of it (with its
verdict), a claim over both models, and a copy of the digits on another base URI; ``cat`` is a
catalog of all of it on the test's tmp_path.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from train_fixtures import TrainedModel, path_of, small_params

from reprodl.catalog import Catalog, add


def _finetune(base: Path, name: str, data_uri: str, parent: str) -> str:
    """A model fine-tuned from ``parent`` on ``data_uri``'s train split (the record names the parent)."""
    import torch
    from torch import nn

    from reprodl import DerivedDataSet, GenNet, TensorDataSet, train_model_with_metadata_capture

    params = small_params()
    train_ds = TensorDataSet(data_uri, usetype="train")
    torch.manual_seed(0)
    net = GenNet(**params.init_params)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    with DerivedDataSet(str(base), name, train_ds, parent=parent) as out:
        train_model_with_metadata_capture(net, train_ds, opt, nn.NLLLoss(), params, out, progress=False)
    assert out.uri is not None
    return out.uri


def _claim(base: Path, a: str, b: str) -> str:
    from reprodl.modeldataset.read import load_record
    from reprodl.reproduction.claims import Comparison, RunValue, write_claim

    ra, rb = load_record(a), load_record(b)
    runs = {
        "a": [RunValue(0, float(ra.results.final["train_loss"]), a, str(ra.digest))],
        "b": [RunValue(0, float(rb.results.final["train_loss"]), b, str(rb.digest))],
    }
    comparison = Comparison(1.0, 1.0, 1.0, "A better", "train_loss", 1, ["init", "order"], runs, {"a": "A", "b": "B"})
    return write_claim(comparison, str(base), "a-vs-b")


@pytest.fixture(scope="session")
def world(trained_model: TrainedModel, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from reprodl.data.creators import create_digits
    from reprodl.data.ops import split_dataset
    from reprodl.reproduction.rerun import reproduce
    from reprodl.store import copy_dataset, normalise_uri

    root = tmp_path_factory.mktemp("catalog-world")
    for d in ("data", "models", "claims", "mirror"):
        (root / d).mkdir()
    shutil.copytree(path_of(trained_model.data_uri), root / "data" / "digits")
    more = create_digits(str(root / "data"), "more-digits")
    split_dataset(more, test=0.2, seed=1)
    shutil.copytree(trained_model.path, root / "models" / "digits-model")
    model = normalise_uri(str(root / "models" / "digits-model"))
    ft = _finetune(root / "models", "digits-ft", more, model)
    report = reproduce(model, output=str(root / "models"))
    assert report.reproduction_uri is not None and report.verdict == "identical"
    claim = _claim(root / "claims", model, ft)
    mirror = copy_dataset(normalise_uri(str(root / "data" / "digits")), str(root / "mirror"))
    return {
        "root": root,
        "digits": normalise_uri(str(root / "data" / "digits")),
        "more": more,
        "model": model,
        "ft": ft,
        "repro": report.reproduction_uri,
        "claim": claim,
        "mirror": mirror,
    }


@pytest.fixture
def cat(world: dict[str, Any], tmp_path: Path) -> Any:
    """A catalog of the whole world, on tmp_path."""
    with Catalog(tmp_path / "catalog.sqlite") as catalog:
        for base in ("data", "models", "claims", "mirror"):
            add(catalog, str(world["root"] / base))
        yield catalog
