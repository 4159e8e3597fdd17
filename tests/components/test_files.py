"""csv.poll and csv.write through the shared runners, on real files in tmp_path."""

from __future__ import annotations

import os
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flownb.components.files import _cell_parser, parse_cell
from flownb.errors import ConfigError, FatalError
from flownb.message import Message


def write(path, text, *, age: float = 10.0):
    path.write_text(text, encoding="utf-8")
    t = time.time() - age  # settled: not being written any more
    os.utime(path, (t, t))


def append(path, text, *, age: float = 5.0):
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(text)
    t = time.time() - age
    os.utime(path, (t, t))


def ids(msgs):
    return [m.body["id"] for m in msgs]


@pytest.mark.parametrize("text, value", [
    ("42", 42), ("-7", -7), ("007", "007"), ("0", 0), ("3.14", 3.14), ("1e3", 1000.0), (".5", 0.5),
    ("", None), ("abc", "abc"), ("12abc", "12abc"), ("2024-01-01", "2024-01-01"), (" 5 ", 5),
])
def test_parse_cell(text, value):
    assert parse_cell(text) == value and type(parse_cell(text)) is type(value)
    assert parse_cell("42", numbers=False) == "42"


CELL_EDGES = ["42", "007", "0", "00", "0.5", "00.0", "007.5", "1.", ".5", "1.2.3", "1.5 ", " 1.5", "+1.5", "-1.5",
              "1_0.5", "1e5", "1.5e3", "٣.5", "3.٥", "²", "1²", "12abc", "1.x", "", " ", "-", ".", "+", "inf", "nan"]


@given(st.one_of(st.sampled_from(CELL_EDGES),
                 st.text(alphabet="0123456789.+-eE _x٣²\t", max_size=8),
                 st.from_regex(r"\A[0-9]{1,6}\.[0-9]{0,4}\Z")))
def test_csv_poll_cell_fast_paths_give_what_parse_cell_gives(text):
    """csv.poll reads cells with _cell_parser's fast paths (plain ints, plain decimals): the same
    value and type as the documented rules of parse_cell, for any text."""
    fast = _cell_parser(True)(text)
    assert fast == parse_cell(text) and type(fast) is type(parse_cell(text)), text


def test_poll_glob_cursor_key_across_appends_new_files_and_restart(tmp_path, trigger_runner):
    a = tmp_path / "orders-1.csv"
    write(a, "id,ts,amount,code\n1,2024-01-01T10:00,1.5,007\n2,2024-01-01T10:00,2,010\n")
    cfg = {"path": str(tmp_path / "orders-*.csv"), "cursor": "ts", "key": "id", "file_field": "file"}
    runner = trigger_runner("csv.poll", cfg)
    msgs, _, state = runner.poll({})
    assert [m.body for m in msgs] == [
        {"id": 1, "ts": "2024-01-01T10:00", "amount": 1.5, "code": "007", "file": str(a)},
        {"id": 2, "ts": "2024-01-01T10:00", "amount": 2, "code": "010", "file": str(a)}]
    assert state["cursor"] == "2024-01-01T10:00" and state["seen"] == [1, 2]
    assert runner.poll(state)[0] == []
    # an append with the same cursor value, and a new file; then a restart (fresh runner)
    append(a, "3,2024-01-01T10:00,3,\n")
    write(tmp_path / "orders-2.csv", "id,ts,amount,code\n5,2024-01-01T11:00,5,\n4,2024-01-01T10:30,4,\n")
    runner2 = trigger_runner("csv.poll", cfg)
    msgs, _, state = runner2.poll(state)
    assert ids(msgs) == [3, 4, 5]
    assert msgs[0].body["code"] is None
    assert state["cursor"] == "2024-01-01T11:00" and state["seen"] == [5]
    # a rewrite of a file with old rows plus one new row emits only the new row
    write(a, "id,ts,amount,code\n1,2024-01-01T10:00,1.5,007\n6,2024-01-01T12:00,6,\n", age=1.0)
    msgs, _, state = runner2.poll(state)
    assert ids(msgs) == [6]


