"""Storage layer: the only part of reprodl that talks to dtoolcore.

Opens datasets from a plain path, file://, http(s):// or s3:// URI; creates datasets
atomically; gives fast item access through an identifier -> path map built once (dtoolcore's
``item_content_abspath`` re-reads the manifest on every call); fetches remote items once
into dtool's cache; verifies items against the manifest. Item relpaths are checked when a
dataset is opened or written, so none reaches outside the dataset.

Modules: ``uris`` (URIs, names, relpaths), ``hashing``, ``brokers`` (dtoolcore and its
storage brokers), ``remote_errors``, ``fetch`` (remote items into the cache), ``dataset``
(:class:`StoredDataSet`, :func:`open_dataset`), ``transfer`` (copy, list), ``create``
(:func:`create_dataset`), ``staging`` (staging directories, atomic writes, :func:`clean_staging`).
Importing this package imports no dtoolcore and no broker plugin.

Example:
    >>> ds = open_dataset("/data/digits")            # doctest: +SKIP
    >>> path = ds.item_path(ds.identifiers[0])      # doctest: +SKIP
"""

from __future__ import annotations

from reprodl.store.create import DatasetWriter, create_dataset, current_user, find_resumable, writer_over
from reprodl.store.dataset import StoredDataSet
from reprodl.store.fetch import FetchReport
from reprodl.store.hashing import Progress, canonical_json, file_md5, file_sha256
from reprodl.store.opening import exists, open_dataset
from reprodl.store.staging import StagingDir, clean_staging, find_staging
from reprodl.store.transfer import copy_dataset, list_datasets
from reprodl.store.uris import (
    SCHEMES,
    check_name,
    check_relpath,
    dataset_uri,
    item_identifier,
    local_path,
    name_is_valid,
    normalise_uri,
    scheme_of,
)
from reprodl.store.verification import VerifyReport

__all__ = [
    "SCHEMES",
    "DatasetWriter",
    "FetchReport",
    "Progress",
    "StagingDir",
    "StoredDataSet",
    "VerifyReport",
    "canonical_json",
    "check_name",
    "check_relpath",
    "clean_staging",
    "copy_dataset",
    "create_dataset",
    "current_user",
    "dataset_uri",
    "exists",
    "file_md5",
    "file_sha256",
    "find_resumable",
    "find_staging",
    "item_identifier",
    "list_datasets",
    "local_path",
    "name_is_valid",
    "normalise_uri",
    "open_dataset",
    "scheme_of",
    "writer_over",
]
