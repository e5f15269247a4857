"""Dataset kinds only through the table (issue 19): a kind is its own class plus one line in
``reprodl.data.kinds.KINDS``.

A fourth kind defined here, registered by that one line and nothing else, is opened by its
declared kind, verified against its manifest, described with its UUID and manifest digest,
read from another copy and used by ``run.use`` as the built-in kinds are.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from reprodl import keys
from reprodl.data import kinds
from reprodl.data.datasets import WrappedDataSet
from reprodl.errors import DatasetFormatError, IntegrityError
from reprodl.store import StoredDataSet, create_dataset, local_path

LINES = {"one.txt": "a\nb\n", "two.txt": "c\n", "three.txt": "d\ne\nf\n"}


class LinesDataSet(WrappedDataSet):
    """Every line of every file, in relpath then line order: items are ``(relpath, line)``."""

    input_type = "LinesDataSet"

    def __init__(self, uri: str | os.PathLike[str] | StoredDataSet, usetype: str | None = None) -> None:
        super().__init__(uri, usetype)
        self.lines = [
            (rel, line)
            for rel, idn in sorted((self.dataset.relpath(i), i) for i in self.dataset.identifiers)
            for line in Path(self.dataset.item_path(idn)).read_text().splitlines()
        ]

    def reopened(self, uri: str) -> LinesDataSet:
        return LinesDataSet(uri, self.usetype)

    def __len__(self) -> int:
        return len(self.lines)

    def __getitem__(self, index: int) -> tuple[str, str]:
        return self.lines[index]

    def _selection_keys(self) -> Sequence[Any]:
        return [f"{rel}:{line}" for rel, line in self.lines]

    def _stored_labels(self) -> Sequence[Any]:
        return []

    def label_counts(self) -> dict[str, int]:
        return {}


@pytest.fixture
def lines_kind(monkeypatch: pytest.MonkeyPatch) -> kinds.Kind:
    kind = kinds.Kind("LinesDataSet", LinesDataSet, feeds_trainer=False)
    monkeypatch.setitem(kinds.KINDS, kind.name, kind)  # the one table line
    return kind


def _lines_dataset(base: Path, name: str = "lines") -> str:
    tree = base / f"{name}-files"
    tree.mkdir(parents=True)
    for rel, text in LINES.items():
        (tree / rel).write_text(text)
    with create_dataset(str(base), name, readme="name: lines\n") as writer:
        for rel in LINES:
            writer.put_item(tree / rel, rel)
        writer.put_annotation(keys.INPUT_TYPE, "LinesDataSet")
    assert writer.uri is not None
    return writer.uri


def test_a_kind_registered_by_one_table_line_is_opened_described_and_used(
    tmp_path: Path, lines_kind: kinds.Kind, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    import reprodl
    from reprodl.training.datarefs import describe_wrapped, opened

    uri = _lines_dataset(tmp_path)
    ds = kinds.open_kind(uri)
    assert isinstance(ds, LinesDataSet) and len(ds) == 6 and ds[0] == ("one.txt", "a")
    assert kinds.kind_of(ds) is lines_kind

    ref = describe_wrapped(ds, "train")
    assert (ref.input_type, ref.uuid, ref.n_items) == ("LinesDataSet", ds.uuid, 6)
    assert ref.manifest_digest == ds.dataset.manifest_digest() and ref.selection_digest == ds.selection_digest()

    copy = tmp_path / "copy"
    shutil.copytree(str(local_path(uri)), copy)
    moved = opened(ds, "train", {ds.uri: copy.as_uri()})
    assert isinstance(moved, LinesDataSet) and moved.uri != ds.uri and moved.lines == ds.lines

    monkeypatch.chdir(tmp_path)
    with reprodl.start_run(str(tmp_path / "models"), "lines", seed=0) as run:
        used = run.use(uri)
        assert isinstance(used, LinesDataSet) and list(used) == ds.lines
        with pytest.raises(DatasetFormatError, match=r"is a LinesDataSet.*in your own training script"):
            kinds.open_training_data(uri)  # feeds_trainer=False: the built-in trainer refuses it, saying why
        model = torch.nn.Linear(1, 1)
        run.watch(model, torch.optim.SGD(model.parameters(), lr=0.1))
        run.save(model)
    record = json.loads((tmp_path / "models" / "lines" / "data" / "provenance.json").read_text())
    (recorded,) = record["data"]
    assert (recorded["source"], recorded["input_type"], recorded["uuid"]) == ("dtool", "LinesDataSet", ds.uuid)
    assert recorded["manifest_digest"] == ds.dataset.manifest_digest() and recorded["path"] == "lines"


def test_a_registered_kind_is_verified_at_run_use(tmp_path: Path, lines_kind: kinds.Kind) -> None:
    import reprodl

    uri = _lines_dataset(tmp_path)
    ds = kinds.open_kind(uri)
    Path(ds.dataset.item_path(ds.dataset.identifiers[0])).write_text("changed\n")
    with pytest.raises(IntegrityError, match="do not match their manifests"):
        with reprodl.start_run(str(tmp_path / "models"), "changed", seed=0) as run:
            run.use(LinesDataSet(uri))


def test_without_its_table_line_the_kind_is_an_error_naming_the_kinds(tmp_path: Path) -> None:
    uri = _lines_dataset(tmp_path)
    for open_it in (kinds.open_kind, kinds.open_training_data):
        with pytest.raises(
            DatasetFormatError, match=r"'LinesDataSet'.*\['FileDataSet', 'ImageDataSet', 'TensorDataSet'\]"
        ):
            open_it(uri)


@pytest.mark.parametrize("declared", [["TensorDataSet"], {"a": 1}, 7])
def test_an_input_type_that_is_not_a_name_is_an_error_naming_the_kinds(digits_uri: str, declared: Any) -> None:
    """The annotation is anyone's JSON: a list or a mapping is refused as an unknown kind, never a TypeError."""
    annotation = Path(digits_uri) / ".dtool" / "annotations" / f"{keys.INPUT_TYPE}.json"
    annotation.write_text(json.dumps(declared))
    for open_it in (kinds.open_kind, kinds.open_training_data):
        with pytest.raises(DatasetFormatError, match=r"has input type .*the kinds there are"):
            open_it(digits_uri)
