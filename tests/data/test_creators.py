"""Creators: dirtree, arrays, IDX and digits; every bad input is refused, naming the
problem, and leaves nothing behind."""

from __future__ import annotations

import gzip
import io
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import TREE_COUNTS, gray_pixels, snapshot
from PIL import Image

from reprodl import keys
from reprodl.data.creators import (
    category_encoding,
    create_digits,
    create_from_arrays,
    create_from_dirtree,
    create_from_idx,
    load_array_file,
    read_idx,
    scan_dirtree,
)
from reprodl.errors import DatasetExistsError, InputDataError, InvalidNameError, InvalidURIError, MetadataError
from reprodl.store import open_dataset


def png_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def write_idx(path: Path, array: np.ndarray, *, gz: bool = False) -> Path:
    """An IDX file as MNIST ships them: magic 0x0000, type code, ndim, big-endian dims, data."""
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int16): 0x0B, np.dtype(np.float32): 0x0D}
    code = codes[array.dtype]
    header = struct.pack(">HBB", 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


# --- create_from_dirtree -------------------------------------------------------------------


def test_dirtree_dataset_items_labels_and_annotations(image_tree, base_dir):
    uri = create_from_dirtree(image_tree, str(base_dir), "images")
    ds = open_dataset(uri)
    assert ds.name == "images"
    relpaths = [ds.relpath(i) for i in ds.identifiers]
    assert relpaths == [f"{c}/{i}.png" for c, n in TREE_COUNTS.items() for i in range(n)]
    categories = ds.get_overlay(keys.CATEGORY_OVERLAY)
    assert {ds.relpath(i): categories[i] for i in ds.identifiers} == {r: r.split("/")[0] for r in relpaths}
    assert ds.get_annotation(keys.INPUT_TYPE) == "ImageDataSet"
    assert ds.get_annotation(keys.CATEGORY_ENCODING) == {"ant": 0, "bee": 1, "cat": 2}
    assert ds.get_annotation(keys.IMAGE_MODE) == "L"
    assert ds.get_annotation(keys.IMAGE_DIMENSIONS) == [1, 5, 6]
    for idn in ds.identifiers:  # items are byte-for-byte the source files
        assert Path(ds.item_path(idn)).read_bytes() == (image_tree / ds.relpath(idn)).read_bytes()
    readme = ds.readme()
    assert readme["name"] == "images"
    assert readme["origin"] == str(image_tree.resolve())
    assert readme["description"] == "Images in 3 categories, created from tree"
    assert ds.verify(deep=True).ok


def test_dirtree_keeps_nested_paths_and_skips_hidden_files(make_tree, base_dir):
    tree = make_tree({"a": {"x.png": Image.fromarray(gray_pixels(0))}, "b": {"y.png": Image.fromarray(gray_pixels(1))}})
    (tree / "a" / "deeper").mkdir()
    Image.fromarray(gray_pixels(2)).save(tree / "a" / "deeper" / "z.png")
    (tree / "a" / ".DS_Store").write_bytes(b"junk")
    (tree / ".hidden").mkdir()
    ds = open_dataset(create_from_dirtree(tree, str(base_dir), "nested"))
    assert sorted(ds.relpath(i) for i in ds.identifiers) == ["a/deeper/z.png", "a/x.png", "b/y.png"]
    overlay = ds.get_overlay("category")
    assert overlay[ds.identifier_of("a/deeper/z.png")] == "a"


def test_dirtree_readme_fields_and_progress(image_tree, base_dir):
    steps: list[int] = []
    uri = create_from_dirtree(
        image_tree,
        str(base_dir),
        "images",
        progress=steps.append,
        readme={"description": "insects", "authors": ["Ada", "Bo"], "license": "CC0"},
    )
    readme = open_dataset(uri).readme()
    assert (readme["description"], readme["authors"], readme["license"]) == ("insects", ["Ada", "Bo"], "CC0")
    assert sum(steps) == 2 * sum(TREE_COUNTS.values())  # checked, then stored


def test_dirtree_readme_file_fields_are_kept(image_tree, base_dir, tmp_path):
    path = tmp_path / "README.yml"
    path.write_text(
        yaml.safe_dump({"description": "my insects", "authors": ["Me"], "origin": "field trip", "funding": "EPSRC"})
    )
    uri = create_from_dirtree(image_tree, str(base_dir), "images", readme={"readme_file": path, "license": "CC0"})
    readme = open_dataset(uri).readme()
    assert readme["description"] == "my insects"
    assert readme["authors"] == ["Me"]
    assert readme["origin"] == "field trip"
    assert readme["funding"] == "EPSRC"
    assert readme["license"] == "CC0"


def test_dirtree_colour_images_are_recorded_as_rgb(make_tree, base_dir):
    rgb = np.zeros((2, 3, 3), np.uint8)
    tree = make_tree({"a": {"c.png": Image.fromarray(rgb)}, "b": {"g.png": Image.fromarray(gray_pixels(0, (3, 2)))}})
    ds = open_dataset(create_from_dirtree(tree, str(base_dir), "colour"))
    assert ds.get_annotation(keys.IMAGE_MODE) == "RGB"
    assert ds.get_annotation(keys.IMAGE_DIMENSIONS) == [3, 2, 3]


def test_category_encoding_sorts_digit_names_numerically():
    assert category_encoding(["b", "10", "a", "2", "b"]) == {"2": 0, "10": 1, "a": 2, "b": 3}


# bad dirtree inputs: each names the problem and creates nothing --------------------------


def _refused(base_dir: Path, exc: type[Exception], match: str, *args, **kwargs) -> None:
    before = snapshot(base_dir)
    with pytest.raises(exc, match=match):
        create_from_dirtree(*args, str(base_dir), kwargs.pop("name", "images"), **kwargs)
    assert snapshot(base_dir) == before


def test_missing_directory_is_refused(tmp_path, base_dir):
    _refused(base_dir, InputDataError, "image directory .*nowhere does not exist", tmp_path / "nowhere")


def test_file_instead_of_directory_is_refused(tmp_path, base_dir):
    (tmp_path / "file.png").write_bytes(b"x")
    _refused(base_dir, InputDataError, "is not a directory", tmp_path / "file.png")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads directories whatever their mode")
def test_unreadable_directory_is_refused_chmod(image_tree, base_dir):
    os.chmod(image_tree, 0)
    try:
        _refused(base_dir, InputDataError, "cannot read the directory .*permission denied", image_tree)
    finally:
        os.chmod(image_tree, 0o755)


@pytest.mark.parametrize("where", ["root", "category"])
def test_unreadable_directory_is_refused(image_tree, base_dir, monkeypatch, where):
    """As root chmod 000 does not stop reads, so the OS's refusal is simulated."""
    target = image_tree if where == "root" else image_tree / "bee"
    method = "iterdir" if where == "root" else "rglob"
    original = getattr(Path, method)

    def refuse(self, *args, **kwargs):
        if self == target:
            raise PermissionError(13, "Permission denied", str(self))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Path, method, refuse)
    _refused(base_dir, InputDataError, f"cannot read the directory {target}: permission denied", image_tree)