def test_poll_without_key_uses_row_identity(tmp_path, trigger_runner):
    f = tmp_path / "events.csv"
    write(f, "n,what\n1,a\n1,b\n")
    runner = trigger_runner("csv.poll", {"path": str(f), "cursor": "n"})
    msgs, _, state = runner.poll({})
    assert [m.body["what"] for m in msgs] == ["a", "b"]
    append(f, "1,c\n2,d\n")
    msgs, _, state = runner.poll(state)
    assert [m.body["what"] for m in msgs] == ["c", "d"]
    assert state["cursor"] == 2


def test_poll_numeric_cursor_orders_numerically_and_skips_empty_cursor(tmp_path, trigger_runner):
    f = tmp_path / "x.csv"
    write(f, "id,name\n10,ten\n9,nine\n,none\n100,hundred\n")
    runner = trigger_runner("csv.poll", {"path": str(f), "cursor": "id"})
    msgs, _, state = runner.poll({})
    assert ids(msgs) == [9, 10, 100] and state["cursor"] == 100


def test_poll_leaves_a_line_being_written_for_the_next_poll(tmp_path, trigger_runner):
    f = tmp_path / "live.csv"
    f.write_text("id,v\n1,a\n2,b", encoding="utf-8")  # just written, no final newline yet
    runner = trigger_runner("csv.poll", {"path": str(f), "cursor": "id"})
    msgs, _, state = runner.poll({})
    assert ids(msgs) == [1]
    with open(f, "a", encoding="utf-8") as fh:
        fh.write("bc\n")
    msgs, _, state = runner.poll(state)
    assert [m.body for m in msgs] == [{"id": 2, "v": "bbc"}]


def test_poll_headerless_files_and_errors(tmp_path, trigger_runner, flow_factory):
    f = tmp_path / "h.csv"
    write(f, "1;x\n2;y\n")
    runner = trigger_runner("csv.poll", {"path": str(f), "cursor": "id", "columns": ["id", "v"],
                                         "delimiter": ";"})
    assert [m.body for m in runner.poll({})[0]] == [{"id": 1, "v": "x"}, {"id": 2, "v": "y"}]
    bad = tmp_path / "bad.csv"
    write(bad, "a,b\n1,2\n")
    with pytest.raises(FatalError, match="no column 'id'"):
        trigger_runner("csv.poll", {"path": str(bad), "cursor": "id"}).poll({})
    assert trigger_runner("csv.poll", {"path": str(tmp_path / "none*.csv"), "cursor": "id"}).poll({})[0] == []
    with pytest.raises(ConfigError, match="not among columns"):
        flow_factory(("csv.poll", {"path": "x", "cursor": "id", "columns": ["a"]})).validate_components()


def _rows_csv(path, ids, *, age: float = 10.0):
    write(path, "id,v\n" + "".join(f"{i},v{i}\n" for i in ids), age=age)


def _poll_all(runner_factory, state, limit=100):
    """Poll with a fresh runner each time (a restart between batches) until the pass ends."""
    got, sizes = [], []
    for _ in range(limit):
        msgs, _, state = runner_factory().poll(state)
        got += ids(msgs)
        sizes.append(len(msgs))
        if "pass" not in state:
            return got, sizes, state
    raise AssertionError("the pass did not end")


