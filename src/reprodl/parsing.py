"""JSON and YAML from files anyone may have written, parsed within bounds.

A downloaded README, record or config must not exhaust the machine: YAML anchors and
aliases are refused (a "billion laughs" document expands exponentially through them),
nesting deeper than :data:`reprodl.keys.MAX_NESTING` is refused (instead of a
``RecursionError`` from the parser or from whatever walks the result later), and so is
text over a caller's size limit. Every failure is the caller's ``error`` class with a
message naming ``what`` was being read.

Example:
    >>> load_yaml("name: digits", what="the README")
    {'name': 'digits'}
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from reprodl import keys
from reprodl.errors import MetadataError, ReprodlError

__all__ = ["NoAliasSafeLoader", "check_size", "load_json", "load_yaml"]


class NoAliasSafeLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader that refuses anchors and aliases (no exponential expansion)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.YAMLError(
                f"YAML aliases (*{event.anchor}) are not allowed ({_where(event)}): write the value out"
            )
        event = self.peek_event()
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            raise yaml.YAMLError(f"YAML anchors (&{anchor}) are not allowed ({_where(event)}): write the value out")
        return super().compose_node(parent, index)


def _where(event: Any) -> str:
    mark = event.start_mark
    return f"line {mark.line + 1}, column {mark.column + 1}"


def check_size(text: str | bytes, limit: int, *, what: str, error: type[ReprodlError] = MetadataError) -> None:
    """Raise ``error`` when ``text`` is longer than ``limit`` bytes (UTF-8 for str)."""
    size = len(text) if isinstance(text, bytes) else len(text.encode("utf-8", "surrogatepass"))
    if size > limit:
        raise error(
            f"{what} is {size:,} bytes, over reprodl's limit of {limit:,} bytes: "
            "shorten it (keep long text in an item of the dataset instead)"
        )


def _depth_problem(value: Any, limit: int) -> bool:
    """Whether containers nest deeper than ``limit`` (checked without recursion)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, (list, tuple)):
            children = node
        else:
            continue
        if depth >= limit:
            return True
        stack.extend((c, depth + 1) for c in children)
    return False


def _check_depth(value: Any, *, what: str, error: type[ReprodlError]) -> Any:
    if _depth_problem(value, keys.MAX_NESTING):
        raise error(
            f"{what} nests deeper than {keys.MAX_NESTING} levels: reprodl refuses it "
            "(no record, README or config needs that)"
        )
    return value


def load_json(text: str | bytes, *, what: str, error: type[ReprodlError] = MetadataError) -> Any:
    """``json.loads`` of ``text``, or ``error`` naming ``what`` (bad JSON, bad UTF-8, too deep)."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise error(f"{what} nests deeper than {keys.MAX_NESTING} levels: reprodl refuses it") from None
    except UnicodeDecodeError as exc:
        raise error(f"{what} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except ValueError as exc:  # json.JSONDecodeError, and numbers too long to convert
        raise error(f"{what} is not valid JSON ({exc})") from None
    return _check_depth(value, what=what, error=error)


def load_yaml(text: str | bytes, *, what: str, error: type[ReprodlError] = MetadataError) -> Any:
    """YAML of ``text`` with :class:`NoAliasSafeLoader`, or ``error`` naming ``what``."""
    try:
        value = yaml.load(text, Loader=NoAliasSafeLoader)  # a SafeLoader subclass
    except RecursionError:
        raise error(f"{what} nests deeper than {keys.MAX_NESTING} levels: reprodl refuses it") from None
    except yaml.YAMLError as exc:
        raise error(f"{what} is not valid YAML: {exc}") from None
    except (ValueError, TypeError, OverflowError, AttributeError, IndexError, KeyError) as exc:
        # PyYAML's constructors: bad dates ("!!timestamp" alone raises AttributeError), huge numbers...
        raise error(f"{what} is not valid YAML: {type(exc).__name__}: {exc}") from None
    return _check_depth(value, what=what, error=error)
