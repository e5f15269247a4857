"""Creating training datasets: from a directory tree of images, arrays, IDX files, digits.

Every creator validates its input fully before anything is frozen, and writes through
:func:`reprodl.store.create_dataset`, so a failure leaves nothing behind. No torch here.

Example:
    >>> uri = create_digits("/tmp/data", "digits")                   # doctest: +SKIP
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import tempfile
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from reprodl import keys
from reprodl.data.images import open_image, target_mode_for
from reprodl.data.labels import category_encoding, integer_labels
from reprodl.data.layout import NPY_HEADER_ERRORS, check_real_dtype, default_value_scale
from reprodl.data.readme import make_readme
from reprodl.errors import InputDataError
from reprodl.store import Progress, check_name, create_dataset, current_user, item_identifier

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}


def _readme(name: str, readme: dict[str, Any] | None, defaults: dict[str, Any]) -> str:
    # The creator's defaults go under a README file's fields, not over them.
    fields = {k: v for k, v in (readme or {}).items() if v not in (None, "", [])}
    readme_file = fields.pop("readme_file", None)
    schema = fields.pop("schema", None)
    known = {k: fields.pop(k, None) for k in ("description", "authors", "origin", "license", "usetype")}
    return make_readme(
        name=fields.pop("name", name), readme_file=readme_file, schema=schema, extra=fields, defaults=defaults, **known
    )


def scan_dirtree(root: str | os.PathLike[str]) -> dict[str, list[Path]]:
    """Map category name -> image files, refusing anything that is not a clean tree."""
    root = Path(root)
    if not root.exists():
        raise InputDataError(f"image directory {root} does not exist")
    if not root.is_dir():
        raise InputDataError(f"{root} is not a directory: give a directory with one subdirectory per category")
    try:
        entries = sorted(root.iterdir())
    except PermissionError:
        raise InputDataError(f"cannot read the directory {root}: permission denied") from None
    stray = [e.name for e in entries if e.is_file() and not e.name.startswith(".")]
    if stray:
        raise InputDataError(
            f"{root} has files outside category subdirectories: {stray[:5]}; put each image "
            "in a subdirectory named for its category"
        )
    tree: dict[str, list[Path]] = {}
    for sub in entries:
        if not sub.is_dir() or sub.name.startswith("."):
            continue
        try:
            files = sorted(p for p in sub.rglob("*") if p.is_file() and not p.name.startswith("."))
        except PermissionError:
            raise InputDataError(f"cannot read the directory {sub}: permission denied") from None
        if not files:
            raise InputDataError(f"category {sub.name!r} ({sub}) has no images; remove it or add images")
        tree[sub.name] = files
    if not tree:
        raise InputDataError(f"{root} has no category subdirectories: expected {root}/<category>/<image>")
    return tree


def create_from_dirtree(
    dirtree: str | os.PathLike[str],
    base_uri: str,
    name: str,
    *,
    readme: dict[str, Any] | None = None,
    progress: Progress | None = None,
) -> str:
    """Create an ImageDataSet from ``dirtree/<category>/<image>``; returns its URI.

    Every image is decoded first (corrupt files, non-images and decompression bombs are
    refused, naming the file) and nothing is written unless all are good.
    """
    check_name(name)
    tree = scan_dirtree(dirtree)
    modes: Counter[str] = Counter()
    sizes: Counter[tuple[int, int]] = Counter()
    for files in tree.values():
        for path in files:
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                raise InputDataError(
                    f"{path} is not an image file (suffix {path.suffix or 'none'!r}); allowed: {sorted(IMAGE_SUFFIXES)}"
                )
            image = open_image(path)
            modes[image.mode] += 1
            sizes[image.size] += 1
            if progress:
                progress(1)
    text = _readme(
        name,
        readme,
        {
            "description": f"Images in {len(tree)} categories, created from {Path(dirtree).name}",
            "authors": [current_user()],
            "origin": str(Path(dirtree).resolve()),
        },
    )
    colour = any(target_mode_for(m) == "RGB" for m in modes)
    mode = "RGB" if colour else "L"
    encoding = category_encoding(list(tree))
    with create_dataset(base_uri, name, readme=text) as writer:
        for category, files in tree.items():
            base = Path(dirtree) / category
            for path in files:
                rel = f"{category}/{path.relative_to(base).as_posix()}"
                writer.put_item(path, rel)
                writer.set_item_label(keys.CATEGORY_OVERLAY, rel, category)
                if progress:
                    progress(1)
        writer.put_annotation(keys.INPUT_TYPE, keys.INPUT_TYPE_IMAGE)
        writer.put_annotation(keys.CATEGORY_ENCODING, encoding)
        writer.put_annotation(keys.IMAGE_MODE, mode)
        if len(sizes) == 1:
            ((w, h),) = sizes
            writer.put_annotation(keys.IMAGE_DIMENSIONS, [3 if colour else 1, h, w])
    assert writer.uri is not None
    return writer.uri


def create_from_arrays(
    data: np.ndarray,
    labels: np.ndarray,
    base_uri: str,
    name: str,
    *,
    image_dimensions: list[int] | None = None,
    categories: list[str] | None = None,
    value_scale: float | None = None,
    usetype: list[str] | np.ndarray | None = None,
    readme: dict[str, Any] | None = None,
    readme_text: str | None = None,
) -> str:
    """Create a TensorDataSet from an array of samples and an array of integer labels.

    Args:
        data: shape (N, ...), any numeric dtype; stored as is (``data.npy``).
        labels: shape (N,), integers 0..K-1.
        image_dimensions: (C, H, W) each row reshapes to (default: from the row shape).
        categories: names of labels 0..K-1 (default "0", "1", ...).
        value_scale: divide raw values by this to get model inputs (default 255 for uint8).
        usetype: optional per-row split labels (train/test/...).
        readme_text: the README as given, instead of one made from ``readme`` (dtoolAI's creators took text).
    """
    check_name(name)
    data, labels = _checked_arrays(data, labels)
    categories = _category_names(labels, categories)
    image_dimensions = _row_dimensions(data, image_dimensions)
    if value_scale is not None and not (math.isfinite(value_scale) and value_scale > 0):
        raise InputDataError(
            f"value_scale divides the raw values, so it must be a finite number > 0, but got value_scale={value_scale}"
        )
    if usetype is not None and len(usetype) != len(data):
        raise InputDataError(f"usetype has {len(usetype)} entries for {len(data)} rows")
    shape = list(data.shape[1:])
    defaults = {"description": f"{len(data)} samples of shape {shape}", "authors": [current_user()], "origin": "arrays"}
    text = readme_text if readme_text is not None else _readme(name, readme, defaults)
    with create_dataset(base_uri, name, readme=text) as writer:
        for arr, rel in ((data, keys.TENSOR_DATA_FILE), (labels.astype(np.int64), keys.TENSOR_LABELS_FILE)):
            with writer.item_file(rel) as path:
                np.save(path, np.ascontiguousarray(arr), allow_pickle=False)
        writer.put_annotation(keys.INPUT_TYPE, keys.INPUT_TYPE_TENSOR)
        writer.put_annotation(keys.TENSOR_FILE_IDN, item_identifier(keys.TENSOR_DATA_FILE))
        writer.put_annotation(keys.LABELS_FILE_IDN, item_identifier(keys.TENSOR_LABELS_FILE))
        writer.put_annotation(keys.IMAGE_DIMENSIONS, [int(d) for d in image_dimensions])
        writer.put_annotation(keys.CATEGORY_ENCODING, {c: i for i, c in enumerate(categories)})
        writer.put_annotation(keys.TENSOR_DTYPE, str(data.dtype))
        writer.put_annotation(keys.TENSOR_SHAPE, list(data.shape))
        writer.put_annotation(
            keys.VALUE_SCALE, float(value_scale if value_scale is not None else default_value_scale(data.dtype))
        )
        if usetype is not None:
            writer.put_annotation(keys.TENSOR_USETYPE, [str(u) for u in usetype])
    assert writer.uri is not None
    return writer.uri


def _checked_arrays(data: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """(data, int64 labels): one row per sample, one integer label per row, numeric values."""
    data = np.asarray(data)
    labels = np.asarray(labels)
    if data.dtype == object or labels.dtype == object:
        raise InputDataError("object arrays cannot be stored (they would need pickling)")
    if data.ndim < 2:
        raise InputDataError(f"data must have shape (N, ...) with one row per sample, got {data.shape}")
    labels = labels.reshape(-1) if labels.ndim == 2 and 1 in labels.shape else labels
    if labels.ndim != 1:
        raise InputDataError(f"labels must be one-dimensional, got shape {labels.shape}")
    if len(labels) != len(data):
        raise InputDataError(f"labels/array length mismatch: {len(data)} data rows but {len(labels)} labels")
    _check_data_values(data)
    return data, _integer_labels(labels)


def _category_names(labels: np.ndarray, categories: list[str] | None) -> list[str]:
    """The names of labels 0..K-1: as given (distinct, one for every label), else "0".."max"."""
    n_classes = int(labels.max()) + 1 if len(labels) else 0
    if n_classes > keys.MAX_CATEGORIES:
        raise InputDataError(
            f"labels go up to {n_classes - 1:,}, over reprodl's limit of "
            f"{keys.MAX_CATEGORIES - 1:,}: labels are category numbers 0..K-1"
        )
    if categories is None:
        return [str(i) for i in range(n_classes)]
    if not n_classes <= len(categories) <= keys.MAX_CATEGORIES:
        raise InputDataError(
            f"{len(categories):,} category names for labels up to {n_classes - 1}: give one name per label "
            f"(at most {keys.MAX_CATEGORIES:,})"
        )
    names = [str(c) for c in categories]
    repeated = sorted(n for n, count in Counter(names).items() if count > 1)
    if repeated:
        raise InputDataError(f"category names {repeated[:5]} are given to more than one label: give each label its own")
    return names


def _row_dimensions(data: np.ndarray, image_dimensions: list[int] | None) -> list[int]:
    """The (C, H, W) each row reshapes to: as given (checked against the rows), else the row shape."""
    if image_dimensions is None:
        row = data.shape[1:]
        image_dimensions = [1, *row] if len(row) == 2 else list(row)
    if int(np.prod(image_dimensions)) != int(np.prod(data.shape[1:])):
        raise InputDataError(f"image_dimensions {image_dimensions} do not fit rows of shape {list(data.shape[1:])}")
    return image_dimensions


def _check_data_values(data: np.ndarray) -> None:
    """Refuse data a model cannot read as numbers: complex, non-numeric, NaN or infinite values."""
    check_real_dtype(data.dtype, error=InputDataError)
    if np.issubdtype(data.dtype, np.floating):
        bad = ~np.isfinite(data)
        if bad.any():
            row = int(np.argwhere(bad)[0][0])
            raise InputDataError(
                f"data has {int(bad.sum())} non-finite value(s) (NaN or infinite), the first in row {row}: "
                "remove or impute them before creating the dataset"
            )


def _integer_labels(labels: np.ndarray) -> np.ndarray:
    """Labels as int64, refusing NaN, fractions and negative values (naming the first row)."""
    labels = integer_labels(labels, error=InputDataError, fix="map them to integers first")
    if len(labels) and labels.min() < 0:
        row = int(np.argmin(labels))
        raise InputDataError(
            f"labels must be >= 0 (class indices 0..K-1), but row {row} has {int(labels[row])}: "
            "renumber the classes from 0"
        )
    return labels.astype(np.int64)


def load_array_file(path: str | os.PathLike[str], key: str | None = None) -> np.ndarray:
    """Read a .npy or one array of a .npz file (never unpickling)."""
    path = Path(path)
    if not path.is_file():
        raise InputDataError(f"array file {path} does not exist")
    try:
        loaded = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise InputDataError(f"{path}: cannot read without unpickling ({exc}); save with allow_pickle=False") from None
    except (OSError, *NPY_HEADER_ERRORS) as exc:
        raise InputDataError(f"{path} is not a .npy/.npz file ({type(exc).__name__}: {exc})") from None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            names = list(loaded.files)
            if key is None:
                if len(names) != 1:
                    raise InputDataError(f"{path} holds {names}: say which array with FILE:KEY")
                key = names[0]
            if key not in names:
                raise InputDataError(f"{path} has no array {key!r}; it has {names}")
            return loaded[key]
    return loaded


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (MNIST's format), gzipped or not."""
    path = Path(path)
    if not path.is_file():
        raise InputDataError(f"IDX file {path} does not exist")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise InputDataError(f"{path} is a damaged gzip file ({type(exc).__name__}: {exc})") from None
    if len(raw) < 4 or raw[:2] != b"\x00\x00":
        raise InputDataError(f"{path} is not an IDX file (bad magic number)")
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    code, ndim = raw[2], raw[3]
    if code not in dtypes:
        raise InputDataError(f"{path}: unknown IDX type code {code:#x}")
    if len(raw) < 4 + 4 * ndim:
        raise InputDataError(
            f"{path}: the IDX header names {ndim} dimensions but the file ends inside it "
            f"({len(raw)} bytes): the file is truncated"
        )
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    dtype = np.dtype(dtypes[code])
    expected = math.prod(dims) * dtype.itemsize  # exact: np.prod would overflow int64 and wrap
    body = raw[4 + 4 * ndim :]
    if len(body) != expected:
        raise InputDataError(
            f"{path}: IDX header says {dims} ({expected} bytes) but the file has {len(body)}: "
            "the file is truncated or its header is corrupt; download it again"
        )
    return np.frombuffer(body, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))


