"""`reprodl dataset ...`: every command's output and exit code, and bad input reported on
stderr with exit code 2 and nothing created."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import TREE_COUNTS, gray_pixels, snapshot
from PIL import Image
from test_creators import png_bytes, write_idx

from reprodl import __version__
from reprodl.errors import ExitCode
from reprodl.store import local_path, open_dataset

BIN = Path(sys.executable).parent
COMMANDS = [
    "create-from-dirtree",
    "create-from-arrays",
    "create-from-idx",
    "create-digits",
    "split",
    "info",
    "stats",
    "verify",
]


def _ok(result) -> None:
    assert result.exit_code == 0, f"exit {result.exit_code}\nstdout: {result.stdout}\nstderr: {result.stderr}"


def _usage_error(result, match: str) -> None:
    """Exit code 2, the message on stderr, nothing on stdout."""
    assert result.exit_code == ExitCode.USAGE == 2, (result.exit_code, result.stdout, result.stderr)
    assert "Error:" in result.stderr
    assert match in result.stderr, result.stderr
    assert result.stdout == ""
    assert result.exception is None or isinstance(result.exception, SystemExit)


# --- help and version ----------------------------------------------------------------------


def test_version(cli):
    result = cli("--version")
    _ok(result)
    assert result.stdout.strip() == f"reprodl {__version__}"


@pytest.mark.parametrize("args", [[], ["dataset"], *(["dataset", c] for c in COMMANDS)])
def test_help_on_every_command(cli, args):
    result = cli(*args, "--help")
    _ok(result)
    assert "Usage:" in result.stdout
    if args[1:]:
        assert args[-1] in result.stdout


def test_short_help_option(cli):
    result = cli("dataset", "-h")
    _ok(result)
    for command in COMMANDS:
        assert command in result.stdout


# --- create-from-dirtree ---------------------------------------------------------------------


def test_create_from_dirtree(cli, image_tree, base_dir):
    result = cli(
        "dataset",
        "create-from-dirtree",
        image_tree,
        base_dir,
        "images",
        "-q",
        "--description",
        "insects",
        "--author",
        "Ada",
        "--author",
        "Bo",
        "--license",
        "CC0",
    )
    _ok(result)
    uri = open_dataset(base_dir / "images").uri
    assert result.stdout.strip() == f"Created image dataset at {uri}"
    ds = open_dataset(uri)
    assert len(ds) == sum(TREE_COUNTS.values())
    readme = ds.readme()
    assert (readme["description"], readme["authors"], readme["license"]) == ("insects", ["Ada", "Bo"], "CC0")


def test_create_from_dirtree_json(cli, image_tree, base_dir):
    result = cli("dataset", "create-from-dirtree", image_tree, base_dir, "images", "--json")
    _ok(result)
    assert json.loads(result.stdout) == {"uri": open_dataset(base_dir / "images").uri}


def test_create_from_dirtree_with_a_readme_file(cli, image_tree, base_dir, tmp_path):
    readme = tmp_path / "README.yml"
    readme.write_text("description: my insects\nauthors: [Me]\norigin: field trip\n")
    _ok(
        cli(
            "dataset",
            "create-from-dirtree",
            image_tree,
            base_dir,
            "images",
            "-q",
            "--readme",
            readme,
            "--license",
            "CC0",
        )
    )
    got = open_dataset(base_dir / "images").readme()
    assert (got["description"], got["authors"], got["origin"], got["license"]) == (
        "my insects",
        ["Me"],
        "field trip",
        "CC0",
    )


def test_console_script_create_image_dataset_from_dirtree(image_tree, base_dir):
    script = BIN / "create-image-dataset-from-dirtree"
    assert script.exists()
    proc = subprocess.run(
        [str(script), str(image_tree), str(base_dir), "images", "-q"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "Created image dataset at file://" in proc.stdout
    assert open_dataset(base_dir / "images").get_annotation("dtoolAI.inputtype") == "ImageDataSet"
    # bad input through the same script: exit 2, message on stderr, nothing created
    before = snapshot(base_dir)
    proc = subprocess.run(
        [str(script), str(image_tree / "missing"), str(base_dir), "other"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr
    assert proc.stdout == ""
    assert snapshot(base_dir) == before


def test_reprodl_console_script_runs(tmp_path):
    proc = subprocess.run([str(BIN / "reprodl"), "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"reprodl {__version__}"


# bad dirtree input --------------------------------------------------------------------------


def _dirtree_refused(cli, tree, base_dir, match, name="images", *extra):
    before = snapshot(base_dir)
    result = cli("dataset", "create-from-dirtree", tree, base_dir, name, *extra)
    _usage_error(result, match)
    assert snapshot(base_dir) == before


def test_cli_missing_directory(cli, tmp_path, base_dir):
    _dirtree_refused(cli, tmp_path / "nowhere", base_dir, "nowhere does not exist")


def test_cli_empty_category(cli, image_tree, base_dir):
    (image_tree / "dog").mkdir()
    _dirtree_refused(cli, image_tree, base_dir, "category 'dog'")


def test_cli_non_image_file(cli, image_tree, base_dir):
    (image_tree / "ant" / "notes.txt").write_text("hello")
    _dirtree_refused(cli, image_tree, base_dir, "notes.txt is not an image file")


def test_cli_corrupt_image(cli, image_tree, base_dir):
    data = png_bytes(np.random.default_rng(1).integers(0, 256, (64, 64), dtype=np.uint8))
    (image_tree / "ant" / "broken.png").write_bytes(data[: len(data) // 2])
    _dirtree_refused(cli, image_tree, base_dir, "broken.png: corrupt or truncated image")


def test_cli_image_bomb(cli, image_tree, base_dir, monkeypatch):
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(image_tree / "ant" / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    _dirtree_refused(cli, image_tree, base_dir, "bomb.png: image is too large")


@pytest.mark.parametrize("name", ["bad name", "bad[b]name", "bad[/b]name"])
def test_cli_name_not_allowed_is_quoted_verbatim(cli, image_tree, base_dir, name):
    _dirtree_refused(cli, image_tree, base_dir, f"dataset name {name!r} is not allowed by dtool", name)


def test_cli_existing_dataset(cli, image_tree, base_dir):
    _ok(cli("dataset", "create-from-dirtree", image_tree, base_dir, "images", "-q"))
    uuid = open_dataset(base_dir / "images").uuid
    _dirtree_refused(cli, image_tree, base_dir, "'images' already exists")
    assert open_dataset(base_dir / "images").uuid == uuid


def test_cli_bad_uri_scheme(cli, image_tree, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    _usage_error(
        cli("dataset", "create-from-dirtree", image_tree, "ftp://example.org/x", "images"),
        "unsupported URI scheme 'ftp'",
    )
    assert snapshot(tmp_path) == before


def test_cli_readme_that_does_not_validate(cli, image_tree, base_dir, tmp_path):
    readme = tmp_path / "README.yml"
    readme.write_text("usetype: banana\n")
    _dirtree_refused(cli, image_tree, base_dir, "does not validate: usetype", "images", "--readme", readme)


def test_cli_readme_failing_the_user_schema(cli, image_tree, base_dir, tmp_path):
    schema = tmp_path / "schema.json"
    schema.write_text('{"type": "object", "required": ["funding"]}')
    _dirtree_refused(cli, image_tree, base_dir, "'funding' is a required property", "images", "--schema", schema)


# --- create-from-arrays / create-from-idx / create-digits ------------------------------------


def test_create_from_arrays_npy(cli, tmp_path, base_dir):
    data = np.arange(4 * 12, dtype=np.uint8).reshape(4, 12)
    np.save(tmp_path / "x.npy", data)
    np.save(tmp_path / "y.npy", np.array([0, 1, 1, 0]))
    result = cli(
        "dataset",
        "create-from-arrays",
        tmp_path / "x.npy",
        tmp_path / "y.npy",
        base_dir,
        "arr",
        "--image-dimensions",
        "1,3,4",
        "--categories",
        "no,yes",
        "--json",
    )
    _ok(result)
    uri = json.loads(result.stdout)["uri"]
    ds = open_dataset(uri)
    assert ds.get_annotation("image_dimensions") == [1, 3, 4]
    assert ds.get_annotation("category_encoding") == {"no": 0, "yes": 1}
    assert ds.readme()["origin"] == str((tmp_path / "x.npy").resolve())
    from reprodl.data.datasets import TensorDataSet

    x, y = TensorDataSet(uri)[2]
    np.testing.assert_allclose(x.numpy(), data[2].reshape(1, 3, 4) / 255.0, atol=1e-6)
    assert y == 1


def test_create_from_arrays_npz_keys(cli, tmp_path, base_dir):
    data = np.linspace(0, 1, 10, dtype=np.float32).reshape(5, 2)
    np.savez(tmp_path / "all.npz", features=data, targets=np.array([0, 1, 2, 1, 0]))
    _ok(
        cli(
            "dataset",
            "create-from-arrays",
            f"{tmp_path / 'all.npz'}:features",
            f"{tmp_path / 'all.npz'}:targets",
            base_dir,
            "npz",
        )
    )
    ds = open_dataset(base_dir / "npz")
    assert np.array_equal(np.load(ds.item_path(ds.identifier_of("data.npy"))), data)
    assert ds.get_annotation("reprodl.value_scale") == 1.0


def test_create_from_arrays_length_mismatch(cli, tmp_path, base_dir):
    np.save(tmp_path / "x.npy", np.zeros((3, 4)))
    np.save(tmp_path / "y.npy", np.array([0, 1]))
    _usage_error(
        cli("dataset", "create-from-arrays", tmp_path / "x.npy", tmp_path / "y.npy", base_dir, "arr"),
        "labels/array length mismatch: 3 data rows but 2 labels",
    )
    assert snapshot(base_dir) == []


def test_create_from_arrays_bad_dimensions_and_missing_key(cli, tmp_path, base_dir):
    np.save(tmp_path / "x.npy", np.zeros((2, 4)))
    np.savez(tmp_path / "y.npz", labels=np.array([0, 1]))
    _usage_error(
        cli(
            "dataset",
            "create-from-arrays",
            tmp_path / "x.npy",
            f"{tmp_path / 'y.npz'}:labels",
            base_dir,
            "a",
            "--image-dimensions",
            "1,x",
        ),
        "--image-dimensions should be C,H,W integers",
    )
    _usage_error(
        cli("dataset", "create-from-arrays", tmp_path / "x.npy", f"{tmp_path / 'y.npz'}:nope", base_dir, "a"),
        "has no array 'nope'",
    )
    _usage_error(
        cli("dataset", "create-from-arrays", tmp_path / "absent.npy", tmp_path / "x.npy", base_dir, "a"),
        "absent.npy does not exist",
    )
    assert snapshot(base_dir) == []


@pytest.mark.parametrize("gz", [False, True])
def test_create_from_idx(cli, tmp_path, base_dir, gz):
    images = (np.arange(4 * 2 * 3) * 9 % 256).astype(np.uint8).reshape(4, 2, 3)
    suffix = ".gz" if gz else ""
    img = write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", images, gz=gz)
    lab = write_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", np.array([3, 1, 3, 0], np.uint8), gz=gz)
    _ok(cli("dataset", "create-from-idx", img, lab, base_dir, "idx"))
    ds = open_dataset(base_dir / "idx")
    assert ds.get_annotation("image_dimensions") == [1, 2, 3]
    assert ds.readme()["origin"] == str(img.resolve())
    assert np.load(ds.item_path(ds.identifier_of("labels.npy"))).tolist() == [3, 1, 3, 0]
    stored = np.load(ds.item_path(ds.identifier_of("data.npy")))
    assert np.array_equal(stored.reshape(4, 2, 3), images)


def test_create_from_idx_bad_file(cli, tmp_path, base_dir):
    (tmp_path / "junk").write_bytes(b"PK\x03\x04 not idx")
    lab = write_idx(tmp_path / "labels", np.array([0], np.uint8))
    _usage_error(
        cli("dataset", "create-from-idx", tmp_path / "junk", lab, base_dir, "idx"),
        "is not an IDX file (bad magic number)",
    )
    assert snapshot(base_dir) == []


def test_create_digits_info_and_stats(cli, base_dir):
    result = cli("dataset", "create-digits", base_dir, "--json")
    _ok(result)
    uri = json.loads(result.stdout)["uri"]
    assert local_path(uri) == base_dir / "digits"
    info = json.loads(cli("dataset", "info", uri, "--json").stdout)
    assert info["name"] == "digits"
    assert info["n_samples"] == 1797
    assert info["classes"] == [str(i) for i in range(10)]
    assert sum(info["class_counts"].values()) == 1797
    assert info["image_dimensions"] == [1, 8, 8]
    assert info["input_type"] == "TensorDataSet"
    ds = open_dataset(uri)
    data = np.load(ds.item_path(ds.identifier_of("data.npy")))
    assert data.dtype == np.uint8 and (int(data.min()), int(data.max())) == (0, 255)
    stats = json.loads(cli("dataset", "stats", uri, "--json").stdout)
    assert stats["n_samples"] == 1797
    assert stats["mean"] == [pytest.approx(float((data / 255.0).mean()), rel=1e-9)]
    assert stats["std"] == [pytest.approx(float((data / 255.0).std()), rel=1e-9)]
    assert stats["majority_class_fraction"] == pytest.approx(max(info["class_counts"].values()) / 1797)


def test_create_digits_existing_name(cli, digits_uri):
    base = Path(digits_uri).parent
    before = snapshot(base)
    _usage_error(cli("dataset", "create-digits", base, "digits"), "'digits' already exists")
    assert snapshot(base) == before


# --- split / info / stats ----------------------------------------------------------------


def test_split_json_and_refusal_to_overwrite(cli, digits_uri):
    result = cli("dataset", "split", digits_uri, "--test", "0.2", "--seed", "0", "--json")
    _ok(result)
    assert json.loads(result.stdout) == {"test": 359, "train": 1438}
    _usage_error(cli("dataset", "split", digits_uri, "--seed", "1"), "already has a split")
    result = cli("dataset", "split", digits_uri, "--test", "0.1", "--valid", "0.1", "--seed", "1", "--force")
    _ok(result)
    assert result.stdout.startswith("Split ")
    info = json.loads(cli("dataset", "info", digits_uri, "--json").stdout)
    assert sum(info["split_counts"].values()) == 1797
    assert set(info["split_counts"]) == {"train", "valid", "test"}
    assert info["split"]["seed"] == 1


def test_split_bad_fraction(cli, digits_uri):
    _usage_error(cli("dataset", "split", digits_uri, "--test", "1.5"), "but got test=1.5")


def test_info_text(cli, image_uri):
    result = cli("dataset", "info", image_uri)
    _ok(result)
    assert "name:             images" in result.stdout
    assert "per-class counts: ant: 3, bee: 2, cat: 4" in result.stdout
    assert "README:" in result.stdout


def test_info_of_a_missing_dataset_exits_not_found(cli, tmp_path):
    result = cli("dataset", "info", tmp_path / "nothing")
    assert result.exit_code == ExitCode.NOT_FOUND
    assert "does not exist" in result.stderr


def test_info_bad_scheme(cli):
    _usage_error(cli("dataset", "info", "ftp://host/x"), "unsupported URI scheme 'ftp'")


def test_stats_json_for_images(cli, image_uri):
    result = cli("dataset", "stats", image_uri, "--json")
    _ok(result)
    stats = json.loads(result.stdout)
    pixels = np.stack([gray_pixels(i) for i in range(9)]) / 255.0
    assert stats["n_samples"] == 9
    assert stats["mean"] == [pytest.approx(pixels.mean(), rel=1e-6)]  # pixels are read as float32
    assert stats["std"] == [pytest.approx(pixels.std(), rel=1e-6)]
    assert stats["class_counts"] == TREE_COUNTS
    assert stats["majority_class_fraction"] == pytest.approx(4 / 9)


def test_stats_text(cli, image_uri):
    result = cli("dataset", "stats", image_uri, "-q")
    _ok(result)
    assert "samples: 9" in result.stdout
    assert "classes: ant: 3 (33.3%), bee: 2 (22.2%), cat: 4 (44.4%)" in result.stdout


def test_category_names_with_brackets_print_verbatim(cli, make_tree, base_dir):
    tree = make_tree(
        {"[bold]x": {"0.png": Image.fromarray(gray_pixels(0))}, "[red]y": {"0.png": Image.fromarray(gray_pixels(1))}}
    )
    _ok(cli("dataset", "create-from-dirtree", tree, base_dir, "brackets", "-q"))
    result = cli("dataset", "info", base_dir / "brackets")
    _ok(result)
    assert "per-class counts: [bold]x: 1, [red]y: 1" in result.stdout


# --- verify ----------------------------------------------------------------------------


def test_verify_ok(cli, image_uri):
    result = cli("dataset", "verify", image_uri, "-q")
    _ok(result)
    assert result.stdout.startswith("OK: 9 items match the manifest")
    result = cli("dataset", "verify", image_uri, "--deep", "--json")
    _ok(result)
    report = json.loads(result.stdout)
    assert report["ok"] is True and report["deep"] is True and report["n_items"] == 9


def test_verify_names_the_altered_item_and_exits_1(cli, image_uri):
    item = local_path(image_uri) / "data" / "bee" / "1.png"
    data = bytearray(item.read_bytes())
    data[-20] ^= 0x01
    time.sleep(0.02)  # the edit comes after the freeze
    item.write_bytes(bytes(data))
    result = cli("dataset", "verify", image_uri, "-q")
    assert result.exit_code == ExitCode.FAILED == 1
    assert "content altered: bee/1.png" in result.stderr
    assert "FAILED: 1 problem(s)" in result.stderr
    result = cli("dataset", "verify", image_uri, "--json")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["altered"] == ["bee/1.png"]


def test_verify_names_missing_and_added_items(cli, image_uri):
    data_dir = local_path(image_uri) / "data"
    (data_dir / "cat" / "3.png").unlink()
    (data_dir / "cat" / "extra.png").write_bytes(b"x")
    result = cli("dataset", "verify", image_uri, "--deep", "-q")
    assert result.exit_code == 1
    assert "missing: cat/3.png" in result.stderr
    assert "added: cat/extra.png" in result.stderr
    assert "FAILED: 2 problem(s)" in result.stderr


def test_verify_deep_catches_an_edit_that_kept_the_mtime(cli, image_uri):
    item = local_path(image_uri) / "data" / "ant" / "0.png"
    st = item.stat()
    data = bytearray(item.read_bytes())
    data[-20] ^= 0x01
    item.write_bytes(bytes(data))
    os.utime(item, ns=(st.st_atime_ns, st.st_mtime_ns))
    result = cli("dataset", "verify", image_uri, "--deep", "-q")
    assert result.exit_code == 1
    assert "content altered: ant/0.png" in result.stderr


def test_verify_proto_dataset_is_refused(cli, tmp_path):
    import dtoolcore

    from reprodl.store import normalise_uri

    proto = dtoolcore.create_proto_dataset("unfinished", normalise_uri(str(tmp_path)))
    _usage_error(cli("dataset", "verify", proto.uri), "is a proto dataset")


def test_readme_yaml_of_created_dataset_is_valid(cli, image_uri):
    # `dtool` readers parse the README as YAML: it must be a mapping reprodl itself accepts
    from reprodl.data.readme import validate_readme

    text = open_dataset(image_uri).get_readme_content()
    assert isinstance(yaml.safe_load(text), dict)
    assert validate_readme(text).name == "images"


def test_ls_lists_datasets_and_models_under_a_base(cli, tmp_path):
    from reprodl.data.creators import create_digits

    create_digits(str(tmp_path), "digits")
    result = cli("dataset", "ls", str(tmp_path), "--json")
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [(r["name"], r["kind"], r["n_items"]) for r in rows] == [("digits", "TensorDataSet", 2)]
    text = cli("dataset", "ls", str(tmp_path))
    assert "digits" in text.stdout and "TensorDataSet" in text.stdout


def test_copy_keeps_uuid_and_manifest_and_refuses_to_overwrite(cli, tmp_path):
    from reprodl.data.creators import create_digits
    from reprodl.store import open_dataset

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    src = open_dataset(create_digits(str(tmp_path / "a"), "digits"))
    result = cli("dataset", "copy", src.uri, str(tmp_path / "b"), "--json")
    assert result.exit_code == 0, result.stderr
    copy = open_dataset(json.loads(result.stdout)["uri"])
    assert (copy.uuid, copy.manifest_digest()) == (src.uuid, src.manifest_digest())
    again = cli("dataset", "copy", src.uri, str(tmp_path / "b"))
    assert again.exit_code == 2 and "already exists" in again.stderr
