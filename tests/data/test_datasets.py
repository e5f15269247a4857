"""ImageDataSet / TensorDataSet: lengths, shapes, values, labels, splits, Pillow modes,
DataLoader batching, and datasets made in the original dtoolAI 0.2.0 conventions."""

from __future__ import annotations

from pathlib import Path

import dtoolcore
import dtoolcore.utils
import numpy as np
import pytest
import torch
from conftest import TREE_COUNTS, TREE_SIZE, gray_pixels
from PIL import Image
from torch.utils.data import DataLoader

from reprodl import keys
from reprodl.data.creators import create_from_arrays, create_from_dirtree
from reprodl.data.datasets import ImageDataSet, TensorDataSet, collate
from reprodl.data.kinds import open_training_data
from reprodl.data.ops import split_dataset, stratified_split
from reprodl.errors import DatasetFormatError, InputDataError, ParametersError
from reprodl.store import normalise_uri, open_dataset


def _raw_digits(uri: str) -> tuple[np.ndarray, np.ndarray]:
    ds = open_dataset(uri)
    data = np.load(ds.item_path(ds.identifier_of("data.npy")))
    labels = np.load(ds.item_path(ds.identifier_of("labels.npy")))
    return data, labels


# --- TensorDataSet -------------------------------------------------------------------------


def test_digits_tensor_dataset_values_shapes_and_labels(digits_uri):
    ds = TensorDataSet(digits_uri)
    data, labels = _raw_digits(digits_uri)
    assert len(ds) == 1797
    assert ds.input_shape == (1, 8, 8)
    assert ds.n_classes == 10
    assert ds.categories == [str(i) for i in range(10)]
    for i in (0, 1, 1000, -1):
        x, y = ds[i]
        assert x.dtype == torch.float32
        assert x.shape == (1, 8, 8)
        np.testing.assert_allclose(x.numpy()[0], data[i] / 255.0, rtol=0, atol=1e-6)
        assert y == int(labels[i])
    assert ds.label_counts() == {str(k): int((labels == k).sum()) for k in range(10)}


@pytest.mark.parametrize(
    ("dtype", "shape", "scale"),
    [
        (np.float32, (7,), 1.0),
        (np.uint8, (5, 6), 255.0),
        (np.int16, (2, 3, 4), 1.0),
    ],
)
def test_tensor_dataset_takes_any_dtype_and_shape(base_dir, dtype, shape, scale):
    n = 6
    rng = np.random.default_rng(0)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        data = rng.integers(info.min, info.max, size=(n, *shape), endpoint=True).astype(dtype)
    else:
        data = rng.normal(size=(n, *shape)).astype(dtype)
    labels = np.array([0, 1, 2, 0, 1, 2])
    uri = create_from_arrays(data, labels, str(base_dir), "arrays")
    ds = TensorDataSet(uri)
    expected_shape = (1, *shape) if len(shape) == 2 else shape
    assert ds.input_shape == expected_shape
    assert ds.value_scale == scale
    assert len(ds) == n
    for i in range(n):
        x, y = ds[i]
        assert x.dtype == torch.float32
        assert tuple(x.shape) == expected_shape
        np.testing.assert_allclose(x.numpy().reshape(shape), data[i].astype(np.float64) / scale, rtol=1e-6)
        assert y == labels[i]
    # the stored array keeps its dtype: nothing was converted on the way in
    assert ds.data.dtype == dtype


def test_tensor_dataset_refuses_a_pickled_object_array(tmp_path):
    with dtoolcore.DataSetCreator("pickled", normalise_uri(str(tmp_path))) as creator:
        np.save(
            creator.prepare_staging_abspath_promise("data.npy"),
            np.array([{"evil": 1}, {"evil": 2}], dtype=object),
            allow_pickle=True,
        )
        np.save(creator.prepare_staging_abspath_promise("labels.npy"), np.array([0, 1]))
    with pytest.raises(DatasetFormatError, match="data.npy cannot be read without unpickling"):
        TensorDataSet(creator.uri)


def test_tensor_dataset_rows_and_labels_must_agree(tmp_path):
    with dtoolcore.DataSetCreator("mismatch", normalise_uri(str(tmp_path))) as creator:
        np.save(creator.prepare_staging_abspath_promise("data.npy"), np.zeros((3, 4), np.uint8))
        np.save(creator.prepare_staging_abspath_promise("labels.npy"), np.array([0, 1]))
    with pytest.raises(DatasetFormatError, match="3 data rows but 2 labels"):
        TensorDataSet(creator.uri)


