"""The ``--where`` filter of ``reprodl catalog ls``: a small grammar, compiled to parameterised SQL.

Grammar (case-insensitive ``and``; nothing else joins conditions)::

    where     := condition ("and" condition)*
    condition := FIELD OP VALUE
    FIELD     := [A-Za-z_][A-Za-z0-9_.]*      e.g. valid_accuracy, params.learning_rate, name
    OP        := = | == | != | < | <= | > | >=
    VALUE     := a number, true/false, a 'single' or "double" quoted string, or a bare word

A field is one of the entry's columns (``name``, ``kind``, ``uuid``, ``creator``,
``created_at``, ``verdict``, ``record_digest``, ``manifest_digest``) or one of its fields (a
model's final metrics and hyperparameters...). Field names and values only ever become SQL
parameters; the operator and column come from fixed tables here. ``architecture=GenNet``
matches ``reprodl.zoo:GenNet`` (the class name after the colon); :func:`check_types` refuses
a number field compared with text, and ``< <= > >=`` on a text field.

Example:
    >>> parse_where("valid_accuracy>0.95 and name='digits model'")
    [Condition(field='valid_accuracy', op='>', value=0.95), Condition(field='name', op='=', value='digits model')]
"""

from __future__ import annotations

import dataclasses
import re

from reprodl.errors import CatalogError

OPERATORS = {"=": "=", "==": "=", "!=": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}
COLUMNS = {
    "name": "e.name",
    "kind": "e.kind",
    "uuid": "e.uuid",
    "creator": "e.creator",
    "created_at": "e.created_at",
    "verdict": "e.verdict",
    "record_digest": "e.record_digest",
    "manifest_digest": "e.manifest_digest",
}
_TOKEN = re.compile(
    r"""\s*(?:
        (?P<field>[A-Za-z_][A-Za-z0-9_.]*)\s*(?P<op><=|>=|==|!=|=|<|>)\s*
        (?P<value>'[^']*'|"[^"]*"|[^\s'"]+)
    )\s*""",
    re.VERBOSE,
)
#: Fields holding an import path (``reprodl.zoo:GenNet``): ``=`` matches the class name after the colon too.
CLASS_FIELDS = ("architecture",)
_CLASS_MATCH = "SELECT entry_id FROM fields WHERE name = ? AND (txt = ? OR substr(txt, instr(txt, ':') + 1) = ?)"
_CLASS_MISMATCH = "SELECT entry_id FROM fields WHERE name = ? AND txt != ? AND substr(txt, instr(txt, ':') + 1) != ?"
#: Operators that order values: numbers only (and ``created_at``, whose ISO 8601 text orders as time does).
ORDERING = ("<", "<=", ">", ">=")
ORDERED_COLUMNS = ("created_at",)
_AND = re.compile(r"\s+and\s+", re.IGNORECASE)

Value = float | str


@dataclasses.dataclass(frozen=True)
class Condition:
    field: str
    op: str
    value: Value


def _value(text: str) -> Value:
    if text[:1] in "'\"":
        return text[1:-1]
    if text.lower() in ("true", "false"):
        return 1.0 if text.lower() == "true" else 0.0
    try:
        return float(text)
    except ValueError:
        return text


def parse_where(text: str) -> list[Condition]:
    """The conditions of a ``--where`` clause.

    Raises:
        CatalogError: a condition that is not ``FIELD OP VALUE``, naming it and the grammar.
    """
    if not text.strip():
        return []
    out = []
    for part in _AND.split(text.strip()):
        match = _TOKEN.fullmatch(part)
        if match is None:
            raise CatalogError(
                f"cannot read the condition {part!r} of --where {text!r}: write FIELD OP VALUE joined by 'and', "
                'with OP one of = != < <= > >= (e.g. "valid_accuracy>0.95 and kind=model"); quote values '
                "with spaces ('digits model')"
            )
        out.append(Condition(match["field"], OPERATORS[match["op"]], _value(match["value"])))
    return out


def compile_where(conditions: list[Condition]) -> tuple[str, list[object]]:
    """SQL (over ``entries e``) and its parameters for ``conditions``: ``"1"`` when none."""
    parts: list[str] = []
    args: list[object] = []
    for c in conditions:
        op = OPERATORS[c.op]  # from the fixed table, never from the user's text
        column = COLUMNS.get(c.field)
        if column is not None:
            parts.append(f"{column} {op} ?")
            args.append(c.value if isinstance(c.value, str) else _column_value(c))
        elif c.field in CLASS_FIELDS and c.op in ("=", "!=") and isinstance(c.value, str) and ":" not in c.value:
            parts.append(f"e.id IN ({_CLASS_MATCH if c.op == '=' else _CLASS_MISMATCH})")
            args += [c.field, c.value, c.value]
        elif isinstance(c.value, float):
            parts.append(f"e.id IN (SELECT entry_id FROM fields WHERE name = ? AND num {op} ?)")
            args += [c.field, c.value]
        else:
            parts.append(f"e.id IN (SELECT entry_id FROM fields WHERE name = ? AND txt {op} ?)")
            args += [c.field, c.value]
    return (" AND ".join(parts) or "1"), args


def _shown(value: Value) -> str:
    """A value as the user likely wrote it (``5``, not ``5.0``)."""
    return value if isinstance(value, str) else str(int(value)) if value.is_integer() else str(value)


def _column_value(c: Condition) -> str:
    """A number compared with a text column (``name=3``): compared as the text written."""
    value = float(c.value)
    return str(int(value)) if value.is_integer() else str(value)


def check_types(c: Condition, numeric: bool, text: bool) -> None:
    """Refuse a condition whose value or operator does not fit its field's type.

    ``numeric`` and ``text``: whether some entry holds the field as a number, as text (a column is text).

    Raises:
        CatalogError: a number field compared with text, or an ordering operator on a text field.
    """
    shown = f"{c.field}{c.op}{_shown(c.value)}"
    if isinstance(c.value, str) and numeric and not text:
        raise CatalogError(
            f"--where {shown}: the field {c.field!r} is a number, so {c.op!r} compares it with "
            f"numbers, and {c.value!r} is not one; give a number (e.g. {c.field}{c.op}0.5)"
        )
    if c.op in ORDERING and text and not numeric and c.field not in ORDERED_COLUMNS:
        raise CatalogError(
            f"--where {shown}: the field {c.field!r} is text, and {c.op!r} orders numbers only; use = or != on text"
        )
