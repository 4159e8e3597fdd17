"""Mapping: apply, preview on DataFrames (bad rows, NaN, nested, dotted columns), config and step."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import flownb
from flownb.errors import ConfigError, ExpressionError
from flownb.rules import EvaluationError, Mapping, to_records

FIELDS = {"email": "$lowercase(customer.email)", "name": 'customer.first & " " & customer.last',
          "total": "$sum(items.(qty * price))"}


def sample() -> pd.DataFrame:
    return pd.DataFrame({
        "customer.email": ["A@X.IO", None, "c@x.io"],
        "customer.first": ["Ann", "Bob", "Cy"],
        "customer.last": ["Lee", "Ray", "Ng"],
        "items": [[{"qty": 2, "price": 1.5}], [], [{"qty": "two", "price": 1}]],
        "score": [1.5, np.nan, np.float64(3)],
        "count": np.array([1, 2, 3], dtype=np.int64),
        "seen": pd.to_datetime(["2024-01-02T03:04:05", None, "2024-02-01T00:00:00"]),
    }, index=[10, 11, 12])


def test_lazy_export_and_apply():
    assert flownb.Mapping is Mapping
    m = Mapping(fields=FIELDS)
    out = m.apply({"customer": {"email": "A@B.C", "first": "a", "last": "b"}, "items": []})
    assert out == {"email": "a@b.c", "name": "a b"}  # $sum of nothing is undefined: left out
    assert m.apply({}) == {"name": " "}


def test_undefined_fields_are_left_out_and_null_is_kept():
    m = Mapping(fields={"a": "missing", "b": "x"})
    assert m.apply({"x": None}) == {"b": None}


def test_apply_error_names_the_field():
    with pytest.raises(EvaluationError) as info:
        Mapping(fields=FIELDS).apply({"items": [{"qty": "x", "price": 1}]})
    assert info.value.field == "total" and info.value.code == "T2001"
    assert "field 'total'" in str(info.value)


def test_exactly_one_of_fields_or_expression():
    with pytest.raises(ConfigError):
        Mapping()
    with pytest.raises(ConfigError):
        Mapping(fields={"a": "a"}, expression="{}")


def test_bad_expression_reports_field_and_position():
    with pytest.raises(ExpressionError) as info:
        Mapping(fields={"ok": "a", "bad": "a +"})
    assert info.value.field == "fields.bad" and info.value.position == 3


def test_expression_mapping_must_give_an_object():
    m = Mapping(expression='{"n": $count(items)}')
    assert m.apply({"items": [1, 2]}) == {"n": 2}
    with pytest.raises(EvaluationError, match="not an object"):
        Mapping(expression="items").apply({"items": [1]})


def test_to_records_rules():
    rows = to_records(sample())
    assert rows[0] == {"customer": {"email": "A@X.IO", "first": "Ann", "last": "Lee"},
                       "items": [{"qty": 2, "price": 1.5}], "score": 1.5, "count": 1,
                       "seen": "2024-01-02T03:04:05"}
    assert "email" not in rows[1]["customer"] and "score" not in rows[1] and "seen" not in rows[1]
    assert type(rows[2]["count"]) is int and type(rows[2]["score"]) is float


def test_preview_one_row_per_input_with_errors_column():
    m = Mapping(fields=FIELDS)
    df = m.preview(sample())
    assert list(df.columns) == ["email", "name", "total", "_error"]
    assert list(df.index) == [10, 11, 12]
    assert df.loc[10, "email"] == "a@x.io" and df.loc[10, "total"] == 3
    assert pd.isna(df.loc[11, "email"]) and pd.isna(df.loc[11, "total"]) and pd.isna(df.loc[11, "_error"])
    assert "field 'total'" in df.loc[12, "_error"] and "T2001" in df.loc[12, "_error"]
    assert df.loc[12, "email"] == "c@x.io"  # the other fields of a bad row still show
    assert m.failing_rows() == 1 and m.errors[0]["row"] == 12


def test_preview_limit_and_list_of_dicts():
    m = Mapping(fields={"x": "a.b"})
    assert len(m.preview(sample(), limit=2)) == 2
    df = m.preview([{"a": {"b": 1}}, {"a": {"b": [1, 2]}}, {}])
    assert df["x"].tolist()[:2] == [1, [1, 2]] and pd.isna(df["x"].tolist()[2])


def test_preview_with_expression_mapping():
    m = Mapping(expression='{"who": customer.first, "n": $count(items)}')
    df = m.preview(sample())
    assert list(df.columns) == ["who", "n", "_error"] and df["n"].tolist() == [1, 0, 1]


def test_config_and_step_round_trip():
    m = Mapping(fields=FIELDS)
    s = m.step("to-contact")
    assert s.component == "mapping" and s.config == {"fields": FIELDS}
    assert m.engines == {"email": "compiled", "name": "compiled", "total": "compiled"}
