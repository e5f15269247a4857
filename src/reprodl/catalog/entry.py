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
        try:
            values["links"] = [Link(**link) for link in values.get("links", [])]
            entry = cls(**values)
        except TypeError as exc:
            raise CatalogError(f"not a catalog entry ({exc}): {str(data)[:200]}") from None
        if not isinstance(entry.uuid, str) or not entry.uuid or entry.kind not in KINDS:
            raise CatalogError(f"catalog entry needs a uuid and a kind in {KINDS}: {str(data)[:200]}")
        return entry
