"""MappingEditor driven through its widgets: values typed, buttons clicked, preview and errors read back."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pandas as pd
import pytest

import flownb
from flownb import rules
from flownb.notebook import MappingEditor

SAMPLE = Path(__file__).resolve().parents[2] / "notebooks" / "data" / "orders.json"
FIELDS = {"email": "$lowercase(customer.email)", "total": "$sum(items.(qty * price))"}


@pytest.fixture
def sample() -> pd.DataFrame:
    return pd.read_json(SAMPLE)


def test_preview_follows_the_expressions(sample):
    ed = MappingEditor(sample, mapping=FIELDS, debounce=0)
    p = ed.preview
    assert list(p.columns[:2]) == ["email", "total"] and "_error" in p.columns
    assert p["email"].tolist() == ["ada@example.com", "grace@navy.mil", "alan@turing.org",
                                   "edsger@utexas.edu", "barbara@mit.edu", "ken@bell-labs.com"]
    ok = p["_error"].fillna("").astype(str) == ""
    assert ok.tolist() == [True, True, True, False, True, True]  # order 1004 has qty "two"
    assert p.loc[ok, "total"].round(2).tolist() == [115.5, 19.99, 200.0, 116.0, 79.96]
    assert ed.failing == 1 and "1 of 6 rows fail" in ed.summary.value
    ed.set_field("email", "$uppercase(customer.country)")
    assert ed.preview["email"].tolist() == ["GB", "US", "GB", "NL", "US", "US"]
    assert "<td" in ed.preview_html.value and "NL" in ed.preview_html.value


def test_broken_expression_shows_position_and_keeps_other_fields(sample):
    ed = MappingEditor(sample, mapping=FIELDS, debounce=0)
    ed.set_field("email", "$lowercase(customer.email")
    row = ed._rows[0]
    assert "position" in row.error.value and "^" in row.error.value
    assert list(ed.preview.columns) == ["total", "_error"]
    assert "1 field with errors" in ed.summary.value
    with pytest.raises(flownb.ExpressionError) as info:
        _ = ed.mapping
    assert info.value.position is not None and info.value.field == "email"


def test_an_unknown_function_is_named_once_at_its_field_not_on_every_row(sample):
    ed = MappingEditor(sample, mapping=FIELDS, debounce=0)
    ed.set_field("email", "$lowercas(customer.email)")
    assert "unknown function '$lowercas'; did you mean '$lowercase'?" in ed._rows[0].error.value
    assert list(ed.preview.columns) == ["total", "_error"]  # its column is left out, the rows do not repeat it
    assert not ed.preview["_error"].fillna("").astype(str).str.contains("lowercas").any()
    assert "1 field with errors" in ed.summary.value
    with pytest.raises(flownb.ExpressionError, match=r"unknown function '\$lowercas'") as info:
        _ = ed.mapping
    assert (info.value.field, info.value.position) == ("email", 0)


def test_add_remove_duplicate_and_empty_fields(sample):
    ed = MappingEditor(sample, mapping=FIELDS, debounce=0)
    ed.add_button.click()
    assert len(ed._rows) == 3 and ed._rows[2].error.value == ""  # an empty new row is not an error yet
    ed._rows[2].expr.value = "status"
    assert "give this field a name" in ed._rows[2].error.value
    ed._rows[2].name.value = "email"
    assert "used twice" in ed._rows[2].error.value
    ed._rows[2].name.value = "status"
    assert ed.preview["status"].tolist()[:3] == ["paid", "paid", "refunded"]
    ed._rows[0].remove.click()
    assert list(ed.fields) == ["total", "status"]
    m = ed.mapping
    assert isinstance(m, rules.Mapping)
    step = m.step("to-contact")
    assert step.name == "to-contact" and step.component == "mapping"


def test_paths_helper_lists_nested_paths_and_inserts(sample):
    ed = MappingEditor(sample, mapping={"x": "order_id"}, debounce=0)
    paths = [b.description for b in ed.paths_box.children]
    assert {"order_id", "customer", "customer.email", "customer.country", "items", "items.qty",
            "items.price"} <= set(paths)
    ed.add_field()
    button = next(b for b in ed.paths_box.children if b.description == "customer.country")
    button.click()
    row = ed._rows[-1]
    assert row.expr.value == "customer.country" and row.name.value == "country"
    assert ed.preview["country"].tolist()[0] == "GB"


def test_default_fields_are_the_sample_columns(sample):
    ed = MappingEditor(sample[["order_id", "status"]], debounce=0)
    assert ed.fields == {"order_id": "order_id", "status": "status"}
    assert ed.preview["status"].tolist()[0] == "paid"


@pytest.mark.parametrize("bad", ["orders.csv", 42, None, [1, 2]])
def test_a_sample_that_is_not_a_dataframe_is_a_message(bad):
    ed = MappingEditor(bad, mapping=FIELDS, debounce=0)
    assert "must be a pandas DataFrame" in ed.status.value
    assert ed.preview is None


def test_a_list_of_dicts_is_accepted():
    ed = MappingEditor([{"a": {"b": 1}}, {"a": {"b": 2}}], mapping={"b": "a.b"}, debounce=0)
    assert ed.preview["b"].tolist() == [1, 2]


def test_a_mapping_object_round_trips(sample):
    m = rules.Mapping(fields=FIELDS)
    ed = MappingEditor(sample, mapping=m, debounce=0)
    assert ed.fields == FIELDS
    assert ed.mapping.config == m.config


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock moves only when the test says: timers (call_later) fire when the
    virtual time reaches them, however slow the machine is."""

    def __init__(self):
        super().__init__()
        self.now = 0.0

    def time(self) -> float:
        return self.now

    async def advance(self, seconds: float) -> None:
        self.now += seconds
        for _ in range(3):  # the timers now due run before the caller resumes
            await asyncio.sleep(0)