def create_from_idx(
    images: str | os.PathLike[str],
    labels: str | os.PathLike[str],
    base_uri: str,
    name: str,
    *,
    readme: dict[str, Any] | None = None,
) -> str:
    """Create a TensorDataSet from MNIST-style IDX files (images and labels); returns its URI."""
    data = read_idx(images)
    dims = None
    if data.ndim == 3:
        dims = [1, *data.shape[1:]]
        data = data.reshape(len(data), -1)
    return create_from_arrays(
        data,
        read_idx(labels),
        base_uri,
        name,
        image_dimensions=dims,
        readme={"origin": str(Path(images).resolve()), **{k: v for k, v in (readme or {}).items() if v is not None}},
    )


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """sklearn's 1,797 real 8x8 handwritten digits as uint8 0-255 images and labels."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise InputDataError("the digits dataset needs scikit-learn: pip install 'reprodl[digits]'") from None
    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)  # 0-16 -> 0-255
    return images, bunch.target.astype(np.int64)


DIGITS_README = {
    "description": "1,797 real 8x8 handwritten digits (UCI Optical Recognition of Handwritten "
    "Digits, test set, via scikit-learn), stored as uint8 0-255 grayscale images",
    "authors": ["E. Alpaydin", "C. Kaynak"],
    "origin": "https://archive.ics.uci.edu/dataset/80 (sklearn.datasets.load_digits)",
    "license": "CC BY 4.0",
}


def create_digits(base_uri: str, name: str, *, as_images: bool = False, readme: dict[str, Any] | None = None) -> str:
    """The embedded default: sklearn's real handwritten digits as a dataset.

    As a TensorDataSet (``data.npy`` of shape (1797, 8, 8) uint8, labels "0".."9"), or with
    ``as_images`` as an ImageDataSet of 8x8 PNGs in ``<digit>/<index>.png``.
    """
    images, labels = digits_arrays()
    info = {**DIGITS_README, **(readme or {})}
    if not as_images:
        return create_from_arrays(images, labels, base_uri, name, image_dimensions=[1, 8, 8], readme=info)

    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        for i, (img, lab) in enumerate(zip(images, labels)):
            d = Path(tmp) / str(int(lab))
            d.mkdir(exist_ok=True)
            Image.fromarray(np.ascontiguousarray(img)).save(d / f"{i:04d}.png")
        return create_from_dirtree(tmp, base_uri, name, readme=info)
