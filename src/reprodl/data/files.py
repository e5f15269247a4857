"""A dataset of files: any dtool dataset, its items handed to the user's code as local paths.

:class:`FileDataSet` reads any dtool dataset (text corpora, audio, tables, volumes): its items
are ``(relpath, local_path)`` pairs sorted by relpath, so the order is stable; what a file
means is the user's own ``Dataset``'s business. ``run.use`` verifies it by its manifest and
records it with its UUID, manifest digest and the digest of its selected relpaths, as it does
the other kinds. :func:`create_from_files` makes one from a directory. No torch is needed to
create one.

Example:
    >>> uri = create_from_files("corpus/", "/data", "corpus")              # doctest: +SKIP
    >>> files = FileDataSet(uri)                                           # doctest: +SKIP
    >>> relpath, path = files[0]                                           # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reprodl import keys
from reprodl.data.datasets import WrappedDataSet
from reprodl.data.readme import make_readme
from reprodl.errors import DatasetFormatError, InputDataError
from reprodl.store import Progress, StoredDataSet, check_name, create_dataset, current_user


class FileDataSet(WrappedDataSet):
    """Any dtool dataset as a map-style dataset of ``(relpath, local_path)``, sorted by relpath.

    Args:
        uri: the dataset's URI or path (or a :class:`~reprodl.store.StoredDataSet` already open).
        usetype: keep only the items whose ``usetype`` overlay has this value (train/test/...);
            a dataset with no such overlay is refused, since nothing says which items to keep.

    A remote item is fetched on first use and its local copy remembered. Wrap it in your own
    ``Dataset`` to turn each file into a sample.
    """

    input_type = keys.INPUT_TYPE_FILES
    reads_any_dataset = True

    def __init__(self, uri: str | os.PathLike[str] | StoredDataSet, usetype: str | None = None) -> None:
        super().__init__(uri, usetype)
        pairs = sorted((self.dataset.relpath(i), i) for i in self.dataset.identifiers)
        if usetype is not None:
            overlay = self.dataset.get_overlay(keys.USETYPE_OVERLAY)
            if overlay is None:
                raise DatasetFormatError(
                    f"usetype={usetype!r} selects by the 'usetype' overlay, but {self.uri} has none: "
                    "leave usetype out, or give the dataset a usetype overlay"
                )
            pairs = [(rel, idn) for rel, idn in pairs if overlay.get(idn) == usetype]
            if not pairs:
                values = sorted({str(v) for v in overlay.values()})
                raise DatasetFormatError(f"no items of usetype {usetype!r} in {self.uri}; it has {values}")
        self.relpaths: list[str] = [rel for rel, _ in pairs]
        self.identifiers: list[str] = [idn for _, idn in pairs]

    def reopened(self, uri: str) -> FileDataSet:
        """These files read from the copy at ``uri``: the same usetype."""
        return FileDataSet(uri, self.usetype)

    def __len__(self) -> int:
        return len(self.identifiers)

    def __getitem__(self, index: int) -> tuple[str, str]:
        if index < 0:
            index += len(self)
        return self.relpaths[index], self.dataset.item_path(self.identifiers[index])

    def _selection_keys(self) -> Sequence[Any]:
        return self.relpaths

    def _stored_labels(self) -> Sequence[Any]:
        return []

    def label_counts(self) -> dict[str, int]:
        return {}


def scan_files(root: str | os.PathLike[str]) -> list[Path]:
    """Every file under ``root``, sorted (hidden files and directories left out); refused when none."""
    root = Path(root)
    if not root.is_dir():
        what = "does not exist" if not root.exists() else "is not a directory"
        raise InputDataError(f"the directory of files {root} {what}: give the directory whose files become the items")
    try:
        files = sorted(
            p
            for p in root.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
        )
    except PermissionError as exc:
        raise InputDataError(f"cannot read the directory {exc.filename or root}: permission denied") from None
    if not files:
        raise InputDataError(f"the directory {root} has no files: put the files the dataset should hold under it")
    return files


def create_from_files(
    root: str | os.PathLike[str],
    base_uri: str,
    name: str,
    *,
    description: str | None = None,
    progress: Progress | None = None,
) -> str:
    """Create a dataset of every file under ``root``, each at its path relative to ``root``; returns its URI.

    The dataset is annotated as a :class:`FileDataSet` and frozen only when every file was stored.
    """
    check_name(name)
    files = scan_files(root)
    text = make_readme(
        name=name,
        description=description or f"{len(files)} files, created from {Path(root).name}",
        authors=[current_user()],
        origin=str(Path(root).resolve()),
    )
    with create_dataset(base_uri, name, readme=text) as writer:
        for path in files:
            writer.put_item(path, path.relative_to(root).as_posix())
            if progress:
                progress(1)
        writer.put_annotation(keys.INPUT_TYPE, keys.INPUT_TYPE_FILES)
    assert writer.uri is not None
    return writer.uri
