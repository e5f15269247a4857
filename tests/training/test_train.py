"""Training with provenance capture: the paper's workflow, the record, refusals (Parameters: test_params.py).

Everything trains for real on scikit-learn's handwritten digits (a fraction of a second an
epoch) and reads the results back from the model dataset written to ``tmp_path``.
Modules: reprodl.training.loop (the trainer), reprodl.training._epochs (its epoch loop).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import snapshot, staging_dirs
from safetensors.torch import load_file

pytest.register_assert_rewrite("train_fixtures")
from train_fixtures import (
    INIT_PARAMS,
    N_TEST,
    N_TRAIN,
    digit_image,
    digits_config,
    flip_byte,
    item_file,
    path_of,
    small_params,
    train_digits,
)

from reprodl import keys
from reprodl.errors import IntegrityError, ParametersError, ReprodlError
from reprodl.modeldataset.read import load_record
from reprodl.store import open_dataset

pytest_plugins = ["train_fixtures"]


def _empty(base: Path) -> bool:
    return snapshot(base) == [] and staging_dirs(base) == []


# --- the paper's snippets, with only the import lines changed ---------------------------------


def test_paper_training_a_simple_model_runs_as_written(digits_split_master, tmp_path, capsys, monkeypatch):
    # The lines that differ from the paper: imports, and where the data and params come from.
    import torch
    from PIL import Image

    from reprodl import (
        DerivedDataSet,
        GenNet,
        Parameters,
        TensorDataSet,
        TrainedTorchModel,
        train_model_with_metadata_capture,
    )

    base_uri = str(tmp_path / "models")
    os.mkdir(base_uri)
    params = Parameters(batch_size=32, learning_rate=0.1, n_epochs=2, init_params={"input_channels": 1, "input_dim": 8})
    train_dataset_uri = digits_split_master
    digit = TensorDataSet(digits_split_master).data[8]
    digit_image(digit).save(tmp_path / "handwritten_8.png")
    monkeypatch.chdir(tmp_path)

    # "Training a Simple Model"
    train_ds = TensorDataSet(train_dataset_uri)
    model = GenNet(**params.init_params)
    loss_fn = torch.nn.NLLLoss()
    optimiser = torch.optim.SGD(model.parameters(), lr=params.learning_rate)
    with DerivedDataSet(base_uri, "mnist_model", train_ds) as output_ds:
        train_model_with_metadata_capture(model, train_ds, optimiser, loss_fn, params, output_ds)

    # "Using the Model"
    model = TrainedTorchModel(output_ds.uri)
    my_image = Image.open("handwritten_8.png")
    result = model.convert_and_predict(my_image)
    print(f"Classified image as {result}")
    print(model.get_readme_content())

    printed = capsys.readouterr().out
    assert isinstance(result, str) and result in [str(d) for d in range(10)]
    assert f"Classified image as {result}" in printed
    assert "architecture: reprodl.zoo:GenNet" in printed and "name: mnist_model" in printed
    assert output_ds.uri == open_dataset(Path(base_uri) / "mnist_model").uri
    record = load_record(output_ds.uri)
    assert record.data[0].input_type == "TensorDataSet"
    assert record.data[0].n_items == 1797
    assert record.training.params["learning_rate"] == 0.1
    assert record.results.history[-1].train_loss < record.results.history[0].train_loss


def test_paper_training_a_new_model_with_new_data(digits_split_master, tmp_path, monkeypatch):
    """create-image-dataset-from-dirtree on a tree of real digit images, then the paper's script."""
    from reprodl.data.datasets import TensorDataSet

    digits = TensorDataSet(digits_split_master)
    tree = tmp_path / "image_dirtree"
    for category in ("0", "1", "2"):
        (tree / category).mkdir(parents=True)
        rows = np.flatnonzero(digits.labels == int(category))[:60]
        for i, row in enumerate(rows):
            digit_image(digits.data[row]).save(tree / category / f"image{i:04d}.png")
    base = tmp_path / "base_uri"
    base.mkdir()
    script = Path(sys.executable).parent / "create-image-dataset-from-dirtree"
    proc = subprocess.run([str(script), str(tree), str(base), "objects"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Created image dataset at" in proc.stdout
    monkeypatch.chdir(tmp_path)

    import torch

    from reprodl import DerivedDataSet, GenNet, ImageDataSet, TrainedTorchModel, train_model_with_metadata_capture

    base_uri = "base_uri"
    params = small_params(learning_rate=0.1, n_epochs=3, init_params={**INIT_PARAMS, "n_outputs": 3})

    train_ds = ImageDataSet("base_uri/objects")
    model = GenNet(**params.init_params)
    loss_fn = torch.nn.NLLLoss()
    optimiser = torch.optim.SGD(model.parameters(), lr=params.learning_rate)
    with DerivedDataSet(base_uri, "objects_model", train_ds) as output_ds:
        train_model_with_metadata_capture(model, train_ds, optimiser, loss_fn, params, output_ds, progress=False)

    record = load_record(output_ds.uri)
    assert record.data[0].category_encoding == {"0": 0, "1": 1, "2": 2}
    assert record.data[0].input_type == "ImageDataSet" and record.data[0].n_items == 180
    assert record.data[0].image_mode == "L" and record.data[0].input_shape == [1, 8, 8]
    trained = TrainedTorchModel(output_ds.uri)
    predictions = [
        trained.convert_and_predict(digit_image(digits.data[row])) for row in np.flatnonzero(digits.labels < 3)[60:90]
    ]
    truth = [str(int(digits.labels[row])) for row in np.flatnonzero(digits.labels < 3)[60:90]]
    assert set(predictions) <= {"0", "1", "2"}
    assert np.mean([p == t for p, t in zip(predictions, truth)]) > 0.8


# --- the captured record --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def captured(digits_split_master, tmp_path_factory):
    """Two epochs with SGD (momentum, weight decay, Nesterov), NLLLoss(sum), StepLR, seed 7."""
    base = tmp_path_factory.mktemp("captured")
    uri, returned = train_digits(
        base,
        "captured",
        digits_split_master,
        n_epochs=2,
        seed=7,
        learning_rate=0.002,
        user={"note": "capture test"},  # values for your own code go under user
        loss_fn=torch.nn.NLLLoss(reduction="sum"),
        optimiser=lambda net, p: torch.optim.SGD(
            net.parameters(), lr=p.learning_rate, momentum=0.9, weight_decay=1e-4, nesterov=True
        ),
        scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5),
    )
    return uri, returned, load_record(uri)


def test_record_returned_is_the_record_stored(captured):
    uri, returned, record = captured
    assert returned.model_dump() == record.model_dump()
    record.check_digest()
    assert record.digest == record.compute_digest()
    assert open_dataset(uri).get_annotation(keys.RECORD_DIGEST) == record.digest


def test_record_architecture(captured):
    from reprodl import GenNet

    record = captured[2]
    arch = record.architecture
    n = sum(p.numel() for p in GenNet(**INIT_PARAMS).parameters())
    assert (arch.import_path, arch.module, arch.class_name) == ("reprodl.zoo:GenNet", "reprodl.zoo", "GenNet")
    assert arch.init_params == INIT_PARAMS
    assert arch.n_parameters == arch.n_trainable == n == 6090
    assert arch.frozen_parameters == []
    assert arch.initialisation == "constructor"  # seeded before construction: rebuilt, not stored


def test_record_optimizer_loss_scheduler(captured):
    t = captured[2].training
    assert (t.optimizer.class_name, t.optimizer.module) == ("SGD", "torch.optim.sgd")
    group = t.optimizer.param_groups[0]
    assert group["lr"] == 0.002 and group["momentum"] == 0.9
    assert group["weight_decay"] == 1e-4 and group["nesterov"] is True and group["dampening"] == 0
    assert group["param_names"] == [
        "conv1.weight",
        "conv1.bias",
        "conv2.weight",
        "conv2.bias",
        "fc1.weight",
        "fc1.bias",
    ]
    assert t.loss.class_name == "NLLLoss" and t.loss.args["reduction"] == "sum" and t.loss.args["ignore_index"] == -100
    assert t.scheduler is not None and t.scheduler.class_name == "StepLR"
    assert t.scheduler.args["step_size"] == 1 and t.scheduler.args["gamma"] == 0.5
    assert [m.learning_rate for m in captured[2].results.history] == [0.002, 0.001]


def test_record_epochs_batch_params_seeds_determinism(captured):
    t = captured[2].training
    assert (t.epochs, t.batch_size, t.shuffle, t.num_workers, t.device, t.world_size) == (2, 32, True, 0, "cpu", 1)
    assert t.params["user"]["note"] == "capture test" and t.params["seed"] == 7
    assert (t.seeds.seed, t.seeds.torch, t.seeds.python, t.seeds.numpy, t.seeds.dataloader_generator) == (7, 7, 7, 7, 8)
    assert t.determinism.mode == "bitwise" and t.determinism.use_deterministic_algorithms is True
    assert t.determinism.cudnn_benchmark is False and t.determinism.num_threads == 1
    # The settings apply during training only: the caller's are back afterwards.
    assert torch.are_deterministic_algorithms_enabled() is False


def test_record_data_order_digests_pin_the_shuffle(captured):
    digests = captured[2].training.data_order_digests
    expected = []
    for epoch in range(2):
        g = torch.Generator()
        g.manual_seed(8 * 1_000_003 + epoch)  # dataloader seed (seed + 1) and epoch
        order = torch.randperm(N_TRAIN, generator=g).numpy().astype("<i8")
        expected.append("sha256:" + hashlib.sha256(order.tobytes()).hexdigest())
    assert digests == expected and digests[0] != digests[1]


def test_record_every_dataset(captured, digits_split_master):
    record = captured[2]
    ds = open_dataset(digits_split_master)
    train, valid = record.data
    for ref in (train, valid):
        assert (ref.uri, ref.uuid, ref.name) == (ds.uri, ds.uuid, "digits")
        assert ref.manifest_digest == ds.manifest_digest()
        assert record.readme_for(ref) == ds.get_readme_content() and "Alpaydin" in record.readme_for(ref)
        assert ref.input_type == "TensorDataSet" and ref.input_shape == [1, 8, 8] and ref.value_scale == 255.0
        assert ref.category_encoding == {str(d): d for d in range(10)}
    assert (train.role, train.usetype, train.n_items) == ("train", "train", N_TRAIN)
    assert (valid.role, valid.usetype, valid.n_items) == ("valid", "test", N_TEST)
    assert train.selection_digest != valid.selection_digest
    assert (train.readme_of, valid.readme_of, valid.readme) == (None, 0, "")  # stored once


def test_record_environment_metrics_and_time(captured):
    record = captured[2]
    env = record.environment
    assert env.python == platform.python_version() and env.torch == torch.__version__
    assert env.numpy == np.__version__ and env.reprodl == "0.1.0"
    assert {"torch", "numpy", "reprodl", "dtoolcore"} <= set(env.packages)
    history = record.results.history
    assert [m.epoch for m in history] == [1, 2]
    for m in history:
        assert math.isfinite(m.train_loss) and m.train_loss > 0
        assert m.valid_loss is not None and 0.0 <= m.valid_accuracy <= 1.0 and m.wall_time_s > 0
    assert record.results.final == {
        "train_loss": history[-1].train_loss,
        "valid_loss": history[-1].valid_loss,
        "valid_accuracy": history[-1].valid_accuracy,
    }
    assert record.results.wall_time_s >= sum(m.wall_time_s or 0.0 for m in history)
    assert record.results.started_at and record.results.finished_at


def test_model_dataset_items_readme_and_annotations(captured, digits_split_master):
    uri, _, record = captured
    ds = open_dataset(uri)
    source = open_dataset(digits_split_master)
    relpaths = {ds.relpath(i) for i in ds.identifiers}
    assert {keys.WEIGHTS_FILE, keys.PROVENANCE_FILE, keys.HISTORY_FILE, f"manifests/{source.uuid}.json"} <= relpaths
    assert not any(r.endswith((".pt", ".pth", ".pkl")) for r in relpaths)
    history = json.loads(Path(ds.item_path(ds.identifier_of(keys.HISTORY_FILE))).read_text())
    assert history == [m.model_dump(mode="json") for m in record.results.history]
    weights = load_file(ds.item_path(ds.identifier_of(keys.WEIGHTS_FILE)))
    assert sorted(weights) == ["conv1.bias", "conv1.weight", "conv2.bias", "conv2.weight", "fc1.bias", "fc1.weight"]
    readme = yaml.safe_load(ds.get_readme_content())
    assert readme["name"] == "captured" and readme["architecture"] == "reprodl.zoo:GenNet"
    assert readme["training"]["optimizer"] == "SGD" and readme["record_digest"] == record.digest
    assert ds.get_annotation(keys.MODEL_NAME) == "reprodl.zoo:GenNet"
    assert ds.get_annotation(keys.SOURCE_DATASET_URI) == source.uri
    assert ds.get_annotation(keys.SOURCE_DATASET_UUID) == source.uuid
    assert ds.get_annotation(keys.SOURCE_DATASET_NAME) == "digits"
    assert ds.get_annotation(keys.CATEGORY_ENCODING) == {str(d): d for d in range(10)}
    assert ds.get_annotation(keys.MODEL_PARAMETERS)["learning_rate"] == 0.002
    assert ds.verify(deep=True).ok


def test_loss_arguments_are_read_back_from_the_loss(digits_split_master, tmp_path):
    # Zoo models output log-probabilities; CrossEntropyLoss re-normalises them harmlessly.
    _, record = train_digits(
        tmp_path, "ce", digits_split_master, valid=False, loss_fn=torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    )
    assert record.training.loss.class_name == "CrossEntropyLoss"
    assert record.training.loss.args["label_smoothing"] == 0.1
    assert record.training.scheduler is None
    assert [d.role for d in record.data] == ["train"]
    assert record.results.history[0].valid_loss is None and "valid_accuracy" not in record.results.final


# --- several training datasets ---------------------------------------------------------------


def _tensor_sets(base: Path, digits_uri: str, second_categories: list[str] | None = None):
    from reprodl.data.creators import create_from_arrays
    from reprodl.data.datasets import TensorDataSet

    digits = TensorDataSet(digits_uri)
    names = [str(d) for d in range(10)]
    a = create_from_arrays(
        np.asarray(digits.data[:900]),
        digits.labels[:900],
        str(base),
        "part_a",
        image_dimensions=[1, 8, 8],
        categories=names,
    )
    b = create_from_arrays(
        np.asarray(digits.data[900:]),
        digits.labels[900:],
        str(base),
        "part_b",
        image_dimensions=[1, 8, 8],
        categories=second_categories or names,
    )
    return TensorDataSet(a), TensorDataSet(b)


def test_training_datasets_must_share_label_metadata(digits_split_master, tmp_path):
    from reprodl import DerivedDataSet

    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    a, b = _tensor_sets(tmp_path, digits_split_master, second_categories=words)
    out = tmp_path / "models"
    out.mkdir()
    with pytest.raises(ParametersError, match="'part_a' and 'part_b' do not share label metadata") as info:
        DerivedDataSet(str(out), "m", [a, b])
    assert "'0'" in str(info.value) and "'zero'" in str(info.value)
    with pytest.raises(ParametersError, match="do not share label metadata"):
        DerivedDataSet(str(out), "m", a, valid=b)
    assert _empty(out)


def test_several_training_datasets_train_as_one(digits_split_master, tmp_path):
    from reprodl import DerivedDataSet, GenNet, train_model_with_metadata_capture

    a, b = _tensor_sets(tmp_path, digits_split_master)
    params = small_params(n_epochs=2)
    torch.manual_seed(0)
    model = GenNet(**INIT_PARAMS)
    with DerivedDataSet(str(tmp_path), "both", [a, b]) as out:
        record = train_model_with_metadata_capture(
            model, a, torch.optim.SGD(model.parameters(), lr=0.05), torch.nn.NLLLoss(), params, out, progress=False
        )
    assert [(d.role, d.name, d.n_items) for d in record.data] == [("train", "part_a", 900), ("train", "part_b", 897)]
    assert len(record.data_by_role("train")) == 2
    assert record.results.history[1].train_loss < record.results.history[0].train_loss


# --- failures leave nothing behind ---------------------------------------------------------------


class _FailingLoss(torch.nn.NLLLoss):
    def __init__(self, error: BaseException, after: int) -> None:
        super().__init__()
        self.error, self.after, self.calls = error, after, 0

    def forward(self, input, target):
        self.calls += 1
        if self.calls > self.after:
            raise self.error
        return super().forward(input, target)


@pytest.mark.parametrize("error", [RuntimeError("CUDA out of memory (simulated)"), KeyboardInterrupt()])
def test_failed_or_interrupted_training_leaves_no_model_dataset(error, digits_split_master, tmp_path):
    out = tmp_path / "models"
    out.mkdir()
    loss = _FailingLoss(error, after=5)
    with pytest.raises(type(error)):
        train_digits(out, "doomed", digits_split_master, loss_fn=loss)
    assert loss.calls == 6
    assert _empty(out)


def test_a_block_that_trains_nothing_raises_and_leaves_nothing(digits_split_master, tmp_path):
    from reprodl import DerivedDataSet, TensorDataSet

    out = tmp_path / "models"
    out.mkdir()
    with pytest.raises(ReprodlError, match="nothing was trained into the model dataset 'empty'"):
        with DerivedDataSet(str(out), "empty", TensorDataSet(digits_split_master)):
            pass
    assert _empty(out)


def test_one_output_dataset_takes_one_training(digits_split_master, tmp_path):
    from reprodl import DerivedDataSet, GenNet, TensorDataSet, train_model_with_metadata_capture

    ds = TensorDataSet(digits_split_master, usetype="test")
    model = GenNet(**INIT_PARAMS)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    unentered = DerivedDataSet(str(tmp_path), "x", ds)
    with pytest.raises(ParametersError, match="must be entered first"):
        train_model_with_metadata_capture(model, ds, opt, torch.nn.NLLLoss(), small_params(), unentered)
    with DerivedDataSet(str(tmp_path), "once", ds) as out:
        train_model_with_metadata_capture(model, ds, opt, torch.nn.NLLLoss(), small_params(), out, progress=False)
        with pytest.raises(ParametersError, match="already trained"):
            train_model_with_metadata_capture(model, ds, opt, torch.nn.NLLLoss(), small_params(), out)
    assert load_record(out.uri).data[0].n_items == N_TEST


# --- integrity before training --------------------------------------------------------------------


def test_tampered_item_is_refused_before_training(digits_split_uri, tmp_path):
    flip_byte(item_file(digits_split_uri, "data.npy"))
    out = tmp_path / "models"
    out.mkdir()
    loss = _FailingLoss(AssertionError("training started"), after=0)
    with pytest.raises(IntegrityError, match=r"refusing to train(.|\n)*content altered: data\.npy") as info:
        train_digits(out, "m", digits_split_uri, loss_fn=loss)
    assert any("data.npy" in p for p in info.value.problems)
    assert loss.calls == 0 and _empty(out)


def test_deep_check_catches_an_edit_that_kept_the_mtime(digits_split_uri, tmp_path):
    flip_byte(item_file(digits_split_uri, "labels.npy"), keep_mtime=True)
    out = tmp_path / "models"
    out.mkdir()
    with pytest.raises(IntegrityError, match=r"content altered: labels\.npy"):
        train_digits(out, "m", digits_split_uri, verify_data="deep")
    assert _empty(out)


# --- no per-batch host/device synchronisation ---------------------------------------------------


def test_capture_adds_no_per_batch_synchronisation(digits_split_master, tmp_path, count_host_syncs):
    counts = {}
    for batch_size in (16, 128):  # 90 and 12 batches an epoch
        count_host_syncs["n"] = 0
        train_digits(
            tmp_path,
            f"bs{batch_size}",
            digits_split_master,
            batch_size=batch_size,
            valid=True,
            optimiser=lambda net, p: torch.optim.SGD(net.parameters(), lr=p.learning_rate),
        )
        counts[batch_size] = count_host_syncs["n"]
    assert counts[16] == counts[128] < 20, counts

    class ItemLoss(torch.nn.NLLLoss):  # the counter does see a per-batch loss.item()
        def forward(self, input, target):
            out = super().forward(input, target)
            out.item()
            return out

    count_host_syncs["n"] = 0
    train_digits(
        tmp_path,
        "syncing",
        digits_split_master,
        batch_size=16,
        valid=True,
        loss_fn=ItemLoss(),
        optimiser=lambda net, p: torch.optim.SGD(net.parameters(), lr=p.learning_rate),
    )
    assert count_host_syncs["n"] >= counts[16] + 90


# --- code version ---------------------------------------------------------------------------------

TRAIN_SCRIPT = """\
import sys

import torch

from reprodl import DerivedDataSet, GenNet, Parameters, TensorDataSet, train_model_with_metadata_capture

torch.set_num_threads(1)
data_uri, base_uri = sys.argv[1], sys.argv[2]
params = Parameters(batch_size=64, learning_rate=0.05, n_epochs=1,
                    init_params={"input_channels": 1, "input_dim": 8})
train_ds = TensorDataSet(data_uri, usetype="test")
model = GenNet(**params.init_params)
optimiser = torch.optim.SGD(model.parameters(), lr=params.learning_rate)
with DerivedDataSet(base_uri, "git_model", train_ds) as output_ds:
    train_model_with_metadata_capture(model, train_ds, optimiser, torch.nn.NLLLoss(), params, output_ds,
                                      progress=False)
print(output_ds.uri)
"""


@pytest.mark.slow
def test_git_commit_branch_and_uncommitted_patch_are_captured(digits_split_master, tmp_path):
    repo = tmp_path / "project"
    repo.mkdir()
    script = repo / "train.py"
    script.write_text(TRAIN_SCRIPT)

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-c", "user.name=T", "-c", "user.email=t@example.org", *args],
            cwd=repo,
            check=True,
            capture_output=True,
            text=True,
        ).stdout

    git("init", "-q", "-b", "main")
    git("add", "train.py")
    git("commit", "-q", "-m", "training script")
    commit = git("rev-parse", "HEAD").strip()
    script.write_text(TRAIN_SCRIPT.replace("lr=params.learning_rate)", "lr=params.learning_rate)  # tuned"))
    patch = git("diff", "HEAD", "--binary")
    assert "# tuned" in patch
    out = tmp_path / "models"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(script), digits_split_master, str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    uri = proc.stdout.strip().splitlines()[-1]

    record = load_record(uri)
    git_info = record.code.git
    assert git_info is not None
    assert (git_info.commit, git_info.branch, git_info.dirty) == (commit, "main", True)
    assert Path(git_info.root).resolve() == repo.resolve()
    assert git_info.patch_item == keys.CODE_PATCH_FILE
    ds = open_dataset(uri)
    stored = Path(ds.item_path(ds.identifier_of(keys.CODE_PATCH_FILE))).read_text()
    assert stored == patch
    assert git_info.patch_sha256 == hashlib.sha256(patch.encode()).hexdigest()
    assert record.code.entry_script == str(script.resolve())
    assert record.code.entry_script_sha256 == hashlib.sha256(script.read_bytes()).hexdigest()

    from reprodl.reproduction.rerun import check_code, check_patch

    code = check_code(record, repo=repo)  # git runs only in a repository the user names or is in
    assert code.commit_available and code.same_commit
    assert check_patch(record, ds, code).patch_applies is True


