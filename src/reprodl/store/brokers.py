"""dtoolcore itself: the one handle on it, storage brokers by scheme, dtool's cache.

dtoolcore finds a URI's storage broker by reading every installed package's entry points
(about 2 ms, a dozen times per training or reproduction), and loading every broker plugin
(dtool-s3 brings boto3, dtool-http requests: about 140 ms of start-up for a command that
only reads a local dataset). The store instead resolves brokers here, through
:func:`broker_class` (the entry points read once per process, file:// answered without
loading any plugin, http(s):// answered with bounded brokers, see
:mod:`reprodl.store.http`), and builds dtoolcore's dataset objects on those brokers
(:func:`frozen_dataset`, :func:`proto_dataset`). Nothing in dtoolcore is replaced: a
program's own dtoolcore calls behave as they would without reprodl.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlparse

from reprodl.errors import InvalidURIError
from reprodl.store.http import bounded_broker

# scheme -> broker class of every installed plugin, as dtoolcore's lookup gives it; read once.
_INSTALLED: dict[str, Any] = {}
_BOUNDED: dict[str, Any] = {}  # http/https -> dtool-http's broker with bounded requests


def _dtoolcore() -> Any:
    """The dtoolcore module (imported on first use: importing reprodl.store imports none)."""
    import dtoolcore

    return dtoolcore


def _installed_brokers() -> dict[str, Any]:
    """Every installed storage broker by scheme, from dtoolcore's own lookup, once per process."""
    if not _INSTALLED:
        _INSTALLED.update(_dtoolcore()._generate_storage_broker_lookup())
    return _INSTALLED


def broker_class(uri: str) -> Any:
    """The storage-broker class for ``uri``'s scheme (as dtoolcore would choose it).

    ``file`` is dtoolcore's own DiskStorageBroker (its entry point, ``key = "file"``), so it
    needs no plugin loaded; http(s) gets dtool-http's broker with bounded requests.

    Raises:
        InvalidURIError: no broker for the scheme is installed, naming the package to install.
    """
    scheme = urlparse(uri).scheme
    if scheme == "file":
        from dtoolcore.storagebroker import DiskStorageBroker

        return DiskStorageBroker
    if scheme in _BOUNDED:
        return _BOUNDED[scheme]
    broker = _installed_brokers().get(scheme)
    if broker is None:
        plugin = {"s3": "dtool-s3 (pip install 'reprodl[s3]')"}.get(scheme, "dtool-http")
        raise InvalidURIError(f"no dtool storage broker for {scheme}:// URIs such as {uri}: install {plugin}")
    if scheme in ("http", "https"):
        # dtool-http's requests have no timeout and no size limit: use bounded ones.
        broker = _BOUNDED[scheme] = bounded_broker(broker)
    return broker


def _check_broker(uri: str) -> None:
    """Refuse a URI whose scheme has no dtool storage broker installed."""
    broker_class(uri)


def storage_broker(uri: str) -> Any:
    """A storage broker for the dataset (or base) at ``uri``, as dtoolcore would make it."""
    uri = _dtoolcore().utils.sanitise_uri(uri)
    return broker_class(uri)(uri, None)


def _on_broker(cls: Any, uri: str, admin: dict[str, Any], broker: Any) -> Any:
    """A dtoolcore ``cls`` (DataSet or ProtoDataSet) on ``broker``: what ``cls(uri, admin)``
    builds, without dtoolcore's per-call broker lookup (``_BaseDataSet.__init__``)."""
    dataset = cls.__new__(cls)
    dataset._uri = _dtoolcore().utils.sanitise_uri(uri)
    dataset._admin_metadata = admin
    dataset._storage_broker = broker
    if issubclass(cls, _dtoolcore().DataSet):
        dataset._manifest_cache = None
    return dataset


def frozen_dataset(uri: str, admin: dict[str, Any] | None = None, broker: Any = None) -> Any:
    """The ``dtoolcore.DataSet`` at ``uri`` (admin metadata and broker read when not given).

    Raises:
        dtoolcore.DtoolCoreTypeError: nothing at ``uri``, or not a frozen dataset (as
            ``DataSet.from_uri`` does).
    """
    dtoolcore = _dtoolcore()
    broker = broker if broker is not None else storage_broker(uri)
    if admin is None:
        if not broker.has_admin_metadata():
            raise dtoolcore.DtoolCoreTypeError(f"{uri} is not a dataset")
        admin = broker.get_admin_metadata()
        if admin["type"] != "dataset":
            raise dtoolcore.DtoolCoreTypeError(f"{uri} is not a DataSet")
    return _on_broker(dtoolcore.DataSet, uri, admin, broker)


def dataset_uri_in(admin: dict[str, Any], base_uri: str) -> str:
    """The URI a dataset with this admin metadata gets under ``base_uri`` (dtoolcore's rule)."""
    return broker_class(base_uri).generate_uri(admin["name"], admin["uuid"], base_uri)


def proto_dataset(admin: dict[str, Any], base_uri: str) -> Any:
    """A ``dtoolcore.ProtoDataSet`` for ``admin`` under ``base_uri`` (not yet created)."""
    uri = dataset_uri_in(admin, base_uri)
    return _on_broker(_dtoolcore().ProtoDataSet, uri, admin, storage_broker(uri))


def frozen_dataset_uris(base_uri: str) -> list[str]:
    """URIs of the frozen datasets under ``base_uri`` (as ``iter_datasets_in_base_uri`` lists them)."""
    dtoolcore = _dtoolcore()
    base_uri = dtoolcore.utils.sanitise_uri(base_uri)
    config_path = dtoolcore.utils.DEFAULT_CONFIG_PATH
    uris = []
    for uri in broker_class(base_uri).list_dataset_uris(base_uri, config_path):
        try:
            uris.append(frozen_dataset(uri).uri)
        except dtoolcore.DtoolCoreTypeError:
            pass  # a proto dataset: not listed
    return uris


def _cache_root() -> str:
    """dtool's cache directory for remote items (DTOOL_CACHE_DIRECTORY)."""
    from dtoolcore.utils import DEFAULT_CACHE_PATH, get_config_value

    return os.path.abspath(get_config_value("DTOOL_CACHE_DIRECTORY", default=DEFAULT_CACHE_PATH))