def test_image_dataset_is_not_a_tensor_dataset(image_uri):
    with pytest.raises(DatasetFormatError, match="is a ImageDataSet, not a TensorDataSet"):
        TensorDataSet(image_uri)


def test_tensor_dataset_is_not_an_image_dataset(digits_uri):
    with pytest.raises(DatasetFormatError, match="is a TensorDataSet, not a ImageDataSet"):
        ImageDataSet(digits_uri)


def test_open_training_data_picks_the_declared_kind(digits_uri, image_uri):
    assert isinstance(open_training_data(digits_uri), TensorDataSet)
    assert isinstance(open_training_data(image_uri), ImageDataSet)


# --- ImageDataSet --------------------------------------------------------------------------


def test_image_dataset_values_shapes_and_labels(image_uri):
    ds = ImageDataSet(image_uri)
    w, h = TREE_SIZE
    assert len(ds) == sum(TREE_COUNTS.values())
    assert ds.mode == "L"
    assert ds.input_shape == (1, h, w)
    assert ds.cat_encoding == {"ant": 0, "bee": 1, "cat": 2}
    assert ds.categories == ["ant", "bee", "cat"]
    expected_labels = [0] * 3 + [1] * 2 + [2] * 4  # items in relpath order
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.dtype == torch.float32
        assert x.shape == (1, h, w)
        np.testing.assert_allclose(x.numpy()[0], gray_pixels(i) / 255.0, rtol=0, atol=1e-6)
        assert y == expected_labels[i]
    assert ds.label_counts() == TREE_COUNTS


def test_category_encoding_is_sorted_deterministically(make_tree, base_dir):
    spec = {c: {"0.png": Image.fromarray(gray_pixels(i))} for i, c in enumerate(["b", "a", "10", "2"])}
    tree = make_tree(spec)
    uris = [create_from_dirtree(tree, str(base_dir), name) for name in ("one", "two")]
    expected = {"2": 0, "10": 1, "a": 2, "b": 3}
    for uri in uris:
        assert open_dataset(uri).get_annotation(keys.CATEGORY_ENCODING) == expected
        ds = ImageDataSet(uri)
        assert ds.categories == ["2", "10", "a", "b"]
        assert {ds.dataset.relpath(i).split("/")[0]: int(lab) for i, lab in zip(ds.identifiers, ds.labels)} == expected


@pytest.mark.parametrize("use_reprodl_collate", [True, False])
def test_dataloader_batches_through_getitems_equal_getitem(image_uri, digits_uri, monkeypatch, use_reprodl_collate):
    for cls, uri in ((ImageDataSet, image_uri), (TensorDataSet, digits_uri)):
        ds = cls(uri)
        calls: list[int] = []
        original = cls.__getitems__

        def spy(self, indices, _original=original, _calls=calls):
            _calls.append(len(indices))
            return _original(self, indices)

        monkeypatch.setattr(cls, "__getitems__", spy)
        kwargs = {"collate_fn": collate} if use_reprodl_collate else {}
        order = [3, 0, 7, 1, 8, 2, 5, 6, 4]  # not in order, and a last batch of 1
        loader = DataLoader(ds, batch_size=4, sampler=order, **kwargs)
        seen: list[int] = []
        for inputs, labels in loader:
            assert labels.dtype == torch.int64
            assert inputs.dtype == torch.float32
            for j in range(len(labels)):
                x, y = ds[order[len(seen)]]
                assert torch.equal(inputs[j], x)
                assert int(labels[j]) == y
                seen.append(y)
        assert len(seen) == len(order)
        assert calls == [4, 4, 1], f"{cls.__name__}.__getitems__ was not used for every batch"
        monkeypatch.undo()


def test_images_of_different_sizes_need_size(make_tree, base_dir):
    tree = make_tree(
        {
            "a": {
                "big.png": Image.fromarray(gray_pixels(0, (6, 5))),
                "small.png": Image.fromarray(gray_pixels(1, (4, 4))),
            },
            "b": {"0.png": Image.fromarray(gray_pixels(2, (6, 5)))},
        }
    )
    uri = create_from_dirtree(tree, str(base_dir), "mixed")
    assert open_dataset(uri).get_annotation(keys.IMAGE_DIMENSIONS) is None
    with pytest.raises(InputDataError, match=r"different shapes .*pass size=\(W, H\)"):
        next(iter(DataLoader(ImageDataSet(uri), batch_size=3, collate_fn=collate)))
    ds = ImageDataSet(uri, size=(3, 2))
    assert ds.input_shape == (1, 2, 3)
    inputs, labels = next(iter(DataLoader(ds, batch_size=3, collate_fn=collate)))
    assert inputs.shape == (3, 1, 2, 3)
    assert labels.tolist() == [0, 0, 1]