# --- fine-tuning and lineage ----------------------------------------------------------------------


@pytest.fixture
def parent_and_child(digits_split_master, tmp_path):
    from reprodl.training.config import build_and_train, load_config

    models = tmp_path / "models"
    models.mkdir()
    parent_uri, parent_record = build_and_train(
        load_config(digits_config(digits_split_master, models, name="parent")), progress=False
    )
    cfg = digits_config(digits_split_master, models, name="child", learning_rate=0.02)
    del cfg["model"]  # the architecture comes from the parent's record
    cfg.update(parent=parent_uri, freeze=["conv1"])
    child_uri, child_record = build_and_train(load_config(cfg), progress=False)
    return parent_uri, parent_record, child_uri, child_record


def test_fine_tuning_records_lineage_and_frozen_parameters(parent_and_child):
    parent_uri, parent_record, child_uri, record = parent_and_child
    parent = record.lineage.parent
    assert parent is not None
    assert (parent.uri, parent.uuid) == (open_dataset(parent_uri).uri, open_dataset(parent_uri).uuid)
    assert parent.record_digest == parent_record.digest == load_record(parent_uri).digest
    assert parent.weights_sha256 == parent_record.results.weights_sha256
    arch = record.architecture
    assert arch.frozen_parameters == ["conv1.weight", "conv1.bias"]
    assert arch.initialisation == "parent"
    assert arch.n_trainable == arch.n_parameters - (10 * 1 * 5 * 5 + 10)
    assert "conv1.weight" not in record.training.optimizer.param_groups[0]["param_names"]
    assert record.training.optimizer.param_groups[0]["lr"] == 0.02
    before = load_file(str(path_of(parent_uri) / "data" / keys.WEIGHTS_FILE))
    after = load_file(str(path_of(child_uri) / "data" / keys.WEIGHTS_FILE))
    assert torch.equal(before["conv1.weight"], after["conv1.weight"])
    assert not torch.equal(before["fc1.weight"], after["fc1.weight"])
    assert open_dataset(child_uri).get_readme_content().count("fine_tuned_from") == 1