def test_typing_is_debounced_on_a_running_loop(sample):
    loop = VirtualClockLoop()

    async def scenario():
        ed = MappingEditor(sample, mapping={"v": "status"}, debounce=0.2)
        for expr in ("$up", "$upper", "$uppercase(status)"):  # keystrokes 0.15 s apart: < the debounce
            ed._rows[0].expr.value = expr
            await loop.advance(0.15)
            assert ed.preview["v"].tolist()[0] == "paid"  # not recomputed while typing
        await loop.advance(0.0499)  # 0.1999 s after the last keystroke: still not
        assert ed.preview["v"].tolist()[0] == "paid"
        await loop.advance(0.0002)  # 0.2001 s: once
        return ed.preview["v"].tolist()[0]

    try:
        assert loop.run_until_complete(scenario()) == "PAID"
    finally:
        loop.close()


def test_dotted_columns_are_paths_in_fields_and_helper():
    df = pd.DataFrame({"id": [1, 2], "customer.email": ["A@X", None], "customer.address.city": ["Oslo", "Rome"]})
    ed = MappingEditor(df, debounce=0)
    assert ed.fields == {"id": "id", "customer.email": "customer.email",
                         "customer.address.city": "customer.address.city"}
    assert ed.preview["customer.email"].tolist()[0] == "A@X"  # the path finds the nested value
    assert pd.isna(ed.preview["customer.email"].tolist()[1]) and ed.failing == 0  # missing, not null
    paths = [b.description for b in ed.paths_box.children]
    assert paths == ["id", "customer", "customer.email", "customer.address", "customer.address.city"]


def test_colliding_columns_are_a_message():
    df = pd.DataFrame({"customer": ["c1"], "customer.email": ["a@x"]})
    ed = MappingEditor(df, mapping={"e": "customer.email"}, debounce=0)
    assert "columns 'customer' and 'customer.email' collide" in ed.status.value
    assert ed.preview is None


