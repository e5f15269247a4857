"""reprodl.catalog.check: which entries moved, vanished or changed at their URIs."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

pytest.register_assert_rewrite("train_fixtures")

from train_fixtures import flip_byte, item_file, path_of

from reprodl import keys
from reprodl.catalog import (
    Catalog,
    add,
    check,
)

pytest_plugins = ["train_fixtures", "remote_servers", "catalog_world"]


def test_check_says_which_moved_vanished_or_changed(world: dict[str, Any], tmp_path: Path) -> None:
    base = tmp_path / "models"
    for name in ("digits-model", "digits-ft", Path(world["repro"]).name):
        shutil.copytree(path_of(world["model"]).parent / name, base / name)
    with Catalog(tmp_path / "c.sqlite") as catalog:
        add(catalog, str(base))
        assert {r.status for r in check(catalog)} == {"ok"}
        (base / "digits-ft").rename(base / "digits-ft-moved")
        shutil.rmtree(base / Path(world["repro"]).name)
        flip_byte(item_file(str(base / "digits-model"), keys.PROVENANCE_FILE), offset=-40, keep_mtime=True)
        results = {r.name: r for r in check(catalog)}
        assert results["digits-ft"].status == "moved" and results["digits-ft"].new_uri.endswith("/digits-ft-moved")
        assert results[Path(world["repro"]).name].status == "vanished"
        assert results["digits-model"].status == "changed" and "record" in results["digits-model"].detail
        check(catalog, update=True)
        assert {r.name: r.status for r in check(catalog)} == {"digits-ft": "ok", "digits-model": "changed"}


def test_check_sees_another_manifest_at_the_uri(world: dict[str, Any], tmp_path: Path) -> None:
    from reprodl.store import create_dataset

    with create_dataset(str(tmp_path), "d") as writer:
        writer.put_bytes(b"one", "a.txt")
    with Catalog(tmp_path / "c.sqlite") as catalog:
        add(catalog, str(tmp_path / "d"))
        shutil.rmtree(tmp_path / "d")
        shutil.copytree(path_of(world["more"]), tmp_path / "d")
        (result,) = check(catalog)
    assert result.status == "changed" and "another dataset is there" in result.detail


@pytest.mark.slow
def test_a_copy_on_s3_is_the_same_entry_and_checks_ok(s3_bucket: Any, world: dict[str, Any], tmp_path: Path) -> None:
    from reprodl.store import copy_dataset

    s3_uri = copy_dataset(world["more"], s3_bucket.base_uri)
    with Catalog(tmp_path / "c.sqlite") as catalog:
        add(catalog, world["more"])
        report = add(catalog, s3_bucket.base_uri)  # a base URI: every dataset in the bucket
        assert report.new_entries == 0 and [i["uri"] for i in report.indexed] == [s3_uri]
        (entry,) = catalog.find("more-digits")
        assert entry.uris == sorted([world["more"], s3_uri])
        assert {r.uri: r.status for r in check(catalog)} == {world["more"]: "ok", s3_uri: "ok"}