def test_lineage_prints_the_chain_and_detects_a_broken_link(parent_and_child):
    from reprodl.modeldataset.verify import lineage

    parent_uri, _, child_uri, _ = parent_and_child
    chain = lineage(child_uri)
    assert [e["name"] for e in chain] == ["child", "parent"]
    assert all(e["digest_ok"] for e in chain) and chain[1]["link_ok"] is True
    assert chain[0]["frozen"] == ["conv1.weight", "conv1.bias"]

    record_file = path_of(parent_uri) / "data" / keys.PROVENANCE_FILE
    raw = json.loads(record_file.read_text())
    raw["training"]["params"]["learning_rate"] = 0.5  # edited, digest left as it was
    record_file.write_text(json.dumps(raw))
    chain = lineage(child_uri)
    assert chain[1]["digest_ok"] is False

    from reprodl.provenance import parse_record

    record_file.write_text(parse_record(json.dumps(raw)).sealed().to_json())  # edited and resealed
    chain = lineage(child_uri)
    assert chain[1]["digest_ok"] is True and chain[1]["link_ok"] is False


def test_freezing_an_unknown_parameter_is_refused(digits_split_master, tmp_path):
    from reprodl.training.config import build_and_train, load_config

    cfg = digits_config(digits_split_master, tmp_path, name="m")
    cfg["freeze"] = ["conv9"]
    with pytest.raises(ParametersError, match=r"freeze names \['conv9'\]"):
        build_and_train(load_config(cfg), progress=False)
    assert not (tmp_path / "m").exists()


