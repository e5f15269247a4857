"""Dataset operations that need no torch: info, stratified split, streaming stats.

Example:
    >>> split_dataset("/data/digits", test=0.2, seed=0)   # doctest: +SKIP
    {'train': 1437, 'test': 360}
"""

from __future__ import annotations

from typing import Any

import numpy as np

from reprodl import keys
from reprodl.data.images import open_image, to_array
from reprodl.data.labels import dataset_encoding, label_array
from reprodl.data.layout import load_npy, tensor_item_ids, value_scale
from reprodl.errors import DamagedMetadataError, DatasetFormatError, ParametersError
from reprodl.store import Progress, StoredDataSet, open_dataset


class _NotLabelledError(DatasetFormatError):
    """A dataset with neither a category overlay nor a labels item (info shows it without classes)."""


def _labels(ds: StoredDataSet) -> tuple[str, list[Any], np.ndarray, dict[str, int]]:
    """(kind, sample keys, integer labels, encoding) of an image or tensor dataset."""
    kind = ds.get_annotation(keys.INPUT_TYPE)
    annotation = ds.get_annotation(keys.CATEGORY_ENCODING)
    if kind == keys.INPUT_TYPE_IMAGE or (kind is None and keys.CATEGORY_OVERLAY in ds.overlay_names()):
        cats = ds.get_overlay(keys.CATEGORY_OVERLAY) or {}
        idns = [i for i in ds.identifiers if cats.get(i) is not None]
        names = [str(cats[i]) for i in idns]
        encoding = dataset_encoding(annotation, uri=ds.uri, names=names)
        return keys.INPUT_TYPE_IMAGE, idns, np.array([encoding[n] for n in names], dtype=np.int64), encoding
    try:
        _, labels_idn = tensor_item_ids(ds)
    except DamagedMetadataError:
        raise
    except DatasetFormatError:
        raise _NotLabelledError(
            f"{ds.uri} is neither an image dataset (category overlay) nor a tensor dataset "
            f"({keys.TENSOR_LABELS_FILE} item)"
        ) from None
    labels = label_array(load_npy(ds.item_path(labels_idn), uri=ds.uri), uri=ds.uri)
    encoding = dataset_encoding(annotation, uri=ds.uri, labels=labels)
    return keys.INPUT_TYPE_TENSOR, list(range(len(labels))), labels, encoding


def dataset_info(uri: str) -> dict[str, Any]:
    """Name, UUID, URI, README, item count, classes, per-class and per-split counts."""
    ds = open_dataset(uri)
    info: dict[str, Any] = {
        "name": ds.name,
        "uuid": ds.uuid,
        "uri": ds.uri,
        "creator": ds.admin_metadata.get("creator_username"),
        "frozen_at": ds.admin_metadata.get("frozen_at"),
        "n_items": len(ds),
        "size_in_bytes": ds.total_size(),
        "manifest_digest": ds.manifest_digest(),
        "readme": ds.readme(),
        "annotations": ds.annotation_names(),
        "overlays": ds.overlay_names(),
        "input_type": ds.get_annotation(keys.INPUT_TYPE),
    }
    try:
        kind, sample_keys, labels, encoding = _labels(ds)
    except _NotLabelledError:
        return info
    inverse = {v: k for k, v in encoding.items()}
    counts = np.bincount(labels, minlength=len(encoding)) if len(labels) else np.zeros(0, int)
    info.update(
        {
            "n_samples": len(labels),
            "classes": [inverse[i] for i in sorted(inverse)],
            "class_counts": {inverse.get(i, str(i)): int(c) for i, c in enumerate(counts)},
            "image_dimensions": ds.get_annotation(keys.IMAGE_DIMENSIONS),
        }
    )
    split = _split_values(ds, kind, sample_keys)
    if split is not None:
        values, n = np.unique(np.asarray([str(s) for s in split]), return_counts=True)
        info["split_counts"] = {str(v): int(c) for v, c in zip(values, n)}
        info["split"] = ds.get_annotation(keys.SPLIT_INFO)
    return info


def _split_values(ds: StoredDataSet, kind: str, sample_keys: list[Any]) -> list[Any] | None:
    if kind == keys.INPUT_TYPE_IMAGE:
        overlay = ds.get_overlay(keys.USETYPE_OVERLAY)
        return None if overlay is None else [overlay.get(i) for i in sample_keys]
    return ds.get_annotation(keys.TENSOR_USETYPE)


