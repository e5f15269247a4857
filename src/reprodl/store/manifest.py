"""A dataset's manifest items held compactly, and an index of them kept in the cache.

dtoolcore reads a manifest into one dict per item: at 10^6 items that is ~2 s of JSON and
~700 MiB. :class:`ItemTable` keeps the same items as parallel columns in relpath order
(one string per identifier, relpath and hash; sizes and timestamps as lists), so the
identifier -> row map is the only per-item mapping, ``identifiers`` comes sorted for free
and the manifest digest is computed once. It is a read-only ``Mapping`` of identifier ->
manifest entry, so code written for dtoolcore's dict works on it unchanged.

For a local dataset whose ``manifest.json`` is large (:data:`INDEX_MIN_BYTES`), the table
is also written to an index in reprodl's part of dtool's cache
(``<cache>/reprodl-manifest-index/<uuid>-<key>.npz``, arrays only, read without pickle),
keyed by the manifest file's device, inode, size and modification time: the next open
reads the index (a fraction of a second) instead of the JSON. A frozen dataset's manifest
never changes; an edited one has another key, so its stale index is never used.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from reprodl.errors import DatasetFormatError
from reprodl.store.hashing import canonical_json

INDEX_MIN_BYTES = 8 << 20  # manifests this large (~40,000 items) get an index in the cache
INDEX_DIR = "reprodl-manifest-index"
_FORMAT = 1
_KEYS = {"relpath", "size_in_bytes", "hash", "utc_timestamp"}
_SEP = "\0"  # no relpath, identifier or (regular) hash holds a NUL


class ItemTable(Mapping[str, dict[str, Any]]):
    """Manifest items as columns in relpath order: a read-only identifier -> entry mapping."""

    def __init__(
        self,
        ids: list[str],
        relpaths: list[str],
        sizes: list[int],
        hashes: list[str] | Callable[[], list[str]],
        stamps: list[float | None],
        *,
        digest: str | None = None,
    ) -> None:
        self.ids = ids
        self.relpaths = relpaths
        self.sizes = sizes
        self._hashes = hashes  # or a function that makes them: read from an index on first use
        self.stamps = stamps
        self._row: dict[str, int] | None = None
        self.digest = digest

    @property
    def row(self) -> dict[str, int]:
        """identifier -> row, built on the first lookup (~1 s at 10^6 items), not at open."""
        if self._row is None:
            self._row = dict(zip(self.ids, range(len(self.ids))))
        return self._row

    @property
    def hashes(self) -> list[str]:
        if callable(self._hashes):
            self._hashes = self._hashes()
        return self._hashes

    @classmethod
    def from_items(cls, items: dict[str, Any]) -> ItemTable | None:
        """The table of a dtool manifest's ``items``; None when an entry is irregular (other
        keys or types than dtool writes): such a manifest is kept as it is."""
        rows = []
        for idn, props in items.items():
            size, md5, ts = props.get("size_in_bytes"), props.get("hash"), props.get("utc_timestamp")
            if (
                not props.keys() <= _KEYS
                or type(size) is not int
                or size < 0
                or type(md5) is not str
                or _SEP in md5
                or not (ts is None or type(ts) in (int, float))
            ):
                return None
            rows.append((props["relpath"], idn, size, md5, None if ts is None else float(ts)))
        rows.sort(key=lambda r: r[0])
        relpaths, ids, sizes, hashes, stamps = (list(c) for c in zip(*rows)) if rows else ([], [], [], [], [])
        return cls(ids, relpaths, sizes, hashes, stamps)

    # --- Mapping --------------------------------------------------------------------------
    def __getitem__(self, identifier: str) -> dict[str, Any]:
        i = self.row[identifier]
        entry: dict[str, Any] = {"relpath": self.relpaths[i], "size_in_bytes": self.sizes[i], "hash": self.hashes[i]}
        if self.stamps[i] is not None:
            entry["utc_timestamp"] = self.stamps[i]
        return entry

    def __iter__(self) -> Iterator[str]:
        return iter(self.ids)

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, identifier: object) -> bool:
        return identifier in self.row

    def relpath(self, identifier: str) -> str:
        return self.relpaths[self.row[identifier]]

    def manifest_digest(self, hash_function: str) -> str:
        """sha256 over (relpath, size, hash) in relpath order: see StoredDataSet.manifest_digest."""
        if self.digest is None:
            entries = list(zip(self.relpaths, self.sizes, self.hashes))  # tuples: JSON arrays
            payload = canonical_json({"hash_function": hash_function, "items": entries})
            self.digest = "sha256:" + hashlib.sha256(payload).hexdigest()
        return self.digest


# --- the index in the cache -----------------------------------------------------------------
def index_path(cache_root: str, uuid: str, manifest_path: str) -> str | None:
    """Where the index of this manifest file lives (None when it is too small for one)."""
    try:
        st = os.stat(manifest_path)
    except OSError:
        return None
    if st.st_size < INDEX_MIN_BYTES:
        return None
    key = hashlib.sha256(f"{_FORMAT}|{st.st_dev}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()
    return os.path.join(cache_root, INDEX_DIR, f"{uuid}-{key[:24]}.npz")


def read_index(path: str) -> tuple[ItemTable, str] | None:
    """The table and hash function stored at ``path``; None when absent or unreadable."""
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as npz:
            meta = json.loads(npz["meta"].tobytes().decode())
            ids = _split(npz["ids"])
            relpaths = _split(npz["relpaths"])
            blob = npz["hashes"]
            sizes = npz["sizes"].tolist()
            stamps_arr = npz["stamps"]
    except (OSError, ValueError, KeyError):
        return None
    n = len(ids)
    if meta.get("format") != _FORMAT or not (len(relpaths) == len(sizes) == len(stamps_arr) == n):
        return None

    def hashes() -> list[str]:
        column = _split(blob)
        if len(column) != n:
            raise DatasetFormatError(f"the manifest index {path} is damaged: remove it (it is rebuilt)")
        return column

    stamps = [None if s != s else s for s in stamps_arr.tolist()]  # NaN marks "no timestamp"
    table = ItemTable(ids, relpaths, sizes, hashes, stamps, digest=meta.get("digest"))
    return table, str(meta.get("hash_function", "md5sum_hexdigest"))


def write_index(path: str, table: ItemTable, hash_function: str) -> None:
    """Write the index atomically; a cache that cannot be written is skipped silently."""
    import numpy as np

    meta = {"format": _FORMAT, "hash_function": hash_function, "digest": table.manifest_digest(hash_function)}
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(tmp, "wb") as fh:
            np.savez(
                fh,
                meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
                ids=_joined(table.ids),
                relpaths=_joined(table.relpaths),
                hashes=_joined(table.hashes),
                sizes=np.asarray(table.sizes, dtype=np.int64),
                stamps=np.asarray([np.nan if s is None else s for s in table.stamps], dtype=np.float64),
            )
        os.replace(tmp, path)
    except (OSError, OverflowError):
        pass  # an index only saves time: without one the manifest is read as usual
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _joined(strings: list[str]) -> Any:
    import numpy as np

    return np.frombuffer(_SEP.join(strings).encode("utf-8", "surrogatepass"), dtype=np.uint8)


def _split(blob: Any) -> list[str]:
    text = blob.tobytes().decode("utf-8", "surrogatepass")
    return text.split(_SEP) if text else []
