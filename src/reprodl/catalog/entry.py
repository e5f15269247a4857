"""What the catalog keeps of one dataset, model or claim: :class:`Entry` and its :class:`Link` s.

An entry is one dtool dataset, identified by its UUID and manifest digest (both kept by a
copy), so a dataset copied to several base URIs is one entry with several ``uris``. Its
``fields`` are the flat values ``reprodl catalog ls --where`` filters on (a model's final
metrics and hyperparameters, a dataset's item count); its ``links`` point at the datasets and
models it derives from. The field names follow the dtool lookup server's (dserver) where one
exists: ``uuid``, ``name``, ``creator_username`` (here ``creator``), ``created_at``, ``readme``,
``annotations``, ``uri``/``base_uri``.

Example:
    >>> e = Entry(uuid="u1", kind="dataset", name="digits", manifest_digest="sha256:0")
    >>> Entry.from_dict(e.to_dict()) == e
    True
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from reprodl import keys
from reprodl.errors import CatalogError

#: What an entry is: a plain dataset, a model, a claim (reprodl compare) or a multi-run summary.
KINDS = ("dataset", "model", "claim", "summary")
#: How an entry derives from another: trained (train/valid/test role) on a dataset, fine-tuned
#: from a parent model, reproduces a model, or holds a model as a member (claims, summaries).
RELATIONS = ("trained_on", "parent", "reproduces", "member")

FieldValue = float | int | str | bool


@dataclasses.dataclass
class Link:
    """An edge from an entry to a dataset or model it derives from (which may not be catalogued)."""

    relation: str
    uuid: str | None
    uri: str | None = None
    digest: str | None = None  # the target's record digest (models) or manifest digest, as recorded
    role: str = ""  # train/valid/test for trained_on; a/b for a claim's members
    name: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Entry:
    """One catalogued dataset, model, claim or summary (see the module docstring)."""

    uuid: str
    kind: str
    name: str
    manifest_digest: str
    uris: list[str] = dataclasses.field(default_factory=list)
    readme: str = ""
    readme_fields: dict[str, Any] = dataclasses.field(default_factory=dict)
    annotations: dict[str, Any] = dataclasses.field(default_factory=dict)
    record_digest: str | None = None
    created_at: str | None = None
    creator: str | None = None
    fields: dict[str, FieldValue] = dataclasses.field(default_factory=dict)
    links: list[Link] = dataclasses.field(default_factory=list)
    verdict: str | None = None  # a reproduction's verdict, or a claim's
    indexed_at: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: one line of ``reprodl catalog export`` (with its ``format``)."""
        out = dataclasses.asdict(self)
        out["links"] = [link.to_dict() for link in self.links]
        return {"format": keys.CATALOG_EXPORT_FORMAT, **out}

    def summary(self) -> dict[str, Any]:
        """The short JSON form queries list: identity, where it is, when, and its verdict."""
        return {
            "uuid": self.uuid,
            "kind": self.kind,
            "name": self.name,
            "uris": list(self.uris),
            "created_at": self.created_at,
            "creator": self.creator,
            "record_digest": self.record_digest,
            "verdict": self.verdict,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Entry:
        """An entry from :meth:`to_dict`'s form (a line of an export).

        Raises:
            CatalogError: another format, or a field missing or of the wrong type.
        """
        fmt = data.get("format", keys.CATALOG_EXPORT_FORMAT)
        if fmt != keys.CATALOG_EXPORT_FORMAT:
            raise CatalogError(f"catalog entry format {fmt!r} is not {keys.CATALOG_EXPORT_FORMAT!r}: upgrade reprodl")
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        _check_shape(values)
        try:
            values["links"] = [Link(**link) for link in values.get("links", [])]
            entry = cls(**values)
        except TypeError as exc:
            raise CatalogError(f"not a catalog entry ({exc}): {str(data)[:200]}") from None
        if not isinstance(entry.uuid, str) or not entry.uuid or entry.kind not in KINDS:
            raise CatalogError(f"catalog entry needs a uuid and a kind in {KINDS}: {str(data)[:200]}")
        return entry


_TEXT = ("uuid", "kind", "name", "manifest_digest", "readme")
_OPTIONAL_TEXT = ("record_digest", "created_at", "creator", "verdict", "indexed_at")
_LINK_TEXT = ("relation", "role")
_LINK_OPTIONAL_TEXT = ("uuid", "uri", "digest", "name")
_JSON_NAMES = {
    str: "a string",
    list: "a list",
    dict: "an object",
    bool: "a boolean",
    int: "a number",
    float: "a number",
}


def _wrong(where: str, value: Any, wanted: str) -> CatalogError:
    got = "null" if value is None else _JSON_NAMES.get(type(value), type(value).__name__)
    return CatalogError(f"{where} is {got}, not {wanted}")


def _check_shape(values: dict[str, Any]) -> None:
    """Refuse a field of the wrong JSON type (a string where a list belongs), or a number JSON
    cannot hold (``1e999`` parses as infinity), anywhere in an entry read from a file."""
    _check_text(values, "", _TEXT, _OPTIONAL_TEXT)
    for name in ("readme_fields", "annotations", "fields"):
        if name in values and not isinstance(values[name], dict):
            raise _wrong(name, values[name], "an object")
    uris = values.get("uris", [])
    if not isinstance(uris, list):
        raise _wrong("uris", uris, "a list of URI strings")
    for i, uri in enumerate(uris):
        if not isinstance(uri, str):
            raise _wrong(f"uris[{i}]", uri, "a URI string")
    for name, value in values.get("fields", {}).items():
        if not isinstance(value, (str, int, float)):  # bool is an int
            raise _wrong(f"fields.{name}", value, "a number, string or boolean")
    _check_links(values.get("links", []))
    _check_finite(values)


def _check_text(values: dict[str, Any], where: str, text: tuple[str, ...], optional: tuple[str, ...]) -> None:
    """Refuse a ``text`` field present and not a string, or an ``optional`` one neither a string nor null."""
    for name in text:
        if name in values and not isinstance(values[name], str):
            raise _wrong(f"{where}{name}", values[name], "a string")
    for name in optional:
        if values.get(name) is not None and not isinstance(values[name], str):
            raise _wrong(f"{where}{name}", values[name], "a string or null")


def _check_links(links: Any) -> None:
    """Refuse links that are not a list of objects with string fields and a known relation."""
    if not isinstance(links, list):
        raise _wrong("links", links, "a list of objects")
    for i, link in enumerate(links):
        if not isinstance(link, dict):
            raise _wrong(f"links[{i}]", link, "an object")
        _check_text(link, f"links[{i}].", _LINK_TEXT, _LINK_OPTIONAL_TEXT)
        if link.get("relation") not in RELATIONS:
            raise CatalogError(f"links[{i}].relation is {link.get('relation')!r}, not one of {', '.join(RELATIONS)}")


def _check_finite(value: Any) -> None:
    """Refuse infinity or NaN anywhere in ``value`` (Python's JSON reads them; JSON cannot hold them)."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        where, node = stack.pop()
        if isinstance(node, float) and not math.isfinite(node):
            raise CatalogError(
                f"{where} is {node}, not a finite number (a number as large as 1e999, or Infinity or NaN, "
                "which JSON cannot hold)"
            )
        if isinstance(node, dict):
            stack.extend((f"{where}.{k}" if where else str(k), v) for k, v in node.items())
        elif isinstance(node, list):
            stack.extend((f"{where}[{i}]", v) for i, v in enumerate(node))