def test_poll_emits_batches_from_a_committed_offset_and_resumes_after_a_restart(tmp_path, trigger_runner):
    f = tmp_path / "big.csv"
    _rows_csv(f, range(1, 2501))
    cfg = {"path": str(f), "cursor": "id", "key": "id", "batch_size": 1000, "interval": "5m"}
    runner = trigger_runner("csv.poll", cfg)
    msgs, _, state = runner.poll({})
    assert ids(msgs) == list(range(1, 1001))
    # mid-pass: the byte offset of row 1001 is in the state; the cursor moves when the pass ends
    assert state["pass"]["offset"] == len("id,v\n" + "".join(f"{i},v{i}\n" for i in range(1, 1001)))
    assert "cursor" not in state and runner.next_delay(state) == 0.0
    got, sizes, state = _poll_all(lambda: trigger_runner("csv.poll", cfg), state)
    assert got == list(range(1001, 2501)) and sizes == [1000, 500]
    assert state["cursor"] == 2500 and state["seen"] == [2500] and runner.next_delay(state) == 300.0
    assert trigger_runner("csv.poll", cfg).poll(state)[0] == []
    # an append: a new pass reads the changed file again, the cursor skips what was emitted
    append(f, "".join(f"{i},v{i}\n" for i in range(2501, 2601)))
    got, sizes, state = _poll_all(lambda: trigger_runner("csv.poll", cfg), state)
    assert got == list(range(2501, 2601)) and state["cursor"] == 2600


def test_poll_batches_span_files_and_a_pass_compares_with_the_cursor_it_began_with(tmp_path, trigger_runner):
    """Files of one pass are read one after another; rows are compared with the cursor saved when
    the pass began: a later file with lower cursors than an earlier one loses nothing."""
    _rows_csv(tmp_path / "a.csv", range(250, 550))
    _rows_csv(tmp_path / "b.csv", range(1, 250))
    cfg = {"path": str(tmp_path / "*.csv"), "cursor": "id", "key": "id", "batch_size": 200}
    got, sizes, state = _poll_all(lambda: trigger_runner("csv.poll", cfg), {})
    assert sorted(got) == list(range(1, 550)) and len(got) == len(set(got))
    assert sizes == [200, 200, 149] and state["cursor"] == 549
    # within a batch, rows are in (cursor, key) order
    msgs, _, _ = trigger_runner("csv.poll", {**cfg, "batch_size": 1000}).poll({})
    assert ids(msgs) == list(range(1, 550))


def test_poll_file_replaced_mid_pass_is_read_again_from_its_start(tmp_path, trigger_runner):
    f = tmp_path / "x.csv"
    _rows_csv(f, range(1, 301))
    cfg = {"path": str(f), "cursor": "id", "key": "id", "batch_size": 100}
    msgs, _, state = trigger_runner("csv.poll", cfg).poll({})
    assert ids(msgs) == list(range(1, 101))
    _rows_csv(f, range(1, 51))  # shorter than the saved offset: replaced
    got, _, state = _poll_all(lambda: trigger_runner("csv.poll", cfg), state)
    assert got == list(range(1, 51)) and state["cursor"] == 100  # at least once, never lost


def test_poll_reads_only_ascii_compatible_encodings(tmp_path, trigger_runner):
    f = tmp_path / "u16.csv"
    f.write_text("id\n1\n", encoding="utf-16")
    with pytest.raises(FatalError, match="convert the file to UTF-8"):
        trigger_runner("csv.poll", {"path": str(f), "cursor": "id", "encoding": "utf-16"}).poll({})
    g = tmp_path / "latin.csv"
    write(g, "id,name\n1,x\n")
    g.write_bytes("\ufeffid,name\n1,Zoë\n".encode("utf-8"))
    msgs, _, _ = trigger_runner("csv.poll", {"path": str(g), "cursor": "id"}).poll({})
    assert [m.body for m in msgs] == [{"id": 1, "name": "Zoë"}]  # a UTF-8 byte-order mark is not a column


# -- csv.write ------------------------------------------------------------------------------------

def _msgs(*bodies):
    return [Message(body=b, flow="f", step="src") for b in bodies]


