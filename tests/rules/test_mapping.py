"""Mapping: apply, preview on DataFrames (bad rows, NaN, nested, dotted columns), config and step."""

from __future__ import annotations

import gc

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
                       "seen": "2024-01-02T03:04:05.000"}  # naive: ISO 8601 ms, no zone
    assert "email" not in rows[1]["customer"] and "score" not in rows[1] and "seen" not in rows[1]
    assert type(rows[2]["count"]) is int and type(rows[2]["score"]) is float


def test_to_records_drops_holes_at_every_depth():
    frame = pd.DataFrame({"a.b.c": [1, None, 3], "a.b.d": ["x", "y", None], "a.e": [None, 2, None], "f": [0, 1, None]})
    assert to_records(frame) == [
        {"a": {"b": {"c": 1, "d": "x"}}, "f": 0},
        {"a": {"b": {"d": "y"}, "e": 2}, "f": 1},
        {"a": {"b": {"c": 3}}},
    ]


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


def _preview_row_by_row(m: Mapping, records: list) -> tuple[dict, list]:
    """The reference: each field on each row through the checked path (Expression.raw)."""
    cols = {name: [] for name in m.fields}
    errors = []
    for rec in records:
        err = None
        for name, expr in m._compiled:
            try:
                v = expr.raw(rec)
            except EvaluationError as exc:
                msg = f"field '{name}': {exc.detail}"
                err = msg if err is None else f"{err}; {msg}"
                v = None
            cols[name].append(None if v is flownb.rules.UNDEFINED else v)
        errors.append(err)
    return cols, errors


def tricky() -> pd.DataFrame:
    bad = [{"qty": "two", "price": 1}]
    return pd.DataFrame({
        "customer.email": ["A@X.IO", None, 5, "d@x.io", None, "F@x"],
        "customer.first": ["Ann", None, "Cy", "Dee", "Ed", "Flo"],
        "items": [bad, [], [{"qty": 2, "price": 1.5, "tags": ["x", ["y"]]}], bad, None,
                  [{"qty": 3, "price": 2}, {"qty": 1.5, "price": 2}, {"qty": np.int64(4), "price": np.nan}]],
        "n": [1.0, np.nan, 2.5, 3.0, np.nan, -1.0],
        "s": ["0x1F", "12", None, "abc", "7", "x"],
    }, index=list("abcdef"))


TRICKY_FIELDS = {
    "email": "$lowercase(customer.email)",  # a number in row c: T0410 error
    "name": 'customer.first & " " & customer.last',
    "total": "$sum(items.(qty * price))",  # "two" in rows a and d: T2001; null price in f: T2002
    "big": "$count(items[qty > 2]) > 0",
    "tags": "items.tags",  # nested arrays (a list result, cleaned)
    "pairs": 'items.{"q": qty}',  # objects
    "num": "$number(s)",  # "0x1F" is handed to jsonatapy for that one row
    "kept": "items.qty[]",
    "fallback": "$map(items, function($i) { $i.qty })",  # the jsonatapy engine
    "missing": "nothing.here",  # undefined everywhere
}


def test_preview_matches_row_by_row_evaluation():
    m = Mapping(fields=TRICKY_FIELDS)
    assert m.engines["fallback"] == "jsonatapy" and m.engines["total"] == "compiled"
    frame = tricky()
    out = m.preview(frame)
    cols, errors = _preview_row_by_row(m, to_records(frame))
    assert list(out.columns) == [*TRICKY_FIELDS, "_error"] and list(out.index) == list("abcdef")
    for name in TRICKY_FIELDS:
        got = [None if (not isinstance(v, (list, dict)) and pd.isna(v)) else v for v in out[name]]
        assert got == cols[name], name
    assert [None if pd.isna(e) else e for e in out["_error"]] == errors
    assert [e is not None for e in errors] == [True, False, True, True, False, True]
    assert "T2001" in errors[0] and "T2001" in errors[3] and "field 'email'" in errors[2]
    assert "field 'total': T2002" in errors[5] and "field 'num': D3030" in errors[5]  # errors add up
    assert out.loc["a", "num"] == 31 and out.loc["b", "num"] == 12
    assert out.loc["f", "kept"] == [3, 1.5, 4] and out.loc["c", "tags"] == ["x", ["y"]]
    assert m.errors == [{"row": r, "error": e, "type": "EvaluationError"}
                        for r, e in zip("abcdef", errors, strict=True) if e is not None]


