"""The record's data: each dataset the training read (:class:`DataRef`) and how it was reached (:class:`DataView`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from reprodl.provenance._part import _Part


class DataView(_Part):
    """One step from the data the training was given down to a dataset it is made of."""

    kind: Literal["subset", "concat"] = Field(
        description="a torch Subset (some samples, in the order of its indices) or one part of a ConcatDataset"
    )
    indices_digest: str | None = Field(
        None, description="subset: sha256 of the Subset's indices as little-endian int64, in order"
    )
    n_indices: int | None = Field(None, description="subset: number of indices")
    part: int | None = Field(None, description="concat: which part of the ConcatDataset, from 0")
    parts: int | None = Field(None, description="concat: how many parts the ConcatDataset has")


class DataRef(_Part):
    """One dataset a training read, and how to find and check it again."""

    role: Literal["train", "valid", "test"] = Field(description="what the training used the dataset for")
    uri: str = Field(description="the dataset's URI when it was read")
    uuid: str = Field(description="the dataset's dtool UUID (kept by copies)")
    name: str = Field(description="the dataset's dtool name")
    input_type: str | None = Field(None, description="the dtoolAI.inputtype annotation (ImageDataSet, TensorDataSet)")
    manifest_digest: str = Field(
        description="sha256 over the sorted (relpath, size, md5) triples of the dataset's items: stable across copies"
    )
    manifest_item: str | None = Field(None, description="item holding a copy of the dataset's manifest")
    readme: str = Field("", description="the dataset's README text (empty when readme_of names an earlier entry)")
    readme_of: int | None = Field(
        None,
        description="index in data of the entry of the same dataset that holds "
        "its README: a README is stored once per record",
    )
    usetype: str | None = Field(None, description="the usetype (train, test, valid) selected, if any")
    split: dict[str, Any] | None = Field(None, description="in-memory stratified split (test, valid, seed)")
    bootstrap: int | None = Field(
        None,
        description="seed of a bootstrap resample of the selected samples (as many, drawn with replacement); "
        "None: each selected sample once",
    )
    selection_digest: str | None = Field(
        None, description="sha256 of the selected samples' keys, in order (the usetype split)"
    )
    labels_digest: str | None = Field(
        None,
        description="sha256 of the selected samples' stored labels, in order (category overlay values "
        "or label integers); the category_encoding is recorded apart",
    )
    n_items: int = Field(0, description="number of samples selected (after the usetype or split)")
    n_dataset_items: int = Field(0, description="number of items in the whole dataset")
    category_encoding: dict[str, int] = Field(default_factory=dict, description="category name to class index")
    transform: dict[str, Any] | None = Field(
        None,
        description="the input transform: class and repr, and config for a reprodl.data.transforms one "
        "(reprodl.data.transforms.from_config rebuilds it)",
    )
    input_shape: list[int] = Field(default_factory=list, description="shape of one input sample as fed to the model")
    image_dimensions: list[int] | None = Field(None, description="the dataset's image_dimensions annotation as read")
    value_scale: float | None = Field(None, description="tensor datasets: inputs are raw / value_scale")
    image_mode: str | None = Field(None, description="image datasets: the PIL mode images are converted to (L, RGB)")
    path: str | None = Field(
        None,
        description="a local dataset: its path relative to the training's working directory (reproduce run from "
        "that directory finds it there when the recorded URI is gone)",
    )
    views: list[DataView] = Field(
        default_factory=list,
        description="how the data given to the run reached this dataset, outermost first (a Subset of it, a part "
        "of a ConcatDataset); empty: the dataset itself was given",
    )
    stream: bool = Field(
        False,
        description="an IterableDataset: the run's data_order_digests are over the samples it yielded (their "
        "content, in order), not over indices",
    )
    source: Literal["dtool", "in-memory", "unverified"] = Field(
        "dtool",
        description="what kind of data this is: a dtool dataset (checked against its manifest), an "
        "in-memory tensor or array (hashed: manifest_digest is the sha256 of its content), or any other "
        "dataset, recorded by class only (unverified data: reprodl cannot tell whether it changed)",
    )