def test_empty_category_is_refused(image_tree, base_dir):
    (image_tree / "dog").mkdir()
    _refused(base_dir, InputDataError, "category 'dog' .* has no images; remove it or add images", image_tree)


def test_tree_without_categories_is_refused(tmp_path, base_dir):
    (tmp_path / "empty").mkdir()
    _refused(base_dir, InputDataError, "has no category subdirectories", tmp_path / "empty")


def test_stray_file_at_the_top_is_refused(image_tree, base_dir):
    Image.fromarray(gray_pixels(0)).save(image_tree / "loose.png")
    _refused(base_dir, InputDataError, r"files outside category subdirectories: \['loose.png'\]", image_tree)


def test_non_image_file_is_refused(image_tree, base_dir):
    (image_tree / "bee" / "notes.txt").write_text("remember the milk")
    _refused(base_dir, InputDataError, r"notes.txt is not an image file \(suffix '.txt'\)", image_tree)


def test_text_with_an_image_suffix_is_refused(image_tree, base_dir):
    (image_tree / "bee" / "fake.png").write_text("not really a png")
    _refused(base_dir, InputDataError, "fake.png: not an image Pillow can read", image_tree)


def test_truncated_image_is_refused(image_tree, base_dir):
    data = png_bytes(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8))
    (image_tree / "cat" / "broken.png").write_bytes(data[: len(data) // 2])
    _refused(base_dir, InputDataError, "broken.png: corrupt or truncated image", image_tree)


@pytest.mark.parametrize("side", [12, 20])  # 144 px: Pillow warns; 400 px > 2x limit: Pillow errors
def test_image_bomb_is_refused(image_tree, base_dir, monkeypatch, side):
    Image.fromarray(np.zeros((side, side), np.uint8)).save(image_tree / "cat" / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    _refused(base_dir, InputDataError, r"bomb.png: image is too large .*limit is 100 pixels", image_tree)


@pytest.mark.parametrize("name", ["has space", "a/b", "x" * 81])
def test_name_dtool_does_not_allow_is_refused(image_tree, base_dir, name):
    _refused(base_dir, InvalidNameError, "is not allowed by dtool", image_tree, name=name)


def test_existing_dataset_of_the_same_name_is_refused(image_tree, base_dir):
    uri = create_from_dirtree(image_tree, str(base_dir), "images")
    digest = open_dataset(uri).manifest_digest()
    Image.fromarray(gray_pixels(99)).save(image_tree / "cat" / "new.png")
    _refused(base_dir, DatasetExistsError, "'images' already exists", image_tree)
    assert open_dataset(uri).manifest_digest() == digest


def test_bad_uri_scheme_is_refused(image_tree, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(InvalidURIError, match="unsupported URI scheme 'ftp'"):
        create_from_dirtree(image_tree, "ftp://example.org/data", "images")
    assert snapshot(tmp_path) == before


def test_readme_that_does_not_validate_is_refused(image_tree, base_dir):
    _refused(base_dir, MetadataError, "does not validate: usetype", image_tree, readme={"usetype": "banana"})


def test_readme_failing_the_user_schema_is_refused(image_tree, base_dir, tmp_path):
    schema = tmp_path / "schema.json"
    schema.write_text('{"type": "object", "required": ["funding"]}')
    _refused(
        base_dir,
        MetadataError,
        "user schema: .*'funding' is a required property",
        image_tree,
        readme={"schema": schema},
    )


# --- create_from_arrays --------------------------------------------------------------------


def test_arrays_dataset_items_and_annotations(base_dir):
    data = np.arange(4 * 2 * 3, dtype=np.int16).reshape(4, 2, 3)
    labels = np.array([1, 0, 1, 2])
    uri = create_from_arrays(
        data, labels, str(base_dir), "arr", categories=["x", "y", "z"], usetype=["train", "train", "test", "train"]
    )
    ds = open_dataset(uri)
    assert sorted(ds.relpath(i) for i in ds.identifiers) == ["data.npy", "labels.npy"]
    stored = np.load(ds.item_path(ds.identifier_of("data.npy")))
    assert stored.dtype == np.int16 and np.array_equal(stored, data)
    assert np.load(ds.item_path(ds.identifier_of("labels.npy"))).tolist() == [1, 0, 1, 2]
    assert ds.get_annotation(keys.INPUT_TYPE) == "TensorDataSet"
    assert ds.get_annotation(keys.IMAGE_DIMENSIONS) == [1, 2, 3]
    assert ds.get_annotation(keys.CATEGORY_ENCODING) == {"x": 0, "y": 1, "z": 2}
    assert ds.get_annotation(keys.TENSOR_DTYPE) == "int16"
    assert ds.get_annotation(keys.TENSOR_SHAPE) == [4, 2, 3]
    assert ds.get_annotation(keys.VALUE_SCALE) == 1.0
    assert ds.get_annotation(keys.TENSOR_USETYPE) == ["train", "train", "test", "train"]
    assert ds.get_annotation(keys.TENSOR_FILE_IDN) == ds.identifier_of("data.npy")


def test_integral_float_labels_are_accepted(base_dir):
    uri = create_from_arrays(np.zeros((3, 2), np.float32), np.array([0.0, 1.0, 1.0]), str(base_dir), "f")
    ds = open_dataset(uri)
    labels = np.load(ds.item_path(ds.identifier_of("labels.npy")))
    assert labels.dtype == np.int64 and labels.tolist() == [0, 1, 1]


@pytest.mark.parametrize(
    ("data", "labels", "kwargs", "match"),
    [
        (np.zeros((3, 4)), np.array([0, 1]), {}, "labels/array length mismatch: 3 data rows but 2 labels"),
        (np.zeros(3), np.array([0, 1, 2]), {}, r"data must have shape \(N, ...\)"),
        (np.zeros((2, 2)), np.array([[0, 1], [1, 0]]), {}, "labels must be one-dimensional"),
        (
            np.zeros((2, 2)),
            np.array([0.5, 1.0]),
            {},
            r"labels must be whole numbers \(class indices 0\.\.K-1\), but row 0 has 0\.5",
        ),
        (np.zeros((2, 2)), np.array([0, -1]), {}, r"labels must be >= 0 \(class indices 0\.\.K-1\), but row 1 has -1"),
        (np.zeros((2, 2)), np.array([0, 2]), {"categories": ["a", "b"]}, "2 category names for labels up to 2"),
        (
            np.zeros((2, 6)),
            np.array([0, 1]),
            {"image_dimensions": [1, 2, 2]},
            r"image_dimensions \[1, 2, 2\] do not fit",
        ),
        (np.zeros((2, 2)), np.array([0, 1]), {"usetype": ["train"]}, "usetype has 1 entries for 2 rows"),
        (np.array([[{}], [{}]], dtype=object), np.array([0, 1]), {}, "object arrays cannot be stored"),
    ],
)
def test_bad_arrays_are_refused_and_nothing_is_created(base_dir, data, labels, kwargs, match):
    with pytest.raises(InputDataError, match=match):
        create_from_arrays(data, labels, str(base_dir), "bad", **kwargs)
    assert snapshot(base_dir) == []


def test_empty_readme_values_fall_back_to_the_defaults(base_dir):
    uri = create_from_arrays(
        np.zeros((2, 2)), np.array([0, 1]), str(base_dir), "ok", readme={"authors": [], "description": ""}
    )
    readme = open_dataset(uri).readme()
    assert readme["description"] == "2 samples of shape [2]"
    assert len(readme["authors"]) == 1 and readme["authors"][0]


def test_arrays_with_an_invalid_readme_are_refused(base_dir):
    with pytest.raises(MetadataError, match="license"):
        create_from_arrays(np.zeros((2, 2)), np.array([0, 1]), str(base_dir), "bad", readme={"license": 5})
    assert snapshot(base_dir) == []


def test_arrays_with_a_bad_name_are_refused(base_dir):
    with pytest.raises(InvalidNameError, match="'bad name'"):
        create_from_arrays(np.zeros((2, 2)), np.array([0, 1]), str(base_dir), "bad name")
    assert snapshot(base_dir) == []


# --- array files -----------------------------------------------------------------------------


def test_load_array_file_reads_npy_and_npz(tmp_path):
    a, b = np.arange(6).reshape(2, 3), np.array([1, 0])
    np.save(tmp_path / "a.npy", a)
    np.savez(tmp_path / "two.npz", x=a, y=b)
    np.savez(tmp_path / "one.npz", only=b)
    assert np.array_equal(load_array_file(tmp_path / "a.npy"), a)
    assert np.array_equal(load_array_file(tmp_path / "two.npz", "y"), b)
    assert np.array_equal(load_array_file(tmp_path / "one.npz"), b)
    with pytest.raises(InputDataError, match=r"holds \['x', 'y'\]: say which array with FILE:KEY"):
        load_array_file(tmp_path / "two.npz")
    with pytest.raises(InputDataError, match=r"has no array 'z'; it has \['x', 'y'\]"):
        load_array_file(tmp_path / "two.npz", "z")


def test_load_array_file_never_unpickles(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputDataError, match="cannot read without unpickling"):
        load_array_file(tmp_path / "obj.npy")


def test_load_array_file_refuses_missing_and_non_array_files(tmp_path):
    with pytest.raises(InputDataError, match="does not exist"):
        load_array_file(tmp_path / "nope.npy")
    (tmp_path / "text.npy").write_text("hello")
    with pytest.raises(InputDataError, match="text.npy"):
        load_array_file(tmp_path / "text.npy")


# --- IDX -------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trips(tmp_path, gz):
    images = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    floats = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    shorts = np.array([-300, 0, 300], dtype=np.int16)
    for name, arr in (("u8", images), ("f32", floats), ("i16", shorts)):
        path = write_idx(tmp_path / (name + (".gz" if gz else "")), arr, gz=gz)
        got = read_idx(path)
        assert got.dtype == arr.dtype.newbyteorder("=")
        assert np.array_equal(got, arr)


@pytest.mark.parametrize("gz", [False, True])
def test_create_from_idx(tmp_path, base_dir, gz):
    images = (np.arange(5 * 3 * 4) * 4 % 256).astype(np.uint8).reshape(5, 3, 4)
    labels = np.array([0, 1, 2, 1, 0], dtype=np.uint8)
    img_path = write_idx(tmp_path / "images-idx3-ubyte", images, gz=gz)
    lab_path = write_idx(tmp_path / "labels-idx1-ubyte", labels, gz=gz)
    uri = create_from_idx(img_path, lab_path, str(base_dir), "idx")
    ds = open_dataset(uri)
    assert ds.get_annotation(keys.IMAGE_DIMENSIONS) == [1, 3, 4]
    assert ds.readme()["origin"] == str(img_path.resolve())
    from reprodl.data.datasets import TensorDataSet

    tds = TensorDataSet(uri)
    assert len(tds) == 5 and tds.input_shape == (1, 3, 4)
    for i in range(5):
        x, y = tds[i]
        np.testing.assert_allclose(x.numpy()[0], images[i] / 255.0, atol=1e-6)
        assert y == labels[i]


def test_bad_idx_files_are_refused(tmp_path, base_dir):
    good = write_idx(tmp_path / "labels", np.array([0, 1], np.uint8))
    (tmp_path / "magic").write_bytes(b"\x01\x02\x08\x01\x00\x00\x00\x02ab")
    with pytest.raises(InputDataError, match="magic is not an IDX file"):
        create_from_idx(tmp_path / "magic", good, str(base_dir), "x")
    raw = (tmp_path / "labels").read_bytes()
    (tmp_path / "short").write_bytes(raw[:-1])
    with pytest.raises(InputDataError, match=r"IDX header says \(2,\) \(2 bytes\) but the file has 1"):
        create_from_idx(tmp_path / "short", good, str(base_dir), "x")
    (tmp_path / "code").write_bytes(b"\x00\x00\x99\x01\x00\x00\x00\x01a")
    with pytest.raises(InputDataError, match="unknown IDX type code 0x99"):
        read_idx(tmp_path / "code")
    with pytest.raises(InputDataError, match="IDX file .*absent does not exist"):
        read_idx(tmp_path / "absent")
    images = write_idx(tmp_path / "images", np.zeros((3, 2, 2), np.uint8))
    with pytest.raises(InputDataError, match="3 data rows but 2 labels"):
        create_from_idx(images, good, str(base_dir), "x")
    assert snapshot(base_dir) == []


# --- digits ------------------------------------------------------------------------------------


def test_digits_tensor_dataset(_digits_master):
    ds = open_dataset(_digits_master)
    data = np.load(ds.item_path(ds.identifier_of("data.npy")))
    labels = np.load(ds.item_path(ds.identifier_of("labels.npy")))
    assert data.shape == (1797, 8, 8)
    assert data.dtype == np.uint8
    assert (int(data.min()), int(data.max())) == (0, 255)
    assert sorted(np.unique(labels).tolist()) == list(range(10))
    assert ds.get_annotation(keys.CATEGORY_ENCODING) == {str(i): i for i in range(10)}
    assert ds.get_annotation(keys.VALUE_SCALE) == 255.0
    readme = ds.readme()
    assert readme["license"] == "CC BY 4.0"
    assert readme["authors"] == ["E. Alpaydin", "C. Kaynak"]


def test_digits_as_images(base_dir, _digits_master):
    uri = create_digits(str(base_dir), "digit-images", as_images=True)
    ds = open_dataset(uri)
    assert len(ds) == 1797
    assert ds.get_annotation(keys.INPUT_TYPE) == "ImageDataSet"
    assert ds.get_annotation(keys.IMAGE_DIMENSIONS) == [1, 8, 8]
    assert ds.get_annotation(keys.CATEGORY_ENCODING) == {str(i): i for i in range(10)}
    tensor = open_dataset(_digits_master)
    data = np.load(tensor.item_path(tensor.identifier_of("data.npy")))
    first = np.asarray(Image.open(ds.item_path(ds.identifier_of("0/0000.png"))))
    assert np.array_equal(first, data[0])


def test_scan_dirtree_maps_categories_to_files(image_tree):
    tree = scan_dirtree(image_tree)
    assert {k: [p.name for p in v] for k, v in tree.items()} == {
        c: [f"{i}.png" for i in range(n)] for c, n in TREE_COUNTS.items()
    }
