"""dtool-http's storage broker with every request bounded in time and size.

dtool-http calls ``requests.get`` without a timeout and reads whole responses, so a server
that accepts a connection and never answers hangs ``open_dataset`` forever, and one that
sends an endless manifest fills memory. :func:`bounded_broker` gives subclasses of its
brokers whose every request has a connect and a read timeout (:func:`http_timeout`,
``REPRODL_HTTP_TIMEOUT``), whose responses are read up to a size limit, and whose JSON is
parsed within :mod:`reprodl.parsing`'s bounds. The store's broker lookup hands these out
for http:// and https:// (see :mod:`reprodl.store.brokers`).
"""

from __future__ import annotations

import os
from typing import Any

from reprodl import keys
from reprodl.errors import (
    DatasetFormatError,
    ParametersError,
    ReprodlError,
    StorageError,
)
from reprodl.parsing import load_json

_DEFAULT_TIMEOUT = (10.0, 60.0)  # seconds to connect, seconds between bytes
_CHUNK = 1 << 16


def http_timeout() -> tuple[float, float]:
    """(connect, read) timeouts in seconds: ``REPRODL_HTTP_TIMEOUT`` ("5" or "5,30"), else (10, 60)."""
    raw = os.environ.get(keys.HTTP_TIMEOUT_ENV, "").strip()
    if not raw:
        return _DEFAULT_TIMEOUT
    try:
        values = [float(v) for v in raw.split(",")]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or not all(0 < v < 1e6 for v in values):
        raise ParametersError(
            f"{keys.HTTP_TIMEOUT_ENV}={raw!r} should be seconds (e.g. 10) or connect,read seconds "
            "(e.g. 5,60), each positive"
        )
    return (values[0], values[-1])


def read_capped(response: Any, limit: int, *, what: str, error: type[ReprodlError] = StorageError) -> bytes:
    """The body of a streamed ``requests`` response, refusing more than ``limit`` bytes."""
    declared = response.headers.get("Content-Length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        raise error(
            f"{what} is {int(declared):,} bytes, over reprodl's limit of {limit:,} bytes: "
            "refused (check that the URI points at a dataset you trust)"
        )
    body = bytearray()
    for chunk in response.iter_content(_CHUNK):
        body += chunk
        if len(body) > limit:
            raise error(
                f"{what} is over reprodl's limit of {limit:,} bytes: refused "
                "(check that the URI points at a dataset you trust)"
            )
    return bytes(body)


# What a published dataset's http_manifest.json holds (dtool-http's server and `dtool publish`).
_HTTP_MANIFEST_FIELDS: dict[str, type] = {
    "admin_metadata": dict,
    "manifest_url": str,
    "readme_url": str,
    "item_urls": dict,
}
_HTTP_MANIFEST_OPTIONAL: dict[str, type] = {"overlays": dict, "annotations": dict, "tags": list}


def check_http_manifest(manifest: Any, url: str) -> None:
    """Refuse an http manifest without the fields dtool-http reads, naming the missing one."""
    fix = "it was edited or published incompletely: publish the dataset again (`dtool publish`), or check the URI"
    if not isinstance(manifest, dict):
        raise DatasetFormatError(f"the http manifest {url} is a JSON {type(manifest).__name__}, not an object: {fix}")
    for field, kind in {**_HTTP_MANIFEST_FIELDS, **_HTTP_MANIFEST_OPTIONAL}.items():
        if field not in manifest and field in _HTTP_MANIFEST_FIELDS:
            raise DatasetFormatError(f"the http manifest {url} has no {field!r}: {fix}")
        if field in manifest and not isinstance(manifest[field], kind):
            raise DatasetFormatError(
                f"the http manifest {url} has a {field!r} that is a {type(manifest[field]).__name__}, "
                f"not a {kind.__name__}: {fix}"
            )


class _BoundedHTTP:
    """The methods of dtool-http's HTTPStorageBroker that make requests, bounded."""

    _uri: str
    http_manifest: dict[str, Any]  # set by dtool-http's HTTPStorageBroker.__init__

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        check_http_manifest(self.http_manifest, f"{self._uri.rstrip('/')}/http_manifest.json")

    def item_url(self, identifier: str, relpath: str) -> str:
        """The URL of an item, refused by name when the http manifest lists none for it."""
        url = self.http_manifest["item_urls"].get(identifier)
        if not isinstance(url, str):
            raise DatasetFormatError(
                f"the http manifest {self._uri.rstrip('/')}/http_manifest.json has no URL for the item {relpath!r} "
                f"(identifier {identifier}), which the dataset's manifest lists: it was edited or published "
                "incompletely. Publish the dataset again (`dtool publish`), or use another copy"
            )
        return url

    def _get_base_uri(self, parse_result: Any) -> str:
        import requests

        # Only the final URL after redirects is wanted: the body is never read.
        with requests.get(parse_result._replace(query="").geturl(), stream=True, timeout=http_timeout()) as r:
            return r.url

    def _get_request(self, url: str, stream: bool = False) -> Any:
        import requests
        from dtool_http.storagebroker import HTTPError

        r = requests.get(url, stream=True, timeout=http_timeout())
        if r.status_code != 200:
            r.close()
            raise HTTPError(r.status_code)
        return r

    def _get_bytes(self, url: str, limit: int, *, error: type[ReprodlError] = StorageError) -> bytes:
        with self._get_request(url, stream=True) as r:
            return read_capped(r, limit, what=url, error=error)

    def _get_text_from_url(self, url: str) -> str:
        return self._get_bytes(url, keys.MAX_METADATA_BYTES).decode("utf-8", "replace")

    def _get_json_from_url(self, url: str) -> Any:
        return load_json(self._get_bytes(url, keys.MAX_METADATA_BYTES), what=url, error=DatasetFormatError)

    def get_readme_content(self) -> str:
        url = self.http_manifest["readme_url"]
        return self._get_bytes(url, keys.MAX_README_BYTES, error=DatasetFormatError).decode("utf-8", "replace")


def bounded_broker(broker: type) -> type:
    """A subclass of dtool-http's ``broker`` class whose requests are bounded (see module doc)."""
    return type(broker.__name__, (_BoundedHTTP, broker), {"__module__": __name__, "__doc__": broker.__doc__})
