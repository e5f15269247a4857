"""Copying datasets between base URIs, and listing a base URI's datasets.

A copy keeps the UUID and the items (so the manifest digest); it reads items through
:class:`~reprodl.store.dataset.StoredDataSet` (the path map, the remote cache). The
source is checked against its manifest before and after; on disk a copy is staged and
takes its name only when complete, in a bucket it is removed again if it fails part-way.
Nothing is overwritten.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from reprodl.errors import (
    DatasetExistsError,
    DatasetFormatError,
    IntegrityError,
    InvalidURIError,
    ReprodlError,
    StorageError,
)
from reprodl.store.brokers import (
    _check_broker,
    broker_class,
    dataset_uri_in,
    frozen_dataset_uris,
    proto_dataset,
    storage_broker,
)
from reprodl.store.dataset import StoredDataSet
from reprodl.store.fetch import FETCH_WORKERS, bounded_map
from reprodl.store.hashing import Progress
from reprodl.store.opening import open_dataset
from reprodl.store.remote_errors import _remote_error
from reprodl.store.staging import clean_staging, make_staging, move_into_place
from reprodl.store.uris import file_name_problem, local_path, normalise_uri


def _probe_remote_base(base: str) -> None:
    """Fail fast, with a clear error, when a remote base URI cannot be written to."""
    broker_cls = broker_class(base)
    bucket = urlparse(base).netloc
    try:
        _resource, client, _unsigned = broker_cls._get_resource_and_client(bucket)
        client.list_objects_v2(Bucket=bucket, MaxKeys=1)
    except Exception as exc:  # botocore errors are not typed here
        raise _remote_error(base, exc) from exc


def _copy_to(src: StoredDataSet, dest_base: str, *, progress: Progress | None = None) -> str:
    """Copy ``src`` under ``dest_base``, frozen there; returns the new URI.

    The source is checked against its manifest first, and the copy's manifest (the hashes
    of what was written) against the source's before the copy is given its name, so a
    tampered source is refused rather than sealed under its UUID with a new manifest. On
    disk the copy is built in a staging directory in ``dest_base`` and renamed into place
    when complete; in a bucket (keyed by UUID) it is removed if it fails. Items come from
    ``src.item_path`` (the map built once, the remote cache) rather than dtoolcore's
    per-item manifest re-read, and metadata through :class:`StoredDataSet` (dtool-s3
    cannot list dotted annotation names).
    """
    _check_broker(dest_base)
    _check_source(src)
    admin = src.admin_metadata
    admin["type"] = "protodataset"
    dest_uri = dataset_uri_in(admin, dest_base)
    if _dataset_present(dest_uri):
        raise DatasetExistsError(
            f"{dest_uri} already holds dataset {src.name!r} (UUID {src.uuid}): reprodl never "
            "overwrites; use it as it is or remove it first"
        )
    dest_dir = local_path(dest_base)
    final = None if dest_dir is None else dest_dir / src.name
    staging = None
    if dest_dir is not None:
        clean_staging(dest_dir, name=src.name)  # leftovers of killed copies
        staging = make_staging(dest_dir, src.name, purpose="copy")
    try:
        base = dest_base if staging is None else normalise_uri(str(staging))
        staged = None if staging is None else staging / src.name
        _write_copy(src, admin, base=base, dest_uri=dest_uri, staged=staged, final=final, progress=progress)
    except BaseException as exc:
        # What to remove: on disk the staging directory (removed below in any case); in a
        # bucket anything under the new UUID, which is this copy's.
        removed = (True if staged.exists() else None) if staged is not None else _remove_partial(dest_uri)
        if not isinstance(exc, Exception) or isinstance(exc, (IntegrityError, DatasetExistsError)):
            raise  # KeyboardInterrupt and the like, a refused source, a lost race: as they are
        raise _copy_error(exc, src, dest_base, dest_uri, local=staging is not None, removed=removed) from exc
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    return normalise_uri(dest_uri if final is None else str(final))


def _write_copy(
    src: StoredDataSet,
    admin: dict[str, Any],
    *,
    base: str,
    dest_uri: str,
    staged: Path | None,
    final: Path | None,
    progress: Progress | None,
) -> None:
    """Write and freeze the copy under ``base``, checked against the source's manifest.

    On disk (``staged``: where the staging copy is written) it is then moved to ``final``;
    in a bucket it is checked before it is frozen.
    """
    proto = proto_dataset(admin, base)
    proto.create()
    _fill(proto, src, progress)
    if staged is None or final is None:
        _check_copied(src, proto.generate_manifest()["items"], dest_uri)
        proto.freeze()
    else:
        proto.freeze()
        _check_copied(src, proto._storage_broker.get_manifest()["items"], dest_uri)
        move_into_place(staged, final)


def _copy_error(
    exc: BaseException, src: StoredDataSet, dest_base: str, dest_uri: str, *, local: bool, removed: bool | None
) -> StorageError:
    """The StorageError for a copy that failed with ``exc``, saying what was left behind."""
    if isinstance(exc, ReprodlError):
        cause = str(exc)
    elif local:
        cause = f"{type(exc).__name__}: {exc}"
    else:
        cause = str(_remote_error(dest_uri, exc))
    where = {
        None: "nothing was written",
        True: "the partial copy was removed",
        False: f"a partial copy may remain at {dest_uri}: remove it by hand",
    }[removed]
    return StorageError(f"could not copy {src.uri} to {dest_base}: {cause} ({where})")


def _fill(proto: Any, src: StoredDataSet, progress: Progress | None) -> None:
    """Put the source's items, README, tags, overlays and annotations into ``proto``.

    Items go to a bucket 8 at a time (one upload is a few requests: sequential uploads
    spend their time waiting); on disk they are copied one after another.
    """

    def put(idn: str) -> None:
        proto.put_item(src.item_path(idn), src.relpath(idn))
        if progress:
            progress(1)

    if urlparse(proto.uri).scheme in ("", "file"):
        for idn in src.identifiers:
            put(idn)
    else:
        for _ in bounded_map(put, src.identifiers, workers=FETCH_WORKERS):
            pass
    proto.put_readme(src.get_readme_content())
    for tag in src.tags():
        proto.put_tag(tag)
    for name in src.overlay_names():
        # The overlay's keys are the source's identifiers, the copy's too.
        proto._storage_broker.put_overlay(name, src.get_overlay(name))
    for name in src.annotation_names():
        proto.put_annotation(name, src.get_annotation(name))


def _check_names(src: StoredDataSet) -> None:
    """Refuse, before anything is written, a source whose server lists a tag, annotation or
    overlay name that cannot be a file name in the copy (``../x``): dtoolcore refuses the
    first two with an empty message, and the broker call that writes overlays checks nothing."""
    from dtoolcore.utils import name_is_valid

    fix = (
        "so it is not copied: a server may list any name, and this one was edited or not written "
        "by dtool. Ask whoever publishes the dataset to correct it, or use another copy"
    )
    for kind, names in (("tag", src.tags()), ("annotation", src.annotation_names())):
        article = "an" if kind == "annotation" else "a"
        for name in names:
            if not (isinstance(name, str) and name_is_valid(name)):
                raise DatasetFormatError(
                    f"dataset {src.uri} has {article} {kind} named {name!r}, which dtool does not allow "
                    f"(at most 80 letters, digits, '-', '_' and '.'), {fix}"
                )
    for name in src.overlay_names():
        if (problem := file_name_problem(name)) is not None:
            raise DatasetFormatError(f"dataset {src.uri} has an overlay named {name!r} ({problem}), {fix}")


def _check_source(src: StoredDataSet) -> None:
    """Refuse to copy a source whose metadata names are unusable, whose items are symlinks or
    that does not match its manifest."""
    _check_names(src)
    linked = src.symlinked_items()
    if linked:
        raise DatasetFormatError(
            f"dataset {src.uri} has {len(linked)} item(s) that are symlinks (e.g. "
            f"{', '.join(linked[:5])}): their content is outside the dataset, so it is not "
            "copied. Replace each link by the file itself and check the dataset"
        )
    report = src.verify()
    if not report.ok:
        problems = report.problems()
        raise IntegrityError(
            f"dataset {src.uri} does not match its manifest ({'; '.join(problems[:5])}"
            f"{'; ...' if len(problems) > 5 else ''}): it is not copied. Restore the items "
            "from the original, or `reprodl dataset verify` it to see every change",
            problems=problems,
        )


def _check_copied(src: StoredDataSet, items: dict[str, Any], dest_uri: str) -> None:
    """Refuse a copy whose written items differ from the source's manifest."""
    copied = {p["relpath"]: (p["size_in_bytes"], p["hash"]) for p in items.values()}
    expected = {p["relpath"]: (p["size_in_bytes"], p["hash"]) for p in src._items.values()}
    problems = sorted(
        [f"content altered: {rel}" for rel in expected if rel in copied and copied[rel] != expected[rel]]
        + [f"missing: {rel}" for rel in expected.keys() - copied.keys()]
        + [f"added: {rel}" for rel in copied.keys() - expected.keys()]
    )
    if problems:
        raise IntegrityError(
            f"dataset {src.uri} does not match its manifest ({'; '.join(problems[:5])}"
            f"{'; ...' if len(problems) > 5 else ''}): the copy to {dest_uri} was discarded. "
            "Restore the items from the original, or `reprodl dataset verify --deep` it",
            problems=problems,
        )


