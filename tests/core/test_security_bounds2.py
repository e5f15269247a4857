"""Issue 17, items 11-14: bounded whatever the record says; no silent wrong results.

Each hostile input is built as an attacker would: a copy of a real model dataset with an edited
record, resealed (its self-digest recomputed and a consistent manifest written), so only the
defence under test stops it.

* Recorded integers that size resources (``num_workers``, ``world_size``, a zoo model's init
  parameters) are refused quickly, naming the field, its value and this machine's limit.
* Record strings printed by the CLI carry no terminal control characters; a model card shows
  ``<script>`` and ``javascript:`` links as text.
* Float labels and complex data are refused at training time, naming the dataset.
* Untracked files named like secrets (.pgpass, .npmrc, .docker/config.json, .htpasswd,
  secrets.*, token files) are not stored, and the record names them.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from reprodl import keys, store, trust
from reprodl.errors import DatasetFormatError

pytest.register_assert_rewrite("train_fixtures")

from test_security_secrets import PREFIX, SECRET, _git
from train_fixtures import digits_config, rewrite_model

pytest_plugins = ["train_fixtures"]

QUICK_S = 30  # a refusal reads the record (and at most checks the digits data): seconds, not minutes


@contextlib.contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """Fail (rather than hang, fork or allocate for minutes) when the body runs past ``seconds``."""

    def expire(*_: Any) -> None:
        raise TimeoutError(f"still running after {seconds}s: the record's value was not refused in time")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _edited(trained_model: Any, tmp_path: Path, edit: Callable[[dict[str, Any]], None], name: str = "evil") -> str:
    (tmp_path / "evil").mkdir(exist_ok=True)
    return rewrite_model(trained_model.uri, tmp_path / "evil", name, edit=edit)


def _refused_quickly(cli: Any, *args: Any) -> str:
    """Run ``reprodl *args`` under a deadline; it must fail, and quickly. Returns its stderr."""
    start = time.monotonic()
    with deadline(QUICK_S + 30):
        result = cli(*args)
    assert result.exit_code != 0, result.output
    assert time.monotonic() - start < QUICK_S
    return " ".join(result.stderr.split())  # Rich wraps long messages


# --- 11. recorded integers that size resources ----------------------------------------------
def test_reproduce_refuses_num_workers_beyond_this_machine(trained_model, tmp_path, cli):
    def edit(raw: dict[str, Any]) -> None:
        raw["training"]["num_workers"] = 100_000
        raw["training"]["params"]["num_workers"] = 100_000

    uri = _edited(trained_model, tmp_path, edit)
    message = _refused_quickly(cli, "reproduce", uri)
    limit = trust.machine_limits().workers
    assert f"num_workers=100000 is not a number of DataLoader workers this machine starts (0 to {limit:,}" in message
    assert "training.num_workers" in message and uri in message


def test_reproduce_refuses_a_world_size_beyond_this_machine(trained_model, tmp_path, cli):
    def edit(raw: dict[str, Any]) -> None:
        raw["training"]["world_size"] = 100_000
        raw["training"]["distributed"] = {
            "backend": "gloo",
            "world_size": 100_000,
            "rank_seeds": [0, 1],
            "sampler": {"shuffle": True, "seed": 0, "drop_last": False},
        }

    uri = _edited(trained_model, tmp_path, edit)
    message = _refused_quickly(cli, "reproduce", uri)
    limit = trust.machine_limits().processes("gloo")
    assert f"world_size=100000 processes (gloo) is more than this machine starts (1 to {limit:,}" in message
    assert "training.distributed" in message


@pytest.mark.parametrize(
    "init_params, unit",
    [
        ({"input_channels": 1, "n_outputs": 10, "widths": [1, 1], "blocks_per_stage": 10**7}, "modules"),
        ({"input_channels": 1, "n_outputs": 10, "widths": [10**6, 10**6], "blocks_per_stage": 1}, "parameters"),
    ],
)
def test_reproduce_sizes_a_zoo_model_from_its_init_params_before_building_it(
    trained_model, tmp_path, cli, init_params, unit
):
    def edit(raw: dict[str, Any]) -> None:
        arch = raw["architecture"]
        arch.update(import_path="reprodl.zoo:SmallResNet", class_name="SmallResNet", init_params=init_params)

    uri = _edited(trained_model, tmp_path, edit)
    message = _refused_quickly(cli, "reproduce", uri)
    assert "make reprodl.zoo:SmallResNet build" in message and f"{unit}, more than reprodl builds" in message
    assert "'widths': [" in message  # the recorded field and its value
    limit = keys.MAX_MODULES if unit == "modules" else trust.machine_limits().parameters
    assert f"on this machine ({limit:,})" in message


def test_the_zoo_counts_its_size_exactly_as_built():
    import itertools

    from reprodl.zoo import GenNet, SmallResNet

    def built(model: Any) -> tuple[int, int]:
        return sum(p.numel() for p in model.parameters()), sum(1 for _ in model.modules())

    for kw in ({}, {"input_channels": 3, "input_dim": 9, "n_outputs": 4, "hidden_channels": 5}):
        assert GenNet.planned_size(**kw) == built(GenNet(**kw))
    for widths, blocks in itertools.product([[8], [8, 16], [4, 16, 8], [16, 16]], [0, 1, 3]):
        kw = {"input_channels": 3, "n_outputs": 5, "widths": widths, "blocks_per_stage": blocks}
        assert SmallResNet.planned_size(**kw) == built(SmallResNet(**kw)), kw


# --- 12. record strings in the terminal and in a model card ------------------------------------
HOSTILE_NAME = "evil\x1b[2J\x1b]0;pwned\x07\rfake\x08\x08name\x9b\u202e"


def test_provenance_prints_no_control_characters_from_a_record(trained_model, tmp_path, cli):
    def edit(raw: dict[str, Any]) -> None:
        raw["model_name"] = HOSTILE_NAME
        raw["data"][0]["name"] = "data\x1b[1A\x1b[2Kset"
        raw["training"]["params"]["note"] = "lr\r\x1b[31mred"

    uri = _edited(trained_model, tmp_path, edit)
    result = cli("provenance", uri)
    assert result.exit_code == 0, result.output
    for control in ("\x1b", "\r", "\x08", "\x07", "\x9b", "\u202e"):
        assert control not in result.output
    assert "Model name: evilfakename\n" in result.stdout  # the plain text is kept
    assert "Source dataset (train) name: dataset" in result.stdout


def test_errors_and_tables_from_a_record_carry_no_control_characters(trained_model, tmp_path, cli):
    uri = _edited(trained_model, tmp_path, lambda raw: raw["training"]["params"].update(note=HOSTILE_NAME))
    diff = cli("diff", trained_model.uri, uri)
    assert diff.exit_code == 0, diff.output
    assert "\x1b" not in diff.output and "evilfakename" in diff.stdout
    bad = _edited(trained_model, tmp_path, lambda raw: raw["architecture"].update(import_path="x\x1b[2J:Y"), "bad")
    result = cli("verify", bad)
    assert result.exit_code != 0 and "\x1b" not in result.output


SCRIPT_NAME = '<script>alert(1)</script> [click](javascript:alert(2)) <a href="javascript:alert(3)">x</a>'


def _card_html(path: Path) -> str:
    """The card's Markdown body rendered as HTML (raw HTML allowed, as a Markdown viewer may)."""
    markdown_it = pytest.importorskip("markdown_it")
    lines = path.read_text().splitlines()
    end = lines.index("---", 1)  # the front matter is YAML, not rendered
    yaml.safe_load("\n".join(lines[1:end]))
    return markdown_it.MarkdownIt("commonmark", {"html": True}).render("\n".join(lines[end + 1 :]))


