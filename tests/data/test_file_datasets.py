"""A dataset of files (issue 19): ``reprodl dataset create-from-files`` and ``reprodl.FileDataSet``.

Any dtool dataset read as ``(relpath, local_path)`` items sorted by relpath; ``run.use`` verifies it
by its manifest and records it with its UUID and manifest digest; a record of one is refused by the
built-in trainer's rebuild, and a record of a kind reprodl does not know is refused naming the kinds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from user_scripts import run_script, user_repo

FILES = {
    "a/one.txt": "apple apple",
    "a/deep/two.txt": "avocado and apricot",
    "b/three.txt": "banana",
    "b/four.txt": "blueberry bread",
    "top.txt": "a fruit salad",
}

SCRIPT = """\
import torch

import reprodl

run = reprodl.start_run("models", "files", seed=1)
files = run.use(reprodl.FileDataSet("data/corpus"))


def features(items):
    texts = [open(path, encoding="utf-8").read() for _, path in items]
    x = torch.tensor([[len(t), t.count("a"), t.count(" ")] for t in texts], dtype=torch.float32)
    y = torch.tensor([0 if rel.startswith("a/") else 1 for rel, _ in items])
    return x, y


model = torch.nn.Linear(3, 2)
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
run.watch(model, optimizer, loss=torch.nn.CrossEntropyLoss())
loader = run.loader(files, batch_size=2, shuffle=True, collate_fn=features)
for epoch in range(1, 3):
    for x, y in loader:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
    run.log(epoch=epoch, train_loss=loss)
run.save(model)
run.finish()
"""


def _tree(root: Path) -> Path:
    for rel, text in FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    return root


def _create(cli: Any, tree: Path, base: Path, name: str = "corpus") -> str:
    base.mkdir(parents=True, exist_ok=True)
    result = cli("dataset", "create-from-files", tree, base, name, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["uri"]


def test_create_from_files_keeps_relative_paths_and_the_dataset_yields_them_sorted(tmp_path: Path, cli: Any) -> None:
    from reprodl import FileDataSet

    uri = _create(cli, _tree(tmp_path / "tree"), tmp_path / "data")
    files = FileDataSet(uri)
    assert len(files) == len(FILES)
    assert [rel for rel, _ in files] == sorted(FILES)
    for rel, path in files:
        assert Path(path).read_text(encoding="utf-8") == FILES[rel]
    assert files[-1][0] == "top.txt"
    info = files.provenance_info()
    assert info["input_type"] == "FileDataSet" and info["uuid"] == files.uuid and info["n_items"] == 5


def test_create_from_files_refuses_a_missing_or_empty_directory(tmp_path: Path, cli: Any) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    for given, why in ((tmp_path / "nowhere", "does not exist"), (tmp_path / "empty", "has no files")):
        result = cli("dataset", "create-from-files", given, tmp_path, "x")
        assert result.exit_code != 0
        assert why in result.output and str(given) in result.output
        assert not (tmp_path / "x").exists()


def test_a_script_training_on_a_file_dataset_records_it_verified_and_verify_passes(tmp_path: Path, cli: Any) -> None:
    repo = user_repo(tmp_path / "proj", {"train.py": SCRIPT}, commit_message="train", gitignore="data/\nmodels/\n")
    uri = _create(cli, _tree(tmp_path / "tree"), repo / "data")
    result = run_script(repo, "train.py")
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((repo / "models" / "files" / "data" / "provenance.json").read_text())
    from reprodl import FileDataSet

    files = FileDataSet(uri)
    (ref,) = record["data"]
    assert (ref["source"], ref["input_type"], ref["uuid"]) == ("dtool", "FileDataSet", files.uuid)
    assert ref["manifest_digest"] == files.dataset.manifest_digest() and ref["path"] == "data/corpus"
    assert ref["selection_digest"] == files.selection_digest()
    checked = cli("verify", repo / "models" / "files", "--data", "--allow", "torch.nn.modules.linear")
    assert checked.exit_code == 0, checked.output
    assert "All checks passed" in checked.output


def test_a_changed_file_is_refused_by_name_at_run_use(tmp_path: Path, cli: Any) -> None:
    import reprodl
    from reprodl.errors import IntegrityError

    uri = _create(cli, _tree(tmp_path / "tree"), tmp_path / "data")
    files = reprodl.FileDataSet(uri)
    path = dict(iter(files))["b/three.txt"]
    Path(path).write_text("cherry", encoding="utf-8")
    with pytest.raises(IntegrityError, match="b/three.txt"):
        with reprodl.start_run(str(tmp_path / "models"), "changed", seed=0) as run:
            run.use(reprodl.FileDataSet(uri))
    assert not (tmp_path / "models" / "changed").exists()


def test_rebuilding_refuses_a_file_dataset_and_an_unknown_kind_naming_the_kinds(tmp_path: Path, cli: Any) -> None:
    import reprodl
    from reprodl.errors import ReproductionError
    from reprodl.reproduction.rebuild import open_recorded
    from reprodl.training.datarefs import describe_wrapped

    uri = _create(cli, _tree(tmp_path / "tree"), tmp_path / "data")
    ref = describe_wrapped(reprodl.FileDataSet(uri), "train")
    with pytest.raises(ReproductionError, match="built-in trainer"):
        open_recorded(ref)
    unknown = ref.model_copy(update={"input_type": "AudioDataSet"})
    with pytest.raises(ReproductionError, match=r"'AudioDataSet'.*\['FileDataSet', 'ImageDataSet', 'TensorDataSet'\]"):
        open_recorded(unknown)
    assert len(reprodl.FileDataSet(uri)) == 5  # the kinds' table reads the dataset as itself


def test_the_built_in_trainer_refuses_a_file_dataset_saying_how_to_read_it(tmp_path: Path, cli: Any) -> None:
    from reprodl.data.kinds import open_training_data
    from reprodl.errors import DatasetFormatError

    uri = _create(cli, _tree(tmp_path / "tree"), tmp_path / "data")
    with pytest.raises(DatasetFormatError, match=r"is a FileDataSet.*reprodl\.FileDataSet in your own training script"):
        open_training_data(uri)


def test_a_usetype_without_a_usetype_overlay_is_refused(tmp_path: Path, cli: Any) -> None:
    from reprodl import FileDataSet
    from reprodl.errors import DatasetFormatError

    uri = _create(cli, _tree(tmp_path / "tree"), tmp_path / "data")
    with pytest.raises(DatasetFormatError, match="usetype='train'.*has none"):
        FileDataSet(uri, usetype="train")
