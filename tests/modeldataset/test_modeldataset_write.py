"""Writing the model dataset: the caller's README fields, and the training data fetched batched."""

from __future__ import annotations

import pytest
import torch
import yaml
from train_fixtures import digits_config

from reprodl.errors import ParametersError

pytest_plugins = ["train_fixtures"]


def test_a_configs_readme_fields_end_up_in_the_models_readme(digits_split_master, tmp_path):
    from reprodl.store import open_dataset
    from reprodl.training.config import build_and_train, load_config

    cfg = digits_config(digits_split_master, tmp_path, name="with-readme")
    cfg["readme"] = {"description": "digits for the tour", "owners": [{"name": "Ada"}], "project": "tour"}
    uri, record = build_and_train(load_config(cfg), progress=False)
    readme = yaml.safe_load(open_dataset(uri).get_readme_content())
    assert readme["description"] == "digits for the tour"
    assert readme["owners"] == [{"name": "Ada"}] and readme["project"] == "tour"
    # The fields reprodl writes from the record are still there.
    assert readme["name"] == "with-readme" and readme["record_digest"] == record.digest
    assert readme["training"]["seed"] == 0


def test_readme_keys_that_reprodl_writes_are_refused_before_training(digits_split_master, tmp_path):
    from reprodl.training.config import load_config

    cfg = digits_config(digits_split_master, tmp_path)
    cfg["readme"] = {"training": "by hand", "notes": "ok"}
    with pytest.raises(ParametersError, match=r"readme keys \['training'\] are written by reprodl"):
        load_config(cfg)


def test_readme_values_that_are_not_json_are_refused(digits_split_master, tmp_path):
    from reprodl import DerivedDataSet, TensorDataSet

    ds = TensorDataSet(digits_split_master, "train")
    with pytest.raises(ParametersError, match="readme values must be text, numbers"):
        DerivedDataSet(str(tmp_path), "m", ds, readme={"when": object()})
    with pytest.raises(ParametersError, match="readme should be a mapping"):
        DerivedDataSet(str(tmp_path), "m", ds, readme=["not", "a", "mapping"])


class _Noise:
    """A random transform drawing from torch's global generator (one draw per sample)."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.randn(x.shape)


@pytest.mark.parametrize("transform", [None, _Noise()], ids=["plain", "random-transform"])
def test_several_training_sets_are_fetched_batched_with_the_samples_of_item_by_item(digits_split_master, transform):
    from reprodl import TensorDataSet
    from reprodl.data.datasets import Batch
    from reprodl.training.loader import Concat as _Concat

    sets = [TensorDataSet(digits_split_master, u, transform) for u in ("train", "test")]
    both = _Concat(sets)
    n0 = len(sets[0])
    indices = [3, 4, n0 + 7, n0 + 1, 0, len(both) - 1]
    calls: list[list[int]] = []
    for ds in sets:
        original = ds.__getitems__
        ds.__getitems__ = lambda idx, _f=original: (calls.append(list(idx)), _f(idx))[1]
    torch.manual_seed(0)
    batch = both.__getitems__(indices)
    torch.manual_seed(0)
    one_by_one = [both[i] for i in indices]
    assert calls == [[3, 4], [7, 1], [0], [len(sets[1]) - 1]]  # one call per run in one dataset
    assert isinstance(batch, Batch) and batch.labels.dtype == torch.int64
    assert torch.equal(batch.inputs, torch.stack([x for x, _ in one_by_one]))
    assert batch.labels.tolist() == [y for _, y in one_by_one]