def _dataset_present(uri: str) -> bool:
    """Whether anything (a dataset or an unfinished copy) already sits at ``uri``."""
    path = local_path(uri)
    if path is not None:
        return path.exists()
    try:
        return bool(storage_broker(uri).has_admin_metadata())
    except Exception as exc:
        raise _remote_error(uri, exc) from exc


def _remove_partial(uri: str) -> bool:
    """Remove a half-written dataset at ``uri``; True when nothing of it is left."""
    path = local_path(uri)
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)
        return not path.exists()
    try:
        broker = storage_broker(uri)
        client, bucket = broker.s3client, broker.bucket
        keys = []
        pages = client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=f"{broker._get_prefix()}{broker.uuid}/"
        )
        for page in pages:
            keys += [obj["Key"] for obj in page.get("Contents", [])]
        # The registration key last: while it exists the leftovers can still be found.
        keys.append(broker.dataset_registration_key)
        for i in range(0, len(keys), 1000):
            client.delete_objects(
                Bucket=bucket,
                Delete={"Objects": [{"Key": k} for k in keys[i : i + 1000]], "Quiet": True},
            )
        return True
    except Exception:  # noqa: BLE001 - best effort; the copy's own error is reported
        return False


def copy_dataset(uri: str, dest_base_uri: str, *, progress: Progress | None = None) -> str:
    """Copy a dataset to another base URI (a directory or s3://bucket); returns the new URI.

    The copy keeps the UUID, the items and so the manifest digest. A copy that fails
    part-way is removed; an existing dataset is never overwritten. ``progress`` is called
    once per item copied.

    Example:
        >>> copy_dataset("/data/digits", "s3://my-bucket")     # doctest: +SKIP
        's3://my-bucket/1c10766c-...'
    """
    src = open_dataset(uri)
    dest = normalise_uri(dest_base_uri)
    scheme = urlparse(dest).scheme
    if scheme in ("http", "https"):
        raise InvalidURIError(f"cannot copy to {dest}: http(s):// is read-only. Copy to a directory or s3://")
    path = local_path(dest)
    if path is not None:
        if not path.is_dir():
            raise StorageError(f"base URI {dest} is not an existing directory: create {path} first")
        if (path / src.name).exists():
            raise DatasetExistsError(
                f"a dataset called {src.name!r} already exists at {path / src.name}: "
                "choose another base or remove it first (reprodl never overwrites)"
            )
    else:
        _probe_remote_base(dest)
    return _copy_to(src, dest, progress=progress)


def list_datasets(base_uri: str) -> list[str]:
    """URIs of the datasets under a base URI."""
    base = normalise_uri(base_uri)
    _check_broker(base)
    if urlparse(base).scheme in ("http", "https"):
        raise InvalidURIError(
            f"cannot list the datasets under {base}: an http(s) server serves datasets one by one and "
            "lists none. Give a dataset's own URI (e.g. `reprodl dataset info URI`), or list the "
            "directory or bucket it is published from"
        )
    try:
        return sorted(frozen_dataset_uris(base))
    except Exception as exc:
        if local_path(base) is None:
            raise _remote_error(base, exc) from exc
        raise StorageError(f"could not list datasets under {base}: {exc}") from exc