def test_transform_receives_the_image_in_the_dataset_mode(make_tree, base_dir):
    palette_image = Image.new("P", (3, 2))
    palette_image.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    palette_image.putpixel((0, 0), 1)
    tree = make_tree({"a": {"p.png": palette_image}})
    uri = create_from_dirtree(tree, str(base_dir), "palette")
    seen: list[str] = []

    def transform(image):
        seen.append(image.mode)
        return torch.from_numpy(np.asarray(image, dtype=np.float32).transpose(2, 0, 1).copy())

    x, _ = ImageDataSet(uri, transform=transform)[0]
    assert seen == ["RGB"]
    assert x[:, 0, 0].tolist() == [200.0, 100.0, 50.0]


def test_unsupported_requested_mode_is_refused(image_uri):
    with pytest.raises(InputDataError, match="'CMYK' is not supported: use 'L', 'RGB' or 'RGBA'"):
        ImageDataSet(image_uri, mode="CMYK")


# --- Pillow modes --------------------------------------------------------------------------

H, W = 3, 4


def _pixels(channels: int, seed: int = 0) -> np.ndarray:
    return ((np.arange(H * W * channels).reshape(H, W, channels) * 11 + seed * 7) % 256).astype(np.uint8)


def _mode_case(mode: str) -> tuple[Image.Image, str, str, np.ndarray]:
    """(image, file suffix, recorded mode, expected (C, H, W) floats in the recorded mode)."""
    if mode == "L":
        px = _pixels(1)[..., 0]
        return Image.fromarray(px), ".png", "L", px[None] / 255.0
    if mode == "RGB":
        px = _pixels(3)
        return Image.fromarray(px), ".png", "RGB", px.transpose(2, 0, 1) / 255.0
    if mode == "RGBA":
        px = _pixels(4)
        return Image.fromarray(px, "RGBA"), ".png", "RGB", px[..., :3].transpose(2, 0, 1) / 255.0
    if mode == "P":
        palette = [0, 0, 0, 255, 0, 0, 0, 128, 255]
        idx = (np.arange(H * W).reshape(H, W) % 3).astype(np.uint8)
        image = Image.fromarray(idx, "P")
        image.putpalette(palette + [0] * (768 - len(palette)))
        rgb = np.array(palette, dtype=np.float64).reshape(3, 3)[idx]
        return image, ".png", "RGB", rgb.transpose(2, 0, 1) / 255.0
    if mode == "I;16":
        px = (np.arange(H * W).reshape(H, W) * 5957).astype(np.uint16)  # up to 65527
        px[0, 1] = 32768
        px[0, 2] = 65535
        return Image.fromarray(px), ".png", "L", px[None] / 65535.0
    if mode == "CMYK":
        cmyk = np.zeros((H, W, 4), np.uint8)
        cmyk[..., 0] = 255  # cyan
        cmyk[1, :, 1] = 100  # some magenta
        image = Image.frombytes("CMYK", (W, H), cmyk.tobytes())
        rgb = 255 - cmyk[..., :3].astype(np.float64)  # K = 0
        return image, ".tif", "RGB", rgb.transpose(2, 0, 1) / 255.0
    if mode == "1":
        bits = (np.arange(H * W).reshape(H, W) % 2).astype(bool)
        return Image.fromarray(bits), ".png", "L", bits[None].astype(np.float64)
    raise AssertionError(mode)


MODES = ["L", "RGB", "RGBA", "P", "I;16", "CMYK", "1"]


@pytest.fixture
def mode_dataset(make_tree, base_dir):
    def make(mode: str) -> tuple[str, np.ndarray, str]:
        image, suffix, recorded, expected = _mode_case(mode)
        assert image.mode == mode
        tree = make_tree({"x": {f"img{suffix}": image}, "y": {f"img{suffix}": image}})
        assert Image.open(tree / "x" / f"img{suffix}").mode == mode
        return create_from_dirtree(tree, str(base_dir), "modes"), expected, recorded

    return make


