"""The reprodl error for an exception a remote storage broker raised.

dtool-http and dtool-s3 raise untyped exceptions (requests, botocore, their own); these
helpers read the HTTP status or S3 error code they carry and say what to do about it.
"""

from __future__ import annotations

from urllib.parse import urlparse

from reprodl.errors import DatasetNotFoundError, ReprodlError, StorageError


class _ItemMissingError(StorageError):
    """A remote dataset's server lacks one of its items (verify reports it as missing)."""


def _error_code(exc: BaseException) -> str:
    """The HTTP status or S3 error code carried by a broker's exception ('' if none)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):  # botocore ClientError
        return str(response.get("Error", {}).get("Code", ""))
    if response is not None and getattr(response, "status_code", None):  # requests
        return str(response.status_code)
    if type(exc).__name__ == "HTTPError" and exc.args:  # dtool_http.storagebroker.HTTPError
        return str(exc.args[0])
    return ""


def _s3_settings_hint(bucket: str) -> str:
    return (
        f"set DTOOL_S3_ENDPOINT_{bucket}, DTOOL_S3_ACCESS_KEY_ID_{bucket} and "
        f"DTOOL_S3_SECRET_ACCESS_KEY_{bucket} (environment or dtool config), or configure "
        "AWS credentials"
    )


def _remote_error(uri: str, exc: BaseException) -> ReprodlError:
    """The reprodl error for an exception a remote broker raised (they are untyped)."""
    if isinstance(exc, ReprodlError):
        return exc
    parsed = urlparse(uri)
    code = _error_code(exc)
    if parsed.scheme == "s3":
        bucket = parsed.netloc
        if code in ("NoSuchKey", "404"):
            return DatasetNotFoundError(
                f"no dataset at {uri}: bucket {bucket!r} has no dataset with UUID "
                f"{parsed.path.strip('/')!r}. Check the URI (s3://<bucket>/<uuid>); "
                f"`dtool ls s3://{bucket}` lists what is there"
            )
        if code == "NoSuchBucket":
            return StorageError(
                f"the bucket {bucket!r} of {uri} does not exist on its server: create it or correct the bucket name"
            )
        if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return StorageError(
                f"access to bucket {bucket!r} was refused ({code}) for {uri}: check the "
                f"credentials; {_s3_settings_hint(bucket)}"
            )
        if type(exc).__name__ in ("NoCredentialsError", "PartialCredentialsError") or (
            isinstance(exc, RuntimeError) and "DTOOL_S3_ENDPOINT" in str(exc)
        ):
            return StorageError(f"no S3 credentials for {uri}: {_s3_settings_hint(bucket)}")
    elif parsed.scheme in ("http", "https") and code in ("400", "404", "410"):
        # dtool-http's server answers 400 where the directory is not a dataset.
        return DatasetNotFoundError(
            f"no dataset at {uri}: the server answered HTTP {code} for "
            f"{uri}/http_manifest.json. Check the URI: it is the served dataset's directory "
            "(or a `dtool publish` URL)"
        )
    elif parsed.scheme in ("http", "https") and code:
        return StorageError(
            f"the server of {uri} answered HTTP {code}: it is not serving a dtool dataset there. Check the URI"
        )
    return StorageError(
        f"could not reach the dataset at {uri}: {type(exc).__name__}: {exc}. "
        "Check the server is running and the URI is right"
    )