def test_model_card_escapes_html_and_makes_javascript_links_inert(trained_model, tmp_path, cli):
    def edit(raw: dict[str, Any]) -> None:
        raw["model_name"] = SCRIPT_NAME
        raw["architecture"]["class_name"] = "Net<img src=x onerror=alert(4)>"
        raw["data"][0]["name"] = "[d](javascript:alert(5))"
        raw["training"]["params"]["note"] = "\n````\n</code></pre><script>alert(6)</script>\n````\n"

    uri = _edited(trained_model, tmp_path, edit)
    card = tmp_path / "README.md"
    result = cli("export", uri, "--format", "model-card", "-o", card)
    assert result.exit_code == 0, result.output
    html = _card_html(card)
    assert "<script" not in html and "<img" not in html and "<a " not in html
    assert not re.search(r"href\s*=\s*[\"']?\s*javascript:", html, re.IGNORECASE)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # shown as text
    assert "[click](javascript:alert(2))" in html


# --- 13. labels and data a cast would silently change -------------------------------------------
def _tensor_dataset(base: Path, name: str, data: np.ndarray, labels: np.ndarray) -> str:
    """A frozen TensorDataSet written item by item, as a foreign tool might (reprodl's creator refuses these)."""
    with store.create_dataset(str(base), name, readme="name: x\n") as writer:
        for arr, rel in ((data, keys.TENSOR_DATA_FILE), (labels, keys.TENSOR_LABELS_FILE)):
            with writer.item_file(rel) as path:
                np.save(path, arr, allow_pickle=False)
        writer.put_annotation(keys.INPUT_TYPE, keys.INPUT_TYPE_TENSOR)
    assert writer.uri is not None
    return writer.uri