def test_write_header_once_and_batches(tmp_path, step_runner):
    out = tmp_path / "sub" / "out.csv"
    runner = step_runner("csv.write", {"path": str(out)})
    res = runner.run_batch(_msgs({"id": 1, "name": "a,b", "tags": ["x"], "ok": True},
                                 {"id": 2, "name": None, "extra": 1, "ok": False}))
    assert all(o.ok for o in res) and res[0].outputs[0].body["id"] == 1
    runner2 = step_runner("csv.write", {"path": str(out)})  # a restart: header already there
    runner2.run(_msgs({"id": 3, "name": 'say "hi"'})[0])
    assert out.read_text() == ('id,name,tags,ok\n1,"a,b","[""x""]",true\n2,,,false\n'
                               '3,"say ""hi""",,\n')


def test_write_columns_extra_and_header_mismatch(tmp_path, step_runner):
    out = tmp_path / "o.csv"
    strict = step_runner("csv.write", {"path": str(out), "columns": ["id", "v"], "on_extra": "error",
                                       "passthrough": False})
    res = strict.run_batch(_msgs({"id": 1, "v": 2}, {"id": 2, "w": 3}))
    assert res[0].ok and res[0].outputs == []
    assert res[1].dead and "'w'" in res[1].error.message
    assert out.read_text() == "id,v\n1,2\n"
    other = step_runner("csv.write", {"path": str(out), "columns": ["v", "id"]})
    res = other.run(_msgs({"id": 1, "v": 2})[0])
    assert res.dead and "has header ['id', 'v']" in res.error.message


def test_write_says_once_per_field_which_fields_it_leaves_out(tmp_path, step_runner, caplog):
    """on_extra: ignore (the default) drops fields that are not columns — never silently: one WARNING
    per field name, not one per batch."""
    import logging
    out = tmp_path / "o.csv"
    lax = step_runner("csv.write", {"path": str(out)})
    with caplog.at_level(logging.WARNING, logger="flownb"):
        assert all(r.ok for r in lax.run_batch(_msgs({"id": 1, "country": "XX"})))  # the header: id,country
        assert all(r.ok for r in lax.run_batch(_msgs({"id": 2, "country": "GB", "vat": 0.2},
                                                     {"id": 3, "country": "FR", "vat": 0.21})))
        assert all(r.ok for r in lax.run_batch(_msgs({"id": 4, "country": "DE", "vat": 0.19, "note": "x"})))
    said = [r.getMessage() for r in caplog.records if "are left out" in r.getMessage()]
    assert len(said) == 2 and "['vat'] are not columns of" in said[0] and "(id, country)" in said[0]
    assert "['note']" in said[1] and "on_extra: error" in said[1]
    assert out.read_text() == "id,country\n1,XX\n2,GB\n3,FR\n4,DE\n"

def test_write_then_poll_round_trip(tmp_path, step_runner, trigger_runner):
    out = tmp_path / "rt.csv"
    step_runner("csv.write", {"path": str(out)}).run_batch(
        _msgs(*({"id": i, "price": i * 1.5, "sku": f"{i:04d}"} for i in range(1, 4))))
    msgs, _, _ = trigger_runner("csv.poll", {"path": str(out), "cursor": "id"}).poll({})
    assert [m.body for m in msgs] == [{"id": i, "price": i * 1.5, "sku": f"{i:04d}"} for i in range(1, 4)]


def test_poll_of_a_path_that_matches_nothing_warns_once_with_the_folder(tmp_path, trigger_runner, caplog,
                                                                        monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = trigger_runner("csv.poll", {"path": "data/orders.csv", "cursor": "n"})
    with caplog.at_level("WARNING"):
        msgs, _, state = runner.poll({})
        msgs2, _, state = runner.poll(state)
    assert msgs == [] and msgs2 == []
    warnings = [r.getMessage() for r in caplog.records if "no file matches" in r.getMessage()]
    assert warnings == [f"csv.poll 'src': no file matches 'data/orders.csv' (relative paths are read from "
                        f"the current directory, {tmp_path}); nothing to read until one appears"]
    (tmp_path / "data").mkdir()
    write(tmp_path / "data" / "orders.csv", "n,v\n1,a\n")
    msgs, _, state = runner.poll(state)
    assert [m.body["v"] for m in msgs] == ["a"]