def test_training_on_a_dataset_the_output_does_not_name_is_refused(tmp_path, digits_uri):
    import torch

    from reprodl import DerivedDataSet, GenNet, Parameters, TensorDataSet, train_model_with_metadata_capture
    from reprodl.errors import ParametersError

    named = TensorDataSet(digits_uri, usetype="train")
    other = TensorDataSet(digits_uri, usetype="test")
    params = Parameters(batch_size=32, n_epochs=1, init_params={"input_channels": 1, "input_dim": 8})
    model = GenNet(**params.init_params)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with pytest.raises(ParametersError, match="is not a training dataset of the output"):
        with DerivedDataSet(str(tmp_path), "m", named) as out:
            train_model_with_metadata_capture(model, other, opt, torch.nn.NLLLoss(), params, out, progress=False)
    assert not (tmp_path / "m").exists()


def test_untracked_code_is_kept_and_clean_code_can_be_required(digits_split_master, tmp_path):
    """DeepDIVA's enforcement: require committed code, or keep what is not committed."""
    import yaml

    from reprodl.errors import DirtyCodeError
    from reprodl.training.config import build_and_train, load_config

    repo = tmp_path / "project"
    repo.mkdir()

    def git(*args: str) -> None:
        subprocess.run(
            ["git", "-c", "user.name=T", "-c", "user.email=t@example.org", *args],
            cwd=repo,
            check=True,
            capture_output=True,
        )

    git("init", "-q", "-b", "main")
    (repo / "README.md").write_text("project\n")
    git("add", "README.md")
    git("commit", "-q", "-m", "start")
    (repo / "augment.py").write_text("SCALE = 2\n")
    (repo / "models").mkdir()
    config = digits_config(digits_split_master, "models", name="kept")
    (repo / "train.yaml").write_text(yaml.safe_dump(config))

    uri, record = build_and_train(load_config(repo / "train.yaml"), progress=False)
    git_info = record.code.git
    assert git_info.dirty and git_info.commit
    prefix = keys.CODE_DIR + "untracked/"
    assert sorted(git_info.untracked_items) == [prefix + "augment.py", prefix + "train.yaml"]
    ds = open_dataset(uri)
    assert Path(ds.item_path(ds.identifier_of(prefix + "augment.py"))).read_text() == "SCALE = 2\n"
    # The model just written into the repository is data, not code: the next training skips it.
    _, second = build_and_train(load_config(repo / "train.yaml", ["name=again"]), progress=False)
    assert not any("kept" in item for item in second.code.git.untracked_items)

    with pytest.raises(DirtyCodeError, match="uncommitted changes .*augment.py"):
        build_and_train(load_config(repo / "train.yaml", ["name=strict", "require_clean_code=true"]), progress=False)
    assert not (repo / "models" / "strict").exists()

    (repo / ".gitignore").write_text("models/\n")
    git("add", ".gitignore", "augment.py", "train.yaml")
    git("commit", "-q", "-m", "all in")
    _, clean = build_and_train(
        load_config(repo / "train.yaml", ["name=strict", "require_clean_code=true"]), progress=False
    )
    assert clean.code.git.dirty is False and clean.code.git.untracked_items == []
