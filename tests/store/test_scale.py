"""Many items: the manifest held compactly and indexed in the cache, reads with no per-item
manifest work, verification that streams. (Timings at 10^6 items: bench/bench_million.py.)"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reprodl.data.creators import create_from_dirtree
from reprodl.data.datasets import ImageDataSet
from reprodl.store import _items as store_items
from reprodl.store import dataset as store_dataset
from reprodl.store import manifest as manifest_module
from reprodl.store import open_dataset
from reprodl.store.fetch import bounded_map
from reprodl.store.manifest import INDEX_DIR, ItemTable

CATEGORIES = ("a", "b")


def grow(base: Path, name: str, n: int, *, link: bool) -> Path:
    """An ImageDataSet of two 4x4 PNGs grown to ``n`` items listed in its manifest and
    category overlay; with ``link`` every item is a hard link to its category's PNG (else
    only the manifest lists them: enough to open the dataset)."""
    tree = base / f"{name}-tree"
    for k, c in enumerate(CATEGORIES):
        (tree / c).mkdir(parents=True)
        Image.fromarray(np.full((4, 4), 60 * k, dtype=np.uint8)).save(tree / c / "0.png")
    create_from_dirtree(tree, str(base), name)
    root = base / name
    items, categories = {}, {}
    for j in range(n):
        c = CATEGORIES[j % 2]
        rel, src = f"{c}/{j}.png", root / "data" / c / "0.png"
        if link and j >= 2:
            os.link(src, root / "data" / rel)
        idn = hashlib.sha1(rel.encode()).hexdigest()
        st = src.stat()
        items[idn] = {"relpath": rel, "size_in_bytes": st.st_size, "hash": _md5(src), "utc_timestamp": st.st_mtime}
        categories[idn] = c
    manifest = root / ".dtool" / "manifest.json"
    doc = json.loads(manifest.read_text())
    doc["items"] = items
    manifest.write_text(json.dumps(doc, indent=2, sort_keys=True))
    (root / ".dtool" / "overlays" / "category.json").write_text(json.dumps(categories))
    return root


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh cache; manifests of 1 MiB and more (5,000 items here) get an index."""
    path = tmp_path / "cache"
    monkeypatch.setenv("DTOOL_CACHE_DIRECTORY", str(path))
    monkeypatch.setattr(manifest_module, "INDEX_MIN_BYTES", 1 << 20)
    return path


def test_a_large_manifest_is_indexed_once_and_reopened_from_the_index(tmp_path, cache, monkeypatch):
    root = grow(tmp_path, "big", 10_000, link=False)
    assert (root / ".dtool" / "manifest.json").stat().st_size >= manifest_module.INDEX_MIN_BYTES
    first = open_dataset(root)
    assert len(list((cache / INDEX_DIR).iterdir())) == 1

    def no_json(*args, **kwargs):
        raise AssertionError("the manifest was parsed again")

    with monkeypatch.context() as m:
        m.setattr(ItemTable, "from_items", no_json)
        again = open_dataset(root)
    assert len(again) == 10_000
    assert again.identifiers == first.identifiers
    assert again.manifest_digest() == first.manifest_digest()
    idn = first.identifiers[123]
    assert again.item_properties(idn) == first.item_properties(idn)
    assert again.item_path(idn) == first.item_path(idn)


def test_an_edited_manifest_is_read_again_not_taken_from_a_stale_index(tmp_path, cache):
    root = grow(tmp_path, "big", 10_000, link=False)
    before = open_dataset(root).manifest_digest()
    manifest = root / ".dtool" / "manifest.json"
    doc = json.loads(manifest.read_text())
    doc["items"].popitem()
    manifest.write_text(json.dumps(doc, indent=2, sort_keys=True))
    after = open_dataset(root)
    assert len(after) == 9_999 and after.manifest_digest() != before


def test_the_compact_table_gives_the_digest_the_manifest_dict_gives(tmp_path, cache):
    root = grow(tmp_path, "small", 300, link=False)
    ds = open_dataset(root)
    assert isinstance(ds._items, ItemTable)
    items = json.loads((root / ".dtool" / "manifest.json").read_text())["items"]
    ds._items, ds._manifest_digest = items, None  # the plain-dict path computes it afresh
    ds._identifiers = None
    table_digest = open_dataset(root).manifest_digest()
    assert ds.manifest_digest() == table_digest
    assert ds.identifiers == open_dataset(root).identifiers


def test_image_dataset_reads_without_per_item_manifest_work(tmp_path, cache, monkeypatch):
    images = ImageDataSet(grow(tmp_path, "linked", 20_000, link=True))
    assert len(images) == 20_000

    def walked(*args, **kwargs):
        raise AssertionError("the manifest was walked (or re-read) for one read")

    # After opening, a read may look one item up, never walk or re-read the manifest.
    monkeypatch.setattr(ItemTable, "__iter__", walked)
    monkeypatch.setattr(store_dataset, "_read_items", walked)
    monkeypatch.setattr(type(images.dataset), "identifiers", property(walked))
    x, y = images[19_999]
    assert x.shape == (1, 4, 4) and y == 1  # relpath order: the last is b/9999.png
    picks = [0, 7, 19_998]
    batch = images.__getitems__(picks)
    categories = [images.dataset.relpath(images.identifiers[i]).split("/")[0] for i in picks]
    assert batch.labels.tolist() == [CATEGORIES.index(c) for c in categories]


def test_parallel_work_keeps_a_bounded_number_of_calls_in_flight():
    taken, done = [0], [0]

    def items():
        for i in range(100_000):
            taken[0] += 1
            assert taken[0] - done[0] <= 4 * 2 + 1, "bounded_map ran ahead of its results"
            yield i

    for i, result in enumerate(bounded_map(lambda v: v * 2, items(), workers=2)):
        assert result == 2 * i
        done[0] += 1
    assert done[0] == 100_000


def test_the_all_at_once_safety_check_passes_only_clean_manifests():
    clean = {f"{k:040x}": {"relpath": f"c{k % 3}/{k}.png"} for k in range(1000)}
    assert store_items._all_safe(clean)
    for bad in ("../x.png", "/etc/passwd", "a/../b", "", "a\\b", "a\0b", "a\nb", ".."):
        assert not store_items._all_safe({**clean, "f" * 40: {"relpath": bad}}), bad
    for bad_id in ("..", ".", "a/b", ""):
        assert not store_items._all_safe({**clean, bad_id: {"relpath": "ok.png"}}), bad_id