def test_preview_errors_on_first_last_and_consecutive_rows():
    rows = [{"q": "x"}, {"q": "y"}, {"q": 1}, {"q": "z"}, {"q": 2}, {"q": "w"}]
    m = Mapping(fields={"d": "q * 2", "s": "$string(q)"})
    out = m.preview(rows)
    assert [None if pd.isna(v) else v for v in out["d"]] == [None, None, 2, None, 4, None]
    assert out["s"].tolist() == ["x", "y", "1", "z", "2", "w"]
    assert [not pd.isna(e) for e in out["_error"]] == [True, True, False, True, False, True]
    assert [e["row"] for e in m.errors] == [0, 1, 3, 5]


def test_preview_restores_the_garbage_collector():
    m = Mapping(fields={"x": "a"})
    assert gc.isenabled()
    m.preview(tricky())
    assert gc.isenabled()
    gc.disable()
    try:
        m.preview([{"a": 1}])
        assert not gc.isenabled()
    finally:
        gc.enable()


# -- null and undefined in the preview; the preview in a flow's context ----------------------------

def test_preview_shows_null_as_NULL_and_undefined_as_an_empty_cell_so_its_records_are_the_outputs():
    from flownb.records import NULL
    rows = [{"x": None, "y": 1}, {"y": 2}]
    m = Mapping(fields={"x": "x", "y": "y", "n": "nope"})
    view = m.preview(rows)
    assert view.loc[0, "x"] is NULL and view.loc[1, "x"] is None and view["n"].isna().all()
    assert to_records(view.drop(columns="_error")) == [m.apply(r) for r in rows] == [{"x": None, "y": 1}, {"y": 2}]
    e = Mapping(expression='{"x": x, "y": y}')
    view = e.preview(rows)
    assert view.loc[0, "x"] is NULL and view.loc[1, "x"] is None
    assert to_records(view.drop(columns="_error")) == [e.apply(r) for r in rows]


def _too_large_flow() -> flownb.Flow:
    return flownb.Flow(name="big", max_message_bytes="4KiB",
                       trigger=flownb.step("hook", "webhook", token_env="BIG_TOKEN"),
                       steps=[flownb.step("pad", "mapping", fields={"id": "id", "pad": '$join([1..size].("x"))'}),
                              flownb.step("keep", "filter", condition="id > 0")])


def test_preview_in_the_flow_context_gives_the_runtimes_message_too_large_for_the_same_rows():
    flow = _too_large_flow()
    rows = [{"id": 1, "size": 10}, {"id": 2, "size": 5000}, {"id": 3, "size": 3600}, {"id": 4, "size": 4200}]
    m = Mapping(fields=flow.step("pad").config["fields"])
    assert m.preview(rows)["_error"].isna().all()  # without the flow: no limit to know
    view = m.preview(rows, flow=flow, step="pad")
    result = flow.test(rows)  # the embedded runtime in memory: what a run dead-letters
    dead = {d.message.body["id"]: d for d in result.dead_letters}
    assert sorted(dead) == [2, 4] and {d.error.type for d in dead.values()} == {"MessageTooLarge"}
    for i, row in enumerate(rows):
        if row["id"] in dead:
            assert view.loc[i, "_error"] == dead[row["id"]].error.message
        else:
            assert pd.isna(view.loc[i, "_error"])
    assert [(e["row"], e["type"]) for e in m.errors] == [(1, "MessageTooLarge"), (3, "MessageTooLarge")]
    assert view.loc[1, "pad"] == "x" * 5000  # the row keeps what it computed, as a failing row does
    # flow.preview: the same, from the step's own config
    assert flow.preview("pad", rows)["_error"].equals(view["_error"])


def test_preview_in_a_flow_names_the_step_or_says_which():
    flow = _too_large_flow()
    m = Mapping(fields=flow.step("pad").config["fields"])
    m.preview([{"id": 1, "size": 1}], flow=flow)  # found by its config
    with pytest.raises(flownb.SpecError, match="no step 'pda'.*pad"):
        m.preview([{"id": 1, "size": 1}], flow=flow, step="pda")
    with pytest.raises(ConfigError, match=r"say which step.*step='…'.*no mapping step has this config"):
        Mapping(fields={"id": "id"}).preview([{"id": 1}], flow=flow)
    with pytest.raises(flownb.SpecError, match="'filter' step; flow.preview shows a mapping step"):
        flow.preview("keep", [{"id": 1}])