def stratified_split(labels: np.ndarray, *, test: float, valid: float = 0.0, seed: int) -> np.ndarray:
    """Per-sample "train"/"valid"/"test", stratified by label, fixed by ``seed``.

    Each class contributes round(n * fraction) samples to test and valid, chosen by a
    permutation from ``numpy.random.default_rng(seed)``.
    """
    if not 0.0 < test < 1.0:
        raise ParametersError(f"test should be a fraction between 0 and 1, but got test={test}")
    if not 0.0 <= valid < 1.0 or test + valid >= 1.0:
        raise ParametersError(f"valid should be in [0, 1) with test + valid < 1, but got valid={valid}")
    rng = np.random.default_rng(seed)
    out = np.full(len(labels), "train", dtype=object)
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        idx = idx[rng.permutation(len(idx))]
        n_test = int(round(len(idx) * test))
        n_valid = int(round(len(idx) * valid))
        out[idx[:n_test]] = "test"
        out[idx[n_test : n_test + n_valid]] = "valid"
    return out


def split_dataset(
    uri: str, *, test: float = 0.2, valid: float = 0.0, seed: int = 0, force: bool = False
) -> dict[str, int]:
    """Write a stratified train/test(/valid) split into the dataset.

    Image datasets get a ``usetype`` overlay (dtoolAI's convention); tensor datasets, whose
    rows are not items, a per-row annotation. An existing split is kept unless ``force``:
    models trained on it record its digest, and replacing it changes what they saw.
    """
    ds = open_dataset(uri)
    kind, sample_keys, labels, _ = _labels(ds)
    if _split_values(ds, kind, sample_keys) is not None and not force:
        raise ParametersError(
            f"{ds.uri} already has a split; pass force=True (--force) to replace it "
            "(models trained on the old split will then fail to reproduce)"
        )
    values = stratified_split(labels, test=test, valid=valid, seed=seed)
    wanted = ["train", "test"] + (["valid"] if valid > 0 else [])
    empty = [part for part in wanted if not np.any(values == part)]
    if empty:
        raise ParametersError(
            f"this split of {ds.uri} ({len(labels)} samples, test={test}, valid={valid}) would leave "
            f"{' and '.join(empty)} with no samples: change the fractions, or add samples"
        )
    if kind == keys.INPUT_TYPE_IMAGE:
        overlay = {i: None for i in ds.identifiers}
        overlay.update({k: str(v) for k, v in zip(sample_keys, values)})
        ds.put_overlay(keys.USETYPE_OVERLAY, overlay)
    else:
        ds.put_annotation(keys.TENSOR_USETYPE, [str(v) for v in values])
    names, n = np.unique(values.astype(str), return_counts=True)
    counts = {str(k): int(c) for k, c in zip(names, n)}
    ds.put_annotation(
        keys.SPLIT_INFO, {"method": "stratified", "test": test, "valid": valid, "seed": seed, "counts": counts}
    )
    return counts


def dataset_stats(uri: str, *, progress: Progress | None = None, mode: str | None = None) -> dict[str, Any]:
    """Per-channel mean/std over all samples (streaming, bounded memory) and class balance."""
    ds = open_dataset(uri)
    kind, sample_keys, labels, encoding = _labels(ds)
    total: Any = 0.0
    total_sq: Any = 0.0
    count = 0

    def add(flat: np.ndarray) -> None:
        """Accumulate a (channels, values) block into the running sums."""
        nonlocal total, total_sq, count
        total = total + flat.sum(1)
        total_sq = total_sq + (flat**2).sum(1)
        count += flat.shape[1]

    if kind == keys.INPUT_TYPE_IMAGE:
        mode = mode or ds.get_annotation(keys.IMAGE_MODE) or "RGB"
        for idn in sample_keys:
            arr = to_array(open_image(ds.item_path(idn)), mode).astype(np.float64)
            add(arr.reshape(arr.shape[0], -1))
            if progress:
                progress(1)
    else:
        data_idn, _ = tensor_item_ids(ds)
        data = load_npy(ds.item_path(data_idn), uri=ds.uri)
        dims = ds.get_annotation(keys.IMAGE_DIMENSIONS) or [1, *data.shape[1:]]
        scale = value_scale(ds, data.dtype)
        channels = int(dims[0])
        for start in range(0, len(data), 4096):
            chunk = np.asarray(data[start : start + 4096], dtype=np.float64) / scale
            add(chunk.reshape(len(chunk), channels, -1).transpose(1, 0, 2).reshape(channels, -1))
            if progress:
                progress(len(chunk))
    mean = (total / count) if count else np.zeros(0)
    var = np.maximum(total_sq / count - mean**2, 0.0) if count else np.zeros(0)
    inverse = {v: k for k, v in encoding.items()}
    counts = np.bincount(labels, minlength=len(encoding))
    n = int(counts.sum())
    return {
        "uri": ds.uri,
        "n_samples": n,
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in np.sqrt(var)],
        "class_counts": {inverse.get(i, str(i)): int(c) for i, c in enumerate(counts)},
        "class_fractions": {inverse.get(i, str(i)): (float(c) / n if n else 0.0) for i, c in enumerate(counts)},
        "majority_class_fraction": float(counts.max() / n) if n else 0.0,
    }
