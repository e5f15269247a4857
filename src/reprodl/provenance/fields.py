"""The record's fields, walked from its schema: what ``diff``, ``provenance``'s printed sections
and the MLflow params show (the docs' field table walks the JSON Schema made from the same models).

Each reader walks the record's models (the pydantic classes its JSON Schema is generated from,
cheaper to walk than that schema is to generate) along the record's own JSON, never a list
of fields kept by hand,
so a field added to the record appears in all of them at once. A record's fields outside the
schema (a newer reprodl's, or a hostile record's) are shown too, up to :data:`MAX_EXTRA` per
object, then counted: a record with 10,000 keys does not print 10,000 lines.

Example:
    >>> field_values({"kind": "model", "zz": 1})
    [('kind', 'model'), ('zz', 1)]
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from typing import Any, get_args, get_origin

from pydantic import BaseModel

from reprodl.provenance.record import ProvenanceRecord

MAX_EXTRA = 50  # fields outside the schema shown per object; the rest are counted
MAX_EXTRA_NAME = 100  # characters of a field name outside the schema shown
MAX_EXTRA_VALUE = 500  # characters of such a field's JSON shown, else its size and digest (:func:`summarised`)
MORE_FIELDS = "more_fields"  # the name under which the fields over MAX_EXTRA are counted
_INDEX = re.compile(r"\[\d+\]")


def _model_in(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """(the model a field's type is or holds, whether as a list's items): ``Seeds``, ``list[DataRef]``, ``X | None``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    for arg in get_args(annotation):
        model, in_list = _model_in(arg)
        if model is not None:
            return model, in_list or get_origin(annotation) is list
    return None, False


def join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def schema_path(path: str) -> str:
    """A value's path as the schema names it: list indices as ``[]`` (``data[0].uri`` -> ``data[].uri``)."""
    return _INDEX.sub("[]", path)


def under(path: str, prefix: str) -> bool:
    """Whether ``path`` is ``prefix`` or a field inside it (``a.b`` and ``a[0]`` are inside ``a``)."""
    return path == prefix or path.startswith((prefix + ".", prefix + "["))


def field_values(value: Any, model: type[BaseModel] | None = None, *, max_items: int = 0) -> list[tuple[str, Any]]:
    """(path, value) of every field of a record's JSON, in the schema's order, fields outside it after.

    ``model``: the schema walked (the record's, :class:`ProvenanceRecord`, by default). A
    model's fields are walked one by one; a list of at most ``max_items`` models item by item
    (``data[0].uri``); anything else (a longer list, a dict of values, a scalar) is one value.
    """
    if model is None:
        model = ProvenanceRecord
    return list(_walk(value, model, False, "", max_items))


def _walk(value: Any, model: type[BaseModel] | None, in_list: bool, path: str, max_items: int) -> Iterator[Any]:
    if isinstance(value, dict) and model is not None and not in_list:
        fields = model.model_fields
        for name, info in fields.items():
            if name in value:
                yield from _walk(value[name], *_model_in(info.annotation), join(path, name), max_items)
        extra = [k for k in value if k not in fields]
        for name in extra[:MAX_EXTRA]:  # a name and value no schema bounds: each shortened, never expanded
            yield join(path, _short_name(str(name))), summarised(value[name], MAX_EXTRA_VALUE)
        if len(extra) > MAX_EXTRA:
            yield join(path, MORE_FIELDS), f"{len(extra) - MAX_EXTRA:,} more fields outside the schema"
    elif isinstance(value, list) and model is not None and in_list and len(value) <= max_items:
        for i, item in enumerate(value):
            yield from _walk(item, model, False, f"{path}[{i}]", max_items)
    else:
        yield path, value


def _short_name(name: str) -> str:
    """A field name outside the schema, cut to :data:`MAX_EXTRA_NAME` characters with its length and digest."""
    if len(name) <= MAX_EXTRA_NAME:
        return name
    digest = hashlib.sha256(name.encode("utf-8", "replace")).hexdigest()[:16]
    return f"{name[:60]}...<{len(name):,} characters, sha256 {digest}>"


def summarised(value: Any, limit: int) -> Any:
    """``value``, or when its JSON is over ``limit`` characters a summary naming its size and digest."""
    text = value if isinstance(value, str) else json.dumps(value, default=str, sort_keys=True)
    if len(text) <= limit:
        return value
    digest = hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()[:16]
    if isinstance(value, list):
        return f"<{len(value):,} item{'s' if len(value) != 1 else ''}, sha256 {digest}>"
    if isinstance(value, dict):
        return f"<{len(value):,} entr{'ies' if len(value) != 1 else 'y'}, sha256 {digest}>"
    return f"<{len(text):,} characters, sha256 {digest}>"