def test_a_list_of_dicts_is_not_made_a_dataframe():
    rows = [{"n": 1, "customer.email": "flat key"}, {"n": 2, "extra": True}]
    ed = MappingEditor(rows, debounce=0)
    assert ed.fields == {"n": "n", "customer.email": "`customer.email`", "extra": "extra"}
    assert ed.preview["n"].tolist() == [1, 2]  # ints stay ints (no NaN-padded float column)
    assert ed.preview["customer.email"].tolist()[0] == "flat key"


def test_a_broken_expression_keeps_its_preview_column_with_a_word(sample):
    ed = MappingEditor(sample, mapping={"id": "order_id", **FIELDS}, debounce=0)
    ed.set_field("email", "$lowercas(customer.email)")
    assert list(ed.preview.columns) == ["id", "total", "_error"]  # computed: the broken field is not
    html = ed.preview_html.value
    assert "not computed: email — the expression above has an error" in html
    heads = re.findall(r"<th(?:\s[^>]*)?>(.*?)</th>", html)
    assert heads[:3] == ["id", "email", "total"]  # in its place, shown as —
    assert html.count("—") == 6 + 1 and "lowercas" not in html  # the error itself is at the field, once
    assert ed._rows[1].error.value.count("unknown function '$lowercas'") == 1
    ed.set_field("email", "$lowercase(customer.email)")
    assert "not computed" not in ed.preview_html.value and "ada@example.com" in ed.preview_html.value


@pytest.mark.parametrize(("text", "selection", "snippet", "expected"), [
    ("", None, "items.qty", ("items.qty", 9)),
    ("items.qty * ", [12, 12], "items.price", ("items.qty * items.price", 23)),
    ("$sum()", [5, 5], "items.qty", ("$sum(items.qty)", 14)),                 # inside the brackets
    ("a + b", [4, 5], "items.qty", ("a + items.qty", 13)),                    # a selection is replaced
    ("items.qty", None, "items.price", ("items.qty items.price", 21)),        # no caret known: the end
    ("items.qty", [9, 9], "items.price", ("items.qty items.price", 21)),      # never run into a word
    ("qty", [0, 0], "items.price", ("items.price qty", 11)),
    ("x", [99, 99], "y", ("x y", 3)),                                         # clamped
    ("'é😀' & ", [7, 7], "name", ("'é😀' & name", 11)),                     # code points, as Python counts
])
def test_insert_at_puts_the_snippet_at_the_caret(text, selection, snippet, expected):
    from flownb.notebook._caret import insert_at
    assert insert_at(text, selection, snippet) == expected


def test_clicked_paths_go_to_the_caret_of_the_field_last_clicked_into(sample):
    ed = MappingEditor(sample, mapping={"a": "order_id", "value": ""}, debounce=0)
    buttons = {b.description: b for b in ed.paths_box.children}
    value = ed._rows[1].expr
    value.selection = [0, 0]                      # the browser reports: the user clicked into 'value'
    buttons["items.qty"].click()
    assert (value.value, value.selection) == ("items.qty", [9, 9])  # the caret moved after the insertion
    value.value, value.selection = "items.qty * ", [12, 12]        # the user typed ' * '
    buttons["items.price"].click()
    assert value.value == "items.qty * items.price" and ed._rows[0].expr.value == "order_id"
    assert not ed.errors and ed.preview["value"].tolist()[1] == 19.99  # order 1002: one item, 1 × 19.99
    ed._rows[0].expr.selection = [0, 8]           # now the first field, its whole text selected
    buttons["status"].click()
    assert ed.fields == {"a": "status", "value": "items.qty * items.price"}