@pytest.mark.parametrize("mode", MODES)
def test_pillow_mode_loads_in_the_recorded_mode(mode_dataset, mode):
    uri, expected, recorded = mode_dataset(mode)
    assert open_dataset(uri).get_annotation(keys.IMAGE_MODE) == recorded
    ds = ImageDataSet(uri)
    assert ds.mode == recorded
    x, _ = ds[0]
    assert ds.input_shape == tuple(x.shape) == expected.shape
    np.testing.assert_allclose(x.numpy(), expected, rtol=0, atol=1e-6)


def test_sixteen_bit_values_are_scaled_not_clipped(mode_dataset):
    uri, _, _ = mode_dataset("I;16")
    x, _ = ImageDataSet(uri)[0]
    assert x[0, 0, 1].item() == pytest.approx(32768 / 65535, abs=1e-6)
    assert x[0, 0, 2].item() == pytest.approx(1.0, abs=1e-6)
    assert 0.0 < x[0, 0, 1].item() < 0.6  # Pillow's convert("L") would clip it to 1.0


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("requested", ["L", "RGB", "RGBA"])
def test_pillow_mode_loads_in_the_requested_mode(mode_dataset, mode, requested):
    uri, expected, recorded = mode_dataset(mode)
    x, _ = ImageDataSet(uri, mode=requested)[0]
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[requested]
    assert tuple(x.shape) == (channels, H, W)
    assert x.dtype == torch.float32
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    if recorded == "L" and requested != "L":
        # gray data repeated over colour channels; opaque alpha
        for c in range(3):
            np.testing.assert_allclose(x[c].numpy(), expected[0], rtol=0, atol=1e-6)
        if requested == "RGBA":
            assert torch.all(x[3] == 1.0)
    if recorded == requested:
        np.testing.assert_allclose(x.numpy(), expected, rtol=0, atol=1e-6)
    if mode == "RGBA" and requested == "RGBA":
        np.testing.assert_allclose(x[3].numpy(), _pixels(4)[..., 3] / 255.0, rtol=0, atol=1e-6)


def test_palette_transparency_becomes_alpha(make_tree, base_dir):
    image = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8), "P")
    image.putpalette([9, 9, 9, 255, 0, 0] + [0] * 762)
    tree = make_tree({"x": {"t.png": image}})
    image.save(tree / "x" / "t.png", transparency=0)
    uri = create_from_dirtree(tree, str(base_dir), "transparent")
    x, _ = ImageDataSet(uri, mode="RGBA")[0]
    assert x[3].tolist() == [[0.0, 1.0], [1.0, 0.0]]
    assert x[:3, 0, 1].tolist() == [1.0, 0.0, 0.0]


# --- split ---------------------------------------------------------------------------------


def test_stratified_split_is_pinned_for_a_seed():
    labels = np.array([0] * 5 + [1] * 5)
    values = stratified_split(labels, test=0.4, seed=0)
    assert values.tolist() == [
        "train",
        "train",
        "test",
        "train",
        "test",
        "train",
        "test",
        "train",
        "train",
        "test",
    ]
    assert stratified_split(labels, test=0.4, seed=0).tolist() == values.tolist()
    assert stratified_split(labels, test=0.4, seed=1).tolist() != values.tolist()


def test_stratified_split_keeps_class_proportions():
    labels = np.repeat(np.arange(3), [10, 20, 30])
    values = stratified_split(labels, test=0.2, valid=0.1, seed=3)
    for cls, n in zip(range(3), (10, 20, 30)):
        chosen = values[labels == cls]
        assert (chosen == "test").sum() == round(n * 0.2)
        assert (chosen == "valid").sum() == round(n * 0.1)


@pytest.mark.parametrize(
    ("test", "valid", "match"),
    [
        (0.0, 0.0, "test should be a fraction between 0 and 1, but got test=0.0"),
        (1.5, 0.0, "but got test=1.5"),
        (0.5, 0.5, "test \\+ valid < 1, but got valid=0.5"),
    ],
)
def test_stratified_split_refuses_bad_fractions(test, valid, match):
    with pytest.raises(ParametersError, match=match):
        stratified_split(np.zeros(4, int), test=test, valid=valid, seed=0)


