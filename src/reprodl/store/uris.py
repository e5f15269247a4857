"""URIs, dataset names and item relpaths: parsing and checking, no I/O on datasets.

Example:
    >>> normalise_uri("s3://bucket/abc/")
    's3://bucket/abc'
    >>> check_relpath("cat/0.png")
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import unquote, urlparse

from reprodl.errors import InvalidNameError, InvalidURIError

SCHEMES = ("file", "http", "https", "s3")


def normalise_uri(uri: str | os.PathLike[str]) -> str:
    """Return a full URI for a plain path or URI, refusing schemes dtool cannot read.

    Example:
        >>> normalise_uri("s3://bucket/abc")
        's3://bucket/abc'
    """
    text = os.fspath(uri)
    if not text:
        raise InvalidURIError("empty URI: give a path or a file://, http(s):// or s3:// URI")
    if "\0" in text:
        raise InvalidURIError(f"the URI {text!r} holds a NUL character: no path or URL can")
    try:
        parsed = urlparse(text)
    except ValueError as exc:  # "Invalid IPv6 URL": an unbalanced '[' in the host
        raise InvalidURIError(f"{text!r} is not a URI reprodl can parse ({exc}): check its host part") from None
    if parsed.scheme == "" or len(parsed.scheme) == 1:
        return f"file://{socket.gethostname()}{os.path.abspath(text)}"
    if parsed.scheme not in SCHEMES:
        raise InvalidURIError(
            f"unsupported URI scheme {parsed.scheme!r} in {text!r}: "
            f"use a path or one of {', '.join(s + '://' for s in SCHEMES)}"
        )
    if parsed.scheme == "file":
        path = unquote(parsed.path)
        if not path.startswith("/"):
            raise InvalidURIError(f"{text!r}: a file:// URI needs an absolute path (file:///data/x or a plain path)")
        return f"file://{parsed.netloc or socket.gethostname()}{path}"
    if not parsed.netloc:
        what = "bucket" if parsed.scheme == "s3" else "host"
        raise InvalidURIError(
            f"{text!r} names no {what}: write {parsed.scheme}://<{what}>/... "
            f"(e.g. {'s3://my-bucket' if what == 'bucket' else 'https://example.org/datasets/name'})"
        )
    return text.rstrip("/")


def scheme_of(uri: str) -> str:
    """The scheme of a URI or path (a plain path is ``file``)."""
    return urlparse(normalise_uri(uri)).scheme


def local_path(uri: str) -> Path | None:
    """The filesystem path of a file:// URI (or plain path); None for remote URIs."""
    full = normalise_uri(uri)
    parsed = urlparse(full)
    return Path(unquote(parsed.path)) if parsed.scheme == "file" else None


def dataset_uri(base_uri: str, name: str) -> str:
    """The URI a dataset called ``name`` gets under ``base_uri`` (file:// bases)."""
    path = local_path(base_uri)
    if path is None:
        raise InvalidURIError(f"dataset_uri works for file bases only, not {base_uri}")
    return normalise_uri(str(path / name))


def name_is_valid(name: str) -> bool:
    """Whether dtool allows ``name`` as a dataset name."""
    import dtoolcore.utils

    return bool(name) and name not in (".", "..") and dtoolcore.utils.name_is_valid(name)


def check_name(name: str) -> None:
    """Refuse (InvalidNameError) a dataset name dtool does not allow."""
    if name in (".", ".."):
        raise InvalidNameError(
            f"dataset name {name!r} is not allowed: it names a directory (this one or its parent), not a new "
            "dataset. Give a name such as 'digits' (letters, digits, '-', '_' and '.')"
        )
    if not name_is_valid(name):
        raise InvalidNameError(
            f"dataset name {name!r} is not allowed by dtool: use 1-80 characters from letters, digits, '-', '_' and '.'"
        )


def relpath_problem(relpath: object) -> str | None:
    """Why ``relpath`` could reach outside a dataset's data directory (None if it cannot).

    An item's relpath becomes a path under the dataset (and under a copy's destination),
    so it must be a non-empty, relative, '/'-separated path with no '..' segment, no
    backslash and no NUL.
    """
    if not isinstance(relpath, str):
        return f"it is a {type(relpath).__name__}, not a string"
    if not relpath:
        return "it is empty"
    if "\x00" in relpath:
        return "it contains a NUL character"
    if "\\" in relpath:
        return "it contains a backslash (relpaths are '/'-separated)"
    if relpath.startswith("/") or os.path.isabs(relpath):
        return "it is an absolute path"
    if ".." in relpath.split("/"):
        return "it contains a '..' segment"
    return None


def file_name_problem(name: object) -> str | None:
    """Why ``name`` (an identifier, UUID, dataset or overlay name) is not one plain file name.

    Such names become single path components (cache files, a copy's directory, overlay
    files), so they must not be empty, '.', '..', or hold '/', a backslash or a NUL.
    """
    if not isinstance(name, str) or not name:
        return "it is not a non-empty string"
    if name in (".", "..") or any(c in name for c in "/\\\x00"):
        return "it is not a plain file name"
    return None


def check_relpath(relpath: str) -> None:
    """Refuse (InvalidNameError) an item relpath that could reach outside the dataset.

    Example:
        >>> check_relpath("cat/0.png")      # fine; "../evil" or "/etc/x" raise
    """
    problem = relpath_problem(relpath)
    if problem is not None:
        raise InvalidNameError(
            f"item relpath {relpath!r} is not allowed: {problem}. Use a relative, "
            "'/'-separated path inside the dataset such as 'cat/0.png'"
        )


def item_identifier(relpath: str) -> str:
    """dtool's identifier of the item at ``relpath`` (sha1 of the relpath)."""
    import dtoolcore.utils

    return dtoolcore.utils.generate_identifier(relpath)
