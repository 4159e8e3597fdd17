"""One sample, four paths, the same rows: ``Mapping.preview``, the ``MappingEditor``'s preview, the
``FlowBuilder``'s "run on sample" and ``flow.test`` read a DataFrame through
``flownb.records.to_records`` and agree on every row and every failing row (issue 11 item 3).

A table of sample DataFrames (dotted columns, NaN/None/NaT, numpy scalars, tz-aware and naive
timestamps, categoricals, nested list/dict cells) × a table of mapping rules (some failing on some
rows) is run through each path. Compared, ids and timestamps aside:

- the bodies ``flow.test`` feeds are ``to_records(sample)``;
- a row the preview maps without error is a ``flow.test`` output with the same fields and values
  (the preview shows undefined as an empty cell) and exactly ``Mapping.apply`` of its record;
- a row the preview marks in ``_error`` is a dead letter of the mapping step: same record, type
  ``EvaluationError``, and its message is the preview's ``_error`` (+ the expression);
- the editor's preview is ``Mapping.preview``'s frame; the builder's result is ``flow.test``'s.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import flownb
from flownb.notebook import FlowBuilder, MappingEditor
from flownb.records import to_records
from flownb.rules import Mapping

SAMPLES = {
    "dotted+missing": pd.DataFrame({
        "customer.email": ["Ann@X.io", None, "CY@x.io", np.nan, 5],
        "customer.first": ["Ann", "Bob", None, "Dee", "Ed"],
        "customer.last": ["Lee", "Ray", "Ng", None, "Oz"],
        "n": [1.5, np.nan, 3.0, -1.0, 2.0],
    }, index=list("abcde")),
    "numpy": pd.DataFrame({
        "i": np.array([1, 2, 3], dtype=np.int64),
        "u": np.array([7, 8, 9], dtype=np.uint16),
        "f": np.array([0.5, np.nan, 2.0]),
        "flag": np.array([True, False, True]),
        "n": pd.Series([np.int64(4), np.float64(1.5), None], dtype=object),
    }),
    "timestamps": pd.DataFrame({
        "at": pd.to_datetime(["2024-01-02T03:04:05.123", None, "2024-06-30T23:59:59.000"], utc=True),
        "local": pd.to_datetime(["2024-01-02T04:04:05", "2024-03-04T00:00:00", None]).tz_localize("Europe/Paris"),
        "naive": pd.to_datetime(["2024-01-02T03:04:05", "2024-03-04T00:00:00", pd.NaT]),
        "since": pd.to_timedelta(["1s", None, "2m"]),
    }),
    "categoricals": pd.DataFrame({
        "tier": pd.Categorical(["gold", None, "silver", "gold"]),
        "n": pd.Categorical([1, 2, 1, 3]),
        "x": pd.Categorical(["A", "b", None, "C"]),
    }),
    "nested": pd.DataFrame({
        "items": [[{"sku": "a", "qty": np.int64(2), "price": 1.5}], [],
                  [{"sku": "b", "qty": 1, "price": np.nan}], None,
                  [{"sku": "c", "qty": 3, "price": 2}, {"sku": "d", "qty": 1, "price": 4.25}]],
        "meta": [{"tags": ["x"], "note": None}, {"tags": []}, None, {"tags": ("y", "z")}, {"n": np.int64(1)}],
    }),
    "mixed types": pd.DataFrame({
        "x": ["ABC", 5, None, "dEf", 2.5, np.nan],
        "customer.email": ["A@x", "b@x", None, 7, "E@x", "f@x"],
        "n": pd.array([1, None, 3, 4, None, 6], dtype="Int64"),
    }),
}

RULES = {
    "customer": {"email": "$lowercase(customer.email)", "has_email": "$exists(customer.email)",
                 "name": 'customer.first & " " & customer.last'},
    "numbers": {"n2": "n * 2", "big": "n > 1", "kind": "$type(n)", "flag": "flag", "sum": "i + u"},
    "timestamps": {"at": "at", "day": "$substring(at, 0, 10)", "ms": "$toMillis(at)", "local": "local",
                   "naive": "naive", "later": "local > at", "since": "since"},
    "categories": {"tier": "$uppercase(tier)", "n": "n"},
    "nested": {"total": "$sum(items.(qty * price))", "skus": "items.sku", "tags": "meta.tags",
               "note": "$exists(meta.note)"},
    "lowercase x": {"lower": "$lowercase(x)"},
}

CASES = [(s, r) for s in SAMPLES for r in RULES]


def _flow(fields: dict) -> flownb.Flow:
    return flownb.Flow(name="parity", trigger=flownb.step("in", "webhook", token_env="PARITY_TOKEN"),
                       steps=[Mapping(fields=fields).step("map")])


def _empty(v) -> bool:
    return not isinstance(v, (list, dict)) and pd.isna(v)


def _preview_side(preview: pd.DataFrame) -> tuple[list, list]:
    """(position, row without empty cells) of the good rows; (position, _error) of the bad ones."""
    ok, bad = [], []
    for pos, row in enumerate(preview.to_dict("records")):
        err = row.pop("_error")
        if isinstance(err, str):
            bad.append((pos, err))
        else:
            ok.append((pos, {k: v for k, v in row.items() if not _empty(v)}))
    return ok, bad


def _dead(result) -> list:
    return [(d.step, d.error.type, d.error.message, d.message.body) for d in result.dead_letters]


@pytest.mark.parametrize("sample_name, rules_name", CASES, ids=[f"{s} × {r}" for s, r in CASES])
def test_four_paths_agree(sample_name, rules_name):
    df, fields = SAMPLES[sample_name], RULES[rules_name]
    records = to_records(df)
    mapping = Mapping(fields=fields)

    preview = mapping.preview(df)                                                   # 1. preview
    editor = MappingEditor(df, mapping=fields, rows=len(df), debounce=0)            # 2. editor
    builder = FlowBuilder(sample=df, flow=_flow(fields))                            # 3. builder
    built = builder.run()
    tested = _flow(fields).test(df)                                                 # 4. flow.test

    # the editor shows the preview; the builder's run is flow.test
    assert editor.errors == {} and editor.sample_error is None
    pd.testing.assert_frame_equal(editor.preview, preview)
    assert editor.failing == mapping.failing_rows()
    assert built is not None, builder.status.value
    assert built.outputs == tested.outputs
    assert _dead(built) == _dead(tested)

    # flow.test feeds the same records the preview maps
    assert tested.outputs["in"] == records

    ok, bad = _preview_side(preview)
    out = tested.outputs["map"]
    assert len(out) == len(ok) and len(tested.dead_letters) == len(bad)
    for (pos, row), body in zip(ok, out, strict=True):
        assert body == mapping.apply(records[pos])
        assert {k: v for k, v in body.items() if v is not None} == row, (pos, body, row)
    for (pos, err), (step, kind, message, body) in zip(bad, _dead(tested), strict=True):
        assert (step, kind, body) == ("map", "EvaluationError", records[pos])
        assert message.startswith(f"{err} (expression: "), (message, err)
    assert [e["row"] for e in mapping.errors] == [df.index[pos] for pos, _ in bad]


def test_the_table_covers_errors_and_missing_values():
    """The table is worth something: rows fail in several (sample, rules) pairs, and missing cells
    are undefined (no error) rather than null (an error for $lowercase)."""
    failing = {(s, r) for s, r in CASES if Mapping(fields=RULES[r]).preview(SAMPLES[s])["_error"].notna().any()}
    assert {("dotted+missing", "customer"), ("mixed types", "lowercase x"), ("nested", "nested"),
            ("mixed types", "customer")} <= failing
    p = Mapping(fields=RULES["customer"]).preview(SAMPLES["dotted+missing"])
    assert p["_error"].notna().tolist() == [False, False, False, False, True]  # only the number 5
    assert p["has_email"].tolist() == [True, False, True, False, True]


def test_list_of_dicts_sample_agrees_too():
    rows = [{"x": "A", "customer.email": "kept flat"}, {"x": 3}, {"x": None}, {}]
    fields = {"lower": "$lowercase(x)", "flat": "`customer.email`"}
    preview = Mapping(fields=fields).preview(rows)
    editor = MappingEditor(rows, mapping=fields, debounce=0)
    pd.testing.assert_frame_equal(editor.preview, preview)
    tested = _flow(fields).test(rows)
    built = FlowBuilder(sample=rows, flow=_flow(fields)).run()
    assert tested.outputs == built.outputs and _dead(tested) == _dead(built)
    assert tested.outputs["map"] == [{"lower": "a", "flat": "kept flat"}, {}]
    assert preview["_error"].notna().tolist() == [False, True, True, False]  # null is not a string
    assert [d.message.body for d in tested.dead_letters] == [{"x": 3}, {"x": None}]


@pytest.mark.parametrize("sample_name", list(SAMPLES))
def test_a_runtime_fed_the_dataframe_queues_the_records_the_preview_maps(sample_name, tmp_path):
    """``LocalRuntime.feed`` (any runtime's sample) reads a DataFrame with the same conversion: the
    trigger's messages are ``to_records(df)``, and the mapping step's outputs are the preview's rows."""
    from flownb.runtime.local import LocalRuntime

    df, fields = SAMPLES[sample_name], RULES["customer"] if sample_name == "dotted+missing" else {"all": "$"}
    flow = _flow(fields)
    with LocalRuntime(flow, state_dir=tmp_path, record=True) as rt:
        assert rt.feed(df) == len(df)
        rt.drain()
        assert rt.recorded["in"] == to_records(df)
        assert rt.recorded["map"] == [Mapping(fields=fields).apply(r) for r in to_records(df)
                                      if not _fails(fields, r)]


def _fails(fields: dict, record: dict) -> bool:
    try:
        Mapping(fields=fields).apply(record)
    except Exception:
        return True
    return False
