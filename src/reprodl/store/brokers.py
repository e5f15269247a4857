"""dtoolcore itself: the one handle on it, its storage-broker lookup, dtool's cache.

Every module of the store reaches dtoolcore through :func:`_dtoolcore`, which installs the
broker lookup below into dtoolcore once: computed once per process, and answering file://
without importing the other brokers' plugins (dtool-s3 brings boto3, dtool-http requests:
about 140 ms of start-up for a command that only reads a local dataset).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlparse

from reprodl.errors import InvalidURIError


def _dtoolcore():
    import dtoolcore

    if not getattr(dtoolcore._generate_storage_broker_lookup, "_reprodl_cached", False):
        dtoolcore._generate_storage_broker_lookup = _cached_broker_lookup(dtoolcore._generate_storage_broker_lookup)
    return dtoolcore


class _BrokerLookup(Mapping):
    """scheme -> storage-broker class, as dtoolcore's lookup gives it, loaded lazily.

    ``file`` is dtoolcore's own DiskStorageBroker (its entry point, ``key = "file"``), so
    it is answered without loading any plugin; any other scheme, and listing the schemes,
    loads every installed plugin through dtoolcore's lookup (``load``).
    """

    def __init__(self, load: Any, bounded: dict[str, Any]) -> None:
        self._load = load
        self._bounded = bounded

    def __getitem__(self, scheme: str) -> Any:
        if scheme == "file":
            from dtoolcore.storagebroker import DiskStorageBroker

            return DiskStorageBroker
        broker = self._load()[scheme]
        if scheme in ("http", "https"):
            # dtool-http's requests have no timeout and no size limit: hand out bounded ones.
            if scheme not in self._bounded:
                from reprodl.store.http import bounded_broker

                self._bounded[scheme] = bounded_broker(broker)
            return self._bounded[scheme]
        return broker

    def __iter__(self) -> Iterator[str]:
        return iter(self._load())

    def __len__(self) -> int:
        return len(self._load())


def _cached_broker_lookup(generate: Any) -> Any:
    """dtoolcore's storage-broker lookup, computed once per process.

    dtoolcore re-reads every installed package's entry points on each dataset open, freeze
    and broker call (about 2 ms each, a dozen times per training or reproduction); the
    brokers installed do not change while a process runs. Callers get a read-only mapping
    in which file:// needs no plugin loaded and http(s):// gets bounded brokers (see
    :class:`_BrokerLookup` and :mod:`reprodl.store.http`).
    """
    cache: dict[str, Any] = {}
    bounded: dict[str, Any] = {}

    def load() -> dict[str, Any]:
        if "brokers" not in cache:
            cache["brokers"] = generate()
        return cache["brokers"]

    def lookup() -> Mapping:
        return _BrokerLookup(load, bounded)

    lookup._reprodl_cached = True  # type: ignore[attr-defined]  # a marker attribute on a function
    lookup.__wrapped__ = generate  # type: ignore[attr-defined]  # as functools.wraps sets it
    return lookup


def _check_broker(uri: str) -> None:
    """Refuse a URI whose scheme has no dtool storage broker installed."""
    scheme = urlparse(uri).scheme
    if scheme not in _dtoolcore()._generate_storage_broker_lookup():
        plugin = {"s3": "dtool-s3 (pip install 'reprodl[s3]')"}.get(scheme, "dtool-http")
        raise InvalidURIError(f"no dtool storage broker for {scheme}:// URIs such as {uri}: install {plugin}")


def _cache_root() -> str:
    """dtool's cache directory for remote items (DTOOL_CACHE_DIRECTORY)."""
    from dtoolcore.utils import DEFAULT_CACHE_PATH, get_config_value

    return os.path.abspath(get_config_value("DTOOL_CACHE_DIRECTORY", default=DEFAULT_CACHE_PATH))