def test_digits_split_counts_are_pinned(digits_uri):
    assert split_dataset(digits_uri, test=0.2, seed=0) == {"test": 359, "train": 1438}
    train, test = TensorDataSet(digits_uri, "train"), TensorDataSet(digits_uri, "test")
    assert (len(train), len(test)) == (1438, 359)
    assert set(train.rows.tolist()).isdisjoint(test.rows.tolist())
    data, labels = _raw_digits(digits_uri)
    row = int(test.rows[5])
    x, y = test[5]
    np.testing.assert_allclose(x.numpy()[0], data[row] / 255.0, atol=1e-6)
    assert y == labels[row]
    assert sum(test.label_counts().values()) == 359


def test_same_seed_gives_the_same_split(digits_uri, _digits_master, tmp_path):
    import shutil

    other = tmp_path / "again" / "digits"
    shutil.copytree(_digits_master, other)
    split_dataset(digits_uri, test=0.25, seed=7)
    split_dataset(str(other), test=0.25, seed=7)
    a, b = TensorDataSet(digits_uri, "test"), TensorDataSet(str(other), "test")
    assert a.rows.tolist() == b.rows.tolist()
    assert a.selection_digest() == b.selection_digest()


def test_split_is_not_overwritten_without_force(digits_uri):
    split_dataset(digits_uri, test=0.2, seed=0)
    before = TensorDataSet(digits_uri, "test").rows.tolist()
    with pytest.raises(ParametersError, match="already has a split; pass force=True"):
        split_dataset(digits_uri, test=0.3, seed=1)
    assert TensorDataSet(digits_uri, "test").rows.tolist() == before
    assert split_dataset(digits_uri, test=0.3, seed=1, force=True) == {"test": 539, "train": 1258}
    assert TensorDataSet(digits_uri, "test").rows.tolist() != before


def test_image_split_filters_by_usetype(image_uri):
    assert split_dataset(image_uri, test=0.5, seed=0) == {"test": 5, "train": 4}
    train, test = ImageDataSet(image_uri, "train"), ImageDataSet(image_uri, "test")
    assert (len(train), len(test)) == (4, 5)
    assert set(train.identifiers).isdisjoint(test.identifiers)
    assert train.label_counts() == {"ant": 1, "bee": 1, "cat": 2}
    assert test.label_counts() == {"ant": 2, "bee": 1, "cat": 2}
    usetype = open_dataset(image_uri).get_overlay(keys.USETYPE_OVERLAY)
    assert {usetype[i] for i in train.identifiers} == {"train"}


def test_unknown_usetype_is_refused(image_uri, digits_uri):
    split_dataset(image_uri, test=0.5, seed=0)
    split_dataset(digits_uri, test=0.5, seed=0)
    with pytest.raises(DatasetFormatError, match=r"no items of usetype 'valid' .*\['test', 'train'\]"):
        ImageDataSet(image_uri, "valid")
    with pytest.raises(DatasetFormatError, match=r"no rows of usetype 'valid' .*\['test', 'train'\]"):
        TensorDataSet(digits_uri, "valid")


# --- the original dtoolAI 0.2.0 conventions ------------------------------------------------


def _dtoolai_tensor_dataset(base: Path, data: np.ndarray, labels: np.ndarray, dims: list[int]) -> str:
    """As dtoolai.data.create_tensor_dataset_from_arrays wrote it (plain dtoolcore)."""
    with dtoolcore.DataSetCreator("dtoolai-tensors", normalise_uri(str(base))) as creator:
        np.save(creator.prepare_staging_abspath_promise("data.npy"), data)
        np.save(creator.prepare_staging_abspath_promise("labels.npy"), labels)
    creator.put_annotation("tensor_file_idn", dtoolcore.utils.generate_identifier("data.npy"))
    creator.put_annotation("image_dimensions", dims)
    creator.put_annotation("dtoolAI.inputtype", "TensorDataSet")
    creator.put_readme("---\ndescription: made by dtoolAI\n")
    return creator.uri


