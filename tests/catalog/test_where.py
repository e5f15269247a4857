"""reprodl.catalog.where: `ls --where`'s grammar, its types, and SQL it cannot inject."""

from __future__ import annotations

import pytest

from reprodl.catalog import (
    Catalog,
    ls,
    parse_where,
)
from reprodl.catalog.where import compile_where
from reprodl.errors import CatalogError

pytest_plugins = ["train_fixtures", "catalog_world"]


def test_ls_where_filters_on_fields_and_columns(cat: Catalog) -> None:
    models = ls(cat, kind="model")
    accuracy = sorted(float(e.fields["valid_accuracy"]) for e in models if "valid_accuracy" in e.fields)
    above = ls(cat, kind="model", where=f"valid_accuracy>{accuracy[0]}")
    assert len(above) == len([a for a in accuracy if a > accuracy[0]])
    assert [e.name for e in ls(cat, where="name='digits-ft' and epochs>=1")] == ["digits-ft"]
    assert [e.name for e in ls(cat, where="kind=claim and verdict='A better'")] == ["a-vs-b"]
    assert ls(cat, kind="dataset", where="n_items=2 AND input_type=TensorDataSet") != []


def test_a_field_no_entry_has_is_named_with_those_there_are(cat: Catalog) -> None:
    with pytest.raises(CatalogError, match=r"no catalogued entry has a field 'valid_acuracy'.*valid_accuracy"):
        ls(cat, where="valid_acuracy>0.5")


def test_where_clause_cannot_inject_sql(cat: Catalog) -> None:
    n = len(cat)
    with pytest.raises(CatalogError, match="FIELD OP VALUE"):
        ls(cat, where="name='x' OR 1=1")
    with pytest.raises(CatalogError, match="FIELD OP VALUE"):
        ls(cat, where="valid_accuracy>0; DROP TABLE entries")
    assert ls(cat, where='name="x\'; DROP TABLE entries; --"') == []
    assert len(cat) == n and cat.db.execute("SELECT count(*) FROM entries").fetchone()[0] == n


def test_where_grammar_compiles_to_parameters_only() -> None:
    conds = parse_where('valid_accuracy >= 0.9 and params.learning_rate<1e-2 AND name = "a b" and x != y')
    sql, args = compile_where(conds)
    assert args == ["valid_accuracy", 0.9, "params.learning_rate", 0.01, "a b", "x", "y"]
    assert "a b" not in sql and "valid_accuracy" not in sql and sql.count("?") == len(args)
    with pytest.raises(CatalogError, match="cannot read the condition 'accuracy'"):
        parse_where("accuracy")


def test_where_refuses_text_for_a_number_and_ordering_on_text(cat: Catalog) -> None:
    with pytest.raises(CatalogError, match=r"'valid_accuracy' is a number, so '>' compares it with numbers.*'abc'"):
        ls(cat, where="valid_accuracy>abc")
    with pytest.raises(CatalogError, match=r"--where name>5: the field 'name' is text, and '>' orders numbers only"):
        ls(cat, where="name>5")
    with pytest.raises(CatalogError, match=r"'architecture' is text, and '<=' orders numbers only"):
        ls(cat, where="architecture<=x")
    assert ls(cat, where="created_at>2000-01-01") != []  # ISO 8601 time orders as text
