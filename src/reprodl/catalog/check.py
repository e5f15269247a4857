"""``reprodl catalog check``: is every catalogued dataset still where, and what, the catalog says?

Each location is opened again and judged:

* ``ok``: the same UUID and manifest digest, and (a model) a record whose digest matches both
  its content and the catalogued one; with ``deep``, every item re-hashed too;
* ``changed``: something is there with the UUID but another manifest, or an altered or
  another record, or items that no longer match their manifest;
* ``moved``: nothing is at the URI, but a dataset with the UUID and manifest is found under
  the same base URI (``new_uri``);
* ``vanished``: nothing is at the URI, nor under its base;
* ``unreachable``: the storage could not be asked (a server down): nothing is concluded.

With ``update``, moved locations are rewritten and vanished ones forgotten.

Example:
    >>> [r.status for r in check(cat)]          # doctest: +SKIP
    ['ok', 'moved', 'vanished']
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from reprodl.catalog.db import Catalog
from reprodl.catalog.entry import Entry
from reprodl.errors import DatasetNotFoundError, ReprodlError, StorageError
from reprodl.store import StoredDataSet, list_datasets, open_dataset

STATUSES = ("ok", "changed", "moved", "vanished", "unreachable")


@dataclasses.dataclass
class LocationCheck:
    """What :func:`check` found at one catalogued URI."""

    uri: str
    uuid: str
    name: str
    kind: str
    status: str
    detail: str = ""
    new_uri: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _problems(entry: Entry, ds: StoredDataSet, *, deep: bool) -> list[str]:
    """Why the dataset opened at a location is not the catalogued one ([] when it is)."""
    if ds.uuid != entry.uuid:
        return [f"another dataset is there (UUID {ds.uuid}, catalogued {entry.uuid})"]
    problems = []
    digest = ds.manifest_digest()
    if digest != entry.manifest_digest:
        problems.append(f"manifest digest {digest} differs from the catalogued {entry.manifest_digest}")
    if entry.kind == "model" and entry.record_digest is not None:  # a dtoolAI model has no record
        problems += _record_problems(entry, ds)
    if deep or ds.is_local:  # a quick check of local items (sizes, re-hash of touched files)
        problems += ds.verify(deep=deep).problems()
    return problems


def _record_problems(entry: Entry, ds: StoredDataSet) -> list[str]:
    from reprodl.modeldataset.read import read_record

    try:
        record = read_record(ds, check=False)
        record.check_digest()
    except ReprodlError as exc:
        return [f"record: {exc}"]
    if record.digest != entry.record_digest:
        return [f"record digest {record.digest} differs from the catalogued {entry.record_digest}"]
    return []


class _BaseIndex:
    """Datasets under a base URI by (UUID, manifest digest), listed once per base when needed."""

    def __init__(self) -> None:
        self._bases: dict[str, dict[tuple[str, str], list[str]]] = {}

    def find(self, base: str | None, entry: Entry) -> str | None:
        """A URI under ``base`` of the entry's dataset that the catalog does not know yet."""
        if base is None:
            return None
        if base not in self._bases:
            found: dict[tuple[str, str], list[str]] = {}
            try:
                uris = list_datasets(base)
            except ReprodlError:
                uris = []
            for uri in uris:
                try:
                    ds = open_dataset(uri)
                except ReprodlError:
                    continue
                found.setdefault((ds.uuid, ds.manifest_digest()), []).append(ds.uri)
            self._bases[base] = found
        known = set(entry.uris)  # another copy the catalog has is not where this one went
        return next((u for u in self._bases[base].get((entry.uuid, entry.manifest_digest), []) if u not in known), None)


def _check_one(uri: str, entry: Entry, base: str | None, index: _BaseIndex, *, deep: bool) -> LocationCheck:
    result = LocationCheck(uri=uri, uuid=entry.uuid, name=entry.name, kind=entry.kind, status="ok")
    try:
        ds = open_dataset(uri)
    except DatasetNotFoundError:
        result.new_uri = index.find(base, entry)
        result.status = "moved" if result.new_uri else "vanished"
        result.detail = f"now at {result.new_uri}" if result.new_uri else f"nothing at {uri} nor under {base}"
        return result
    except StorageError as exc:
        result.status, result.detail = "unreachable", str(exc)
        return result
    except ReprodlError as exc:  # a damaged or unfinished dataset is there
        result.status, result.detail = "changed", str(exc)
        return result
    problems = _problems(entry, ds, deep=deep)
    if problems:
        result.status, result.detail = "changed", "; ".join(problems[:10])
    return result


def check(
    cat: Catalog,
    *,
    deep: bool = False,
    update: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> list[LocationCheck]:
    """Check every catalogued location (see the module docstring); one result each, by URI."""
    locations = cat.locations()
    ids = list(dict.fromkeys(eid for _, eid, _ in locations))
    entries = dict(zip(ids, cat.entries(ids)))
    index = _BaseIndex()
    results = []
    for n, (uri, eid, base) in enumerate(locations, 1):
        result = _check_one(uri, entries[eid], base, index, deep=deep)
        results.append(result)
        if update and result.status == "moved" and result.new_uri:
            cat.move_location(uri, result.new_uri)
        elif update and result.status == "vanished":
            cat.remove_location(uri)
        if progress is not None:
            progress(n, len(locations))
    return results