def test_the_browser_reports_value_and_caret_by_message_and_they_are_not_sent_back(sample):
    """The box's changes come as custom messages (ipywidgets throttles state syncs, a button's click
    is not throttled: the order must be the user's). They are applied and observed — the field
    becomes the one a clicked path goes to — and nothing is sent back to the browser, where a late
    echo would undo newer typing."""
    ed = MappingEditor(sample, mapping={"a": "order_id", "value": ""}, debounce=0)
    buttons = {b.description: b for b in ed.paths_box.children}
    value = ed._rows[1].expr
    sent: list[dict] = []
    send = value.comm.send
    value.comm.send = lambda data=None, *a, **kw: (sent.append(data), send(data, *a, **kw))[1]
    value._handle_custom_msg({"flownb_caret": {"value": "$sum()", "selection": [5, 5]}}, [])
    assert (value.value, value.selection) == ("$sum()", [5, 5]) and sent == []
    buttons["items.qty"].click()   # the click that followed goes where the message put the caret
    assert value.value == "$sum(items.qty)" and value.selection == [14, 14]
    assert [m["state"] for m in sent if m.get("method") == "update"] == [{"value": "$sum(items.qty)",
                                                                          "selection": [14, 14]}]
    for bad in ({"flownb_caret": {"value": 3, "selection": ["x", 1]}}, {"other": 1}, "text"):
        value._handle_custom_msg(bad, [])  # not ours or malformed: ignored
    assert value.value == "$sum(items.qty)"


def test_a_box_takes_the_focus_back_from_its_own_editors_paths_only(sample):
    one, two = MappingEditor(sample, debounce=0), MappingEditor(sample, debounce=0)
    sel = one._rows[0].expr.refocus_from
    assert sel.endswith(" .flownb-path") and sel.split()[0][1:] in one.paths_box._dom_classes
    assert sel != two._rows[0].expr.refocus_from


def test_in_a_flow_context_the_editor_starts_from_the_step_and_fails_rows_as_the_runtimes_do(tmp_path):
    flow = flownb.Flow(name="big", max_message_bytes="4KiB", trigger=flownb.step("hook", "webhook", token_env="T"),
                       steps=[flownb.step("pad", "mapping", fields={"id": "id", "pad": '$join([1..size].("x"))'})])
    rows = [{"id": 1, "size": 10}, {"id": 2, "size": 5000}]
    ed = MappingEditor(rows, flow=flow, step="pad", debounce=0)
    assert ed.fields == {"id": "id", "pad": '$join([1..size].("x"))'}
    dead = flow.test(rows).dead_letters
    assert ed.failing == 1 and ed.preview.loc[1, "_error"] == dead[0].error.message
    assert "1 of 2 rows fail" in ed.summary.value and ed.notes == []
    assert MappingEditor(rows, debounce=0, mapping=ed.fields).failing == 0  # no flow: no limit known
    with pytest.raises(flownb.SpecError, match="name the mapping step"):
        MappingEditor(rows, flow=flow)


def test_in_a_csv_poll_flow_a_raw_read_csv_sample_is_flagged_and_flow_sample_is_not(tmp_path):
    (tmp_path / "o.csv").write_text("id,zip,coupon\n1,01234,\n2,10115,X\n")
    flow = flownb.Flow(name="o", trigger=flownb.step("src", "csv.poll", path=str(tmp_path / "o.csv"), cursor="id"),
                       steps=[flownb.step("shape", "mapping", fields={"zip": "$string(zip)",
                                                                      "has": "$exists(coupon)"})])
    raw = MappingEditor(pd.read_csv(tmp_path / "o.csv"), flow=flow, step="shape", debounce=0)
    assert len(raw.notes) == 1 and "did not come from flow.sample()" in raw.status.value
    assert raw.preview["zip"].tolist() == ["1234", "10115"] and raw.preview["has"].tolist() == [False, True]
    ed = MappingEditor(flow.sample(), flow=flow, step="shape", debounce=0)
    assert ed.notes == [] and ed.status.value == ""
    assert ed.preview["zip"].tolist() == ["01234", "10115"] and ed.preview["has"].tolist() == [True, True]