def _hostile_data(base: Path, which: str) -> str:
    rng = np.random.default_rng(0)
    data = rng.random((16, 1, 8, 8)).astype(np.float32)
    labels = np.arange(16) % 2
    if which == "float-labels":
        return _tensor_dataset(base, "halves", data, np.where(labels == 1, 0.5, 0.0))
    return _tensor_dataset(base, "complex", data.astype(np.complex64) * (1 + 1j), labels.astype(np.int64))


REFUSAL = {
    "float-labels": r"the labels \(labels\.npy\) of the dataset .*halves must be whole numbers .* row 1 has 0\.5",
    "complex": r"the data \(data\.npy\) of the dataset .*complex has the complex dtype complex64",
}


@pytest.mark.parametrize("which", sorted(REFUSAL))
def test_reprodl_train_refuses_float_labels_and_complex_data(which, base_dir, tmp_path, cli):
    uri = _hostile_data(base_dir, which)
    config = {
        "name": "m",
        "output": str(tmp_path / "models"),
        "data": {"train": {"uri": uri}},
        "model": {"class": "GenNet", "init_params": {"input_channels": 1, "input_dim": 8, "n_outputs": 2}},
        "optimizer": {"class": "SGD"},
        "loss": {"class": "NLLLoss"},
        "params": {"batch_size": 4, "learning_rate": 0.05, "n_epochs": 1},
    }
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(config))
    result = cli("train", tmp_path / "train.yaml", "--quiet")
    assert result.exit_code != 0, result.output
    assert re.search(REFUSAL[which], " ".join(result.stderr.split())), result.stderr
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())


@pytest.mark.parametrize("which", sorted(REFUSAL))
def test_run_use_refuses_float_labels_and_complex_data(which, base_dir, tmp_path):
    import reprodl

    uri = _hostile_data(base_dir, which)
    (tmp_path / "models").mkdir()
    with pytest.raises(DatasetFormatError, match=REFUSAL[which]):
        with reprodl.start_run(str(tmp_path / "models"), "m") as run:
            run.use(uri)


def test_whole_number_float_labels_still_read(base_dir):
    from reprodl.data.datasets import TensorDataSet

    uri = _tensor_dataset(base_dir, "wholes", np.zeros((4, 1, 4, 4), np.float32), np.array([0.0, 1.0, 2.0, 1.0]))
    assert TensorDataSet(uri).labels.tolist() == [0, 1, 2, 1]


# --- 14. more secrets left out of the stored code ---------------------------------------------
@pytest.fixture
def repo(tmp_path: Path, digits_split_master: str) -> Path:
    """A git repository with a committed training config and an untracked helper.py."""
    root = tmp_path / "project"
    root.mkdir()
    _git(root, "init", "-q", "-b", "main")
    (tmp_path / "models").mkdir()
    (root / "train.yaml").write_text(yaml.safe_dump(digits_config(digits_split_master, tmp_path / "models")))
    _git(root, "add", "train.yaml")
    _git(root, "commit", "-q", "-m", "start")
    (root / "helper.py").write_text("SCALE = 2\n")
    return root


NEW_SECRETS = [".pgpass", ".npmrc", ".docker/config.json", ".htpasswd", "secrets.yaml", "token.json", "hf_token"]


def test_train_leaves_out_more_secret_files_and_the_record_names_them(repo, cli):
    for name in NEW_SECRETS:
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(SECRET + "\n")
    (repo / "tokenizer.py").write_text("VOCAB = 10\n")  # code, not a token
    result = cli("train", repo / "train.yaml", "--quiet", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert sorted(out["untracked_stored"]) == [PREFIX + "helper.py", PREFIX + "tokenizer.py"]
    skipped = out["untracked_skipped"]
    assert {name: skipped.get(name) for name in NEW_SECRETS} == dict.fromkeys(NEW_SECRETS, "secret")
    from reprodl.modeldataset.read import load_record

    git = load_record(out["uri"]).code.git
    assert set(NEW_SECRETS) <= set(git.untracked_skipped)
    for path in Path(store.local_path(out["uri"])).rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_the_source_snapshot_leaves_out_tracked_secret_files(repo, tmp_path):
    from reprodl.training.capture import capture_code
    from reprodl.training.snapshot import capture_snapshot

    (repo / ".docker").mkdir()
    (repo / ".docker" / "config.json").write_text(SECRET + "\n")
    (repo / ".pgpass").write_text(SECRET + "\n")
    _git(repo, "add", "-f", ".docker/config.json", ".pgpass")
    _git(repo, "commit", "-q", "-m", "oops")
    info, _, _ = capture_code(repo)
    work = tmp_path / "work"
    work.mkdir()
    snap, tar = capture_snapshot(info.git, work)
    assert snap is not None and tar is not None
    assert snap.excluded == [".docker/config.json", ".pgpass"]
    assert SECRET.encode() not in tar.read_bytes()
