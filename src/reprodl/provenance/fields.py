"""The record's fields, walked from its JSON Schema: what ``diff``, ``provenance``'s printed
sections, the MLflow params and the docs' field table show.

Each reader walks the schema (and the record's own JSON), never a list of fields kept by hand,
so a field added to the record appears in all of them at once. A record's fields outside the
schema (a newer reprodl's, or a hostile record's) are shown too, up to :data:`MAX_EXTRA` per
object, then counted: a record with 10,000 keys does not print 10,000 lines.

Example:
    >>> [path for path, _ in field_values({"kind": "model", "zz": 1})][:2]   # doctest: +SKIP
    ['kind', 'zz']
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from typing import Any

MAX_EXTRA = 50  # fields outside the schema shown per object; the rest are counted
MORE_FIELDS = "more_fields"  # the name under which the fields over MAX_EXTRA are counted
_INDEX = re.compile(r"\[\d+\]")


def record_schema() -> dict[str, Any]:
    """The record's JSON Schema (read each time: a field added to the record is in it at once)."""
    from reprodl.provenance.record import record_json_schema

    return record_json_schema()


def model_node(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any] | None:
    """The model (object with properties) a schema node is, or refers to directly or as an option."""
    if "properties" in node:
        return node
    for part in [node, *node.get("anyOf", [])]:
        if "$ref" in part:
            found = schema.get("$defs", {}).get(str(part["$ref"]).rsplit("/", 1)[-1])
            return found if isinstance(found, dict) else None
    return None


def item_node(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any] | None:
    """The model a list node's items are, if the node is a list of models."""
    for part in [node, *node.get("anyOf", [])]:
        if part.get("type") == "array" and isinstance(part.get("items"), dict):
            return model_node(schema, part["items"])
    return None


def join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def schema_path(path: str) -> str:
    """A value's path as the schema names it: list indices as ``[]`` (``data[0].uri`` -> ``data[].uri``)."""
    return _INDEX.sub("[]", path)


def under(path: str, prefix: str) -> bool:
    """Whether ``path`` is ``prefix`` or a field inside it (``a.b`` and ``a[0]`` are inside ``a``)."""
    return path == prefix or path.startswith((prefix + ".", prefix + "["))


def field_values(value: Any, schema: dict[str, Any] | None = None, *, max_items: int = 0) -> list[tuple[str, Any]]:
    """(path, value) of every field of a record's JSON, in the schema's order, fields outside it after.

    A model's fields are walked one by one; a list of at most ``max_items`` models item by item
    (``data[0].uri``); anything else (a longer list, a dict of values, a scalar) is one value.
    """
    schema = schema if schema is not None else record_schema()
    return list(_walk(value, schema, schema, "", max_items))


def _walk(value: Any, schema: dict[str, Any], node: dict[str, Any] | None, path: str, max_items: int) -> Iterator[Any]:
    model = model_node(schema, node) if node is not None else None
    items = item_node(schema, node) if node is not None else None
    if isinstance(value, dict) and model is not None:
        props = model.get("properties", {})
        for name, prop in props.items():
            if name in value:
                yield from _walk(value[name], schema, prop, join(path, name), max_items)
        extra = [k for k in value if k not in props]
        for name in extra[:MAX_EXTRA]:
            yield join(path, str(name)), value[name]
        if len(extra) > MAX_EXTRA:
            yield join(path, MORE_FIELDS), f"{len(extra) - MAX_EXTRA:,} more fields outside the schema"
    elif isinstance(value, list) and items is not None and len(value) <= max_items:
        for i, item in enumerate(value):
            yield from _walk(item, schema, items, f"{path}[{i}]", max_items)
    else:
        yield path, value


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