def test_dtoolai_tensor_dataset_loads(tmp_path):
    h, w = 4, 3
    data = (np.arange(6 * h * w).reshape(6, h * w) * 3 % 256).astype(np.uint8)
    labels = np.array([0, 1, 2, 0, 1, 2])
    uri = _dtoolai_tensor_dataset(tmp_path, data, labels, [1, h, w])
    ds = TensorDataSet(uri)
    assert isinstance(open_training_data(uri), TensorDataSet)
    assert len(ds) == 6
    assert ds.input_shape == (1, h, w)
    assert ds.n_classes == 3
    for i in range(6):
        x, y = ds[i]
        assert x.shape == (1, h, w)
        np.testing.assert_allclose(x.numpy(), data[i].reshape(1, h, w) / 255.0, atol=1e-6)
        assert y == labels[i]
    inputs, batch_labels = collate(ds.__getitems__([5, 0]))
    np.testing.assert_allclose(inputs.numpy(), data[[5, 0]].reshape(2, 1, h, w) / 255.0, atol=1e-6)
    assert batch_labels.tolist() == [2, 0]


def test_dtoolai_tensor_labels_keep_their_values_when_a_class_is_absent(tmp_path):
    data = np.zeros((3, 4), np.uint8)
    labels = np.array([0, 2, 2])  # class 1 has no samples
    ds = TensorDataSet(_dtoolai_tensor_dataset(tmp_path, data, labels, [1, 2, 2]))
    assert [ds[i][1] for i in range(3)] == [0, 2, 2]
    for i in range(3):
        assert ds.categories[ds[i][1]] == str(labels[i])
    assert ds.n_classes > int(labels.max())
    assert ds.label_counts()["2"] == 2


def _dtoolai_image_dataset(
    base: Path, tree: dict[str, dict[str, tuple[np.ndarray, str]]], encoding: dict[str, int]
) -> str:
    """As dtoolai.utils.image_dataset_from_dirtree wrote it, plus a usetype per item."""
    src = base / "src"
    with dtoolcore.DataSetCreator(
        "dtoolai-images", normalise_uri(str(base)), readme_content="---\nCreated from directory: src\n"
    ) as creator:
        for cat, files in tree.items():
            (src / cat).mkdir(parents=True)
            for fname, (pixels, usetype) in files.items():
                path = src / cat / fname
                Image.fromarray(pixels).save(path)
                handle = creator.put_item(str(path), f"{cat}/{fname}")
                creator.add_item_metadata(handle, "category", cat)
                creator.add_item_metadata(handle, "usetype", usetype)
        creator.proto_dataset.put_annotation("category_encoding", encoding)
        creator.proto_dataset.put_annotation("dtoolAI.inputtype", "ImageDataSet")
    return creator.uri


def test_dtoolai_image_dataset_loads(tmp_path):
    rgb = _pixels(3, seed=1)
    gray = _pixels(1, seed=2)[..., 0]
    tree = {
        "dog": {"a.png": (rgb, "train"), "b.png": (gray, "test")},
        "cat": {"c.png": (gray, "train"), "d.png": (rgb, "train")},
    }
    encoding = {"dog": 0, "cat": 1}  # dtoolAI used listdir order, not sorted: keep it
    uri = _dtoolai_image_dataset(tmp_path, tree, encoding)
    assert isinstance(open_training_data(uri), ImageDataSet)

    everything = ImageDataSet(uri)
    assert len(everything) == 4
    assert everything.mode == "RGB"  # dtoolAI's behaviour: everything as RGB
    assert everything.cat_encoding == encoding
    assert everything.categories == ["dog", "cat"]

    train = ImageDataSet(uri, "train")
    assert [train.dataset.relpath(i) for i in train.identifiers] == ["cat/c.png", "cat/d.png", "dog/a.png"]
    expected = [np.repeat(gray[None], 3, 0), rgb.transpose(2, 0, 1), rgb.transpose(2, 0, 1)]
    for i, (want, label) in enumerate(zip(expected, [1, 1, 0])):
        x, y = train[i]
        assert x.shape == (3, H, W)
        np.testing.assert_allclose(x.numpy(), want / 255.0, atol=1e-6)
        assert y == label
    test = ImageDataSet(uri, "test")
    assert len(test) == 1 and test[0][1] == 0


def test_selection_digest_and_provenance_info(image_uri):
    split_dataset(image_uri, test=0.5, seed=0)
    train = ImageDataSet(image_uri, "train")
    info = train.provenance_info()
    assert info["n_items"] == 4
    assert info["n_dataset_items"] == 9
    assert info["usetype"] == "train"
    assert info["manifest_digest"] == open_dataset(image_uri).manifest_digest()
    assert info["selection_digest"] == ImageDataSet(image_uri, "train").selection_digest()
    assert info["selection_digest"] != ImageDataSet(image_uri, "test").selection_digest()
