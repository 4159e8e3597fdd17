"""file.read and file.write on real Parquet (pyarrow) and Excel (openpyxl) files: streaming in
batches across row groups with the offset committed (a restarted process goes on from it, a killed
one loses nothing), the same records as pandas + flownb.records give Mapping.preview, changed files
read again, Excel blank rows and sheets, atomic writes, formula-looking text kept as text."""

from __future__ import annotations

import datetime as dt
import os
import re
import signal
import sqlite3
import sys
import time
from decimal import Decimal
from pathlib import Path

import openpyxl
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flownb.errors import ConfigError
from flownb.flow import load as load_flow
from flownb.message import Message
from flownb.records import to_records

sys.path.insert(0, str(Path(__file__).parent))
from flow_kit import csv_ids, records_in, run, start, wait_first_poll, write_flow


def parquet(path: Path, n: int, first: int = 0, row_group_size: int = 700) -> Path:
    ids = list(range(first, first + n))
    table = pa.table({
        "id": pa.array(ids, pa.int64()),
        "price": pa.array([i / 4 for i in ids], pa.float64()),
        "name": pa.array([None if i % 10 == 3 else f"n{i}" for i in ids], pa.string()),
        "at": pa.array([dt.datetime(2024, 1, 1, 12, 0, 0) + dt.timedelta(seconds=i) for i in ids], pa.timestamp("us")),
        "amount": pa.array([Decimal(i) / 100 for i in ids], pa.decimal128(10, 2)),
        "tags": pa.array([["a", str(i)] for i in ids], pa.list_(pa.string())),
    })
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def excel(path: Path, rows: list[list], sheet: str = "Orders", extra_sheet_first: bool = False) -> Path:
    wb = openpyxl.Workbook()
    if extra_sheet_first:
        wb.active.title = "Notes"
        wb.active.append(["nothing here"])
        ws = wb.create_sheet(sheet)
    else:
        ws = wb.active
        ws.title = sheet
    for r in rows:
        ws.append(r)
    wb.save(path)
    return path


def test_parquet_streams_in_batches_across_row_groups_and_a_new_process_goes_on_from_the_offset(tmp_path,
                                                                                                trigger_runner):
    f = parquet(tmp_path / "orders.parquet", 2500)
    cfg = {"path": str(tmp_path / "*.parquet"), "batch_size": 1000}
    runner = trigger_runner("file.read", cfg)
    msgs, _, state = runner.poll({})
    assert [m.body["id"] for m in msgs] == list(range(1000)) and state["at"]["row"] == 1000
    runner.close()
    runner = trigger_runner("file.read", cfg)  # a restarted process with the committed state
    msgs, _, state = runner.poll(state)
    assert [m.body["id"] for m in msgs] == list(range(1000, 2000))
    msgs, _, state = runner.poll(state)
    assert [m.body["id"] for m in msgs] == list(range(2000, 2500)) and "at" not in state
    assert runner.poll(state)[0] == []
    parquet(f, 3, first=9000)  # rewritten: read again from its start
    assert [m.body["id"] for m in runner.poll(state)[0]] == [9000, 9001, 9002]


def test_a_new_file_sorting_first_waits_for_the_file_under_way(tmp_path, trigger_runner):
    parquet(tmp_path / "b.parquet", 1500)
    runner = trigger_runner("file.read", {"path": str(tmp_path / "*.parquet"), "batch_size": 1000})
    msgs, _, state = runner.poll({})
    assert len(msgs) == 1000 and state["at"]["path"].endswith("b.parquet")
    parquet(tmp_path / "a.parquet", 10, first=5000)
    msgs, _, state = runner.poll(state)
    assert [m.body["id"] for m in msgs] == list(range(1000, 1500)) + list(range(5000, 5010))
    assert runner.poll(state)[0] == []


def test_parquet_and_excel_rows_are_the_records_mapping_preview_gets_from_pandas(tmp_path, trigger_runner):
    f = parquet(tmp_path / "t.parquet", 25)
    bodies = [m.body for m in trigger_runner("file.read", {"path": str(f)}).poll({})[0]]
    assert bodies == to_records(pd.read_parquet(f))
    assert bodies[3] == {"id": 3, "price": 0.75, "at": "2024-01-01T12:00:03.000", "amount": 0.03,
                         "tags": ["a", "3"]}  # the empty name is left out
    x = excel(tmp_path / "t.xlsx", [["id", "name", "when", "ok"], [1, "a", dt.datetime(2024, 5, 6, 7, 8, 9), True],
                                    [2, None, None, False], [3, "=not a formula", dt.datetime(2024, 5, 7), None]])
    bodies = [m.body for m in trigger_runner("file.read", {"path": str(x)}).poll({})[0]]
    assert bodies == to_records(pd.read_excel(x))
    assert bodies[1] == {"id": 2, "ok": False}


def test_excel_blank_rows_sheets_columns_and_offsets(tmp_path, trigger_runner):
    rows = [["id", "v"]] + [[i, f"v{i}"] if i % 4 else [None, None] for i in range(1, 26)]
    x = excel(tmp_path / "in.xlsx", rows, extra_sheet_first=True)
    cfg = {"path": str(x), "sheet": "Orders", "batch_size": 7, "columns": ["id"], "file_field": "_file"}
    runner = trigger_runner("file.read", cfg)
    got, state = [], {}
    for _ in range(10):
        msgs, _, state = runner.poll(state)
        got += [m.body for m in msgs]
    want = [i for i in range(1, 26) if i % 4]
    assert [b["id"] for b in got] == want and all(set(b) == {"id", "_file"} for b in got)
    bad = trigger_runner("file.read", {"path": str(x), "sheet": "Nope"})
    with pytest.raises(Exception, match="has no sheet 'Nope'; sheets: Notes, Orders"):
        bad.poll({})


def test_sigkill_mid_file_loses_nothing_and_repeats_nothing(tmp_path):
    """A file of 50,000 rows in batches of 200: once the first batches are committed the test takes
    the SQLite write lock, so the next batch read cannot be committed, and the process is killed with
    SIGKILL; the restarted process goes on from the committed offset: the trigger emits every row
    once (the csv.write sink, at-least-once, may append its last batch again)."""
    parquet(tmp_path / "big.parquet", 50000, row_group_size=7000)
    spec = write_flow(tmp_path, "pq-kill", {"component": "file.read",
                                            "config": {"path": "big.parquet", "batch_size": 200}},
                      [{"name": "save", "component": "csv.write", "config": {"path": "out.csv", "fsync": False,
                                                                              "columns": ["id"]}}])
    state, log = tmp_path / "state", tmp_path / "first.log"
    db = state / "pq-kill.db"
    proc = start(spec, state, log)
    lock = None
    try:
        wait_first_poll(proc, db, log)
        lock = sqlite3.connect(db, isolation_level=None, timeout=30)
        lock.execute("BEGIN IMMEDIATE")
        committed = orjson.loads(lock.execute("SELECT state FROM trigger_state").fetchone()[0])
        time.sleep(1.0)  # the next poll has read its batch and waits for the lock
        assert proc.poll() is None
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        if lock is not None:
            lock.execute("ROLLBACK")
            lock.close()
    done = committed["at"]["row"]
    assert 0 < done < 50000, committed  # killed mid-file
    again = re.search(r"([\d,]+) record\(s\) in from 'src'", records_in(run(spec, state, timeout=180)))
    assert again and int(again.group(1).replace(",", "")) == 50000 - done  # the trigger: each row once
    ids = csv_ids(tmp_path / "out.csv")
    assert sorted(set(ids)) == list(range(50000))  # nothing lost
    # csv.write appends at least once: the batch it had written when killed may be written again
    assert len(ids) - 50000 <= 200
    assert "0 record(s) in from 'src'" in records_in(run(spec, state))


def test_write_excel_appends_batches_under_one_header_and_keeps_text_as_text(tmp_path, step_runner):
    path = tmp_path / "out" / "report.xlsx"
    runner = step_runner("file.write", {"path": str(path), "sheet": "Report"})
    first = runner.run_batch([Message(body={"id": 1, "name": "=HYPERLINK(\"http://x\")", "tags": ["a"]}),
                              Message(body={"id": 2, "name": "-5", "total": 2.5})])
    assert all(o.ok for o in first)
    second = runner.run_batch([Message(body={"id": 3, "name": "@SUM(A1)"})])
    assert second[0].ok
    wb = openpyxl.load_workbook(path)
    rows = [[c.value for c in r] for r in wb["Report"].iter_rows()]
    assert rows == [["id", "name", "tags", "total"], [1, "'=HYPERLINK(\"http://x\")", '["a"]', None],
                    [2, "-5", None, 2.5], [3, "'@SUM(A1)", None, None]]
    assert all(c.data_type != "f" for r in wb["Report"].iter_rows() for c in r)  # no formulas
    strict = step_runner("file.write", {"path": str(path), "sheet": "Report", "on_extra": "error"})
    out = strict.run_batch([Message(body={"id": 4, "oops": 1}), Message(body={"id": 5})])
    assert [o.ok for o in out] == [False, True] and "are not columns" in out[0].error.message
    last = [[c.value for c in r] for r in openpyxl.load_workbook(path)["Report"].iter_rows()][-1]
    assert last == [5, None, None, None]
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_write_parquet_part_files_read_back_whole_and_mixed_types_become_text(tmp_path, step_runner):
    runner = step_runner("file.write", {"path": str(tmp_path / "ds"), "format": "parquet"})
    assert all(o.ok for o in runner.run_batch([Message(body={"id": i, "v": i * 1.5, "k": {"a": i}})
                                               for i in range(3)]))
    assert all(o.ok for o in runner.run_batch([Message(body={"id": 3, "v": "text", "k": None})]))
    parts = sorted((tmp_path / "ds").glob("part-*.parquet"), key=lambda p: pq.read_metadata(p).num_rows)
    assert [pq.read_metadata(p).num_rows for p in parts] == [1, 3]
    assert pq.read_table(parts[0]).column("v").type == pa.string()  # 'text' and no number: text
    back = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True).sort_values("id")
    assert list(back["id"]) == [0, 1, 2, 3] and list(back["k"][:3]) == ['{"a":0}', '{"a":1}', '{"a":2}']
    mixed = tmp_path / "mixed"
    runner = step_runner("file.write", {"path": str(mixed), "format": "parquet"})
    assert all(o.ok for o in runner.run_batch([Message(body={"id": 4, "v": 1}), Message(body={"id": 5, "v": "x"}),
                                               Message(body={"id": 6, "v": [1]})]))
    table = pq.read_table(next(mixed.glob("part-*.parquet")))
    assert table.column("v").type == pa.string() and table.column("v").to_pylist() == ["1", "x", "[1]"]



def test_write_parquet_typed_columns_give_every_batching_one_schema(tmp_path, step_runner):
    """With ``types``, a column has its type in every part file whatever its batch holds — one row
    per batch (a RabbitMQ worker with prefetch 1) writes what one batch of all rows writes — and a
    value that does not fit dead-letters its message alone."""
    cfg = {"format": "parquet", "columns": ["id", "n", "ok", "tags"],
           "types": {"id": "string", "n": "float", "ok": "bool", "tags": "json"}}
    bodies = [{"id": 1, "n": 2, "ok": True, "tags": ["a"]}, {"id": "A-2", "n": 0.5, "tags": "x"},
              {"id": 3, "n": "many", "ok": False}, {"id": 4, "n": None, "ok": "yes"}]
    whole = step_runner("file.write", {**cfg, "path": str(tmp_path / "whole")})
    outcomes = whole.run_batch([Message(body=b) for b in bodies])
    assert [o.ok for o in outcomes] == [True, True, False, False]
    assert "column 'n' is typed float but the message has \"many\"" in outcomes[2].error.message
    assert "column 'ok' is typed bool" in outcomes[3].error.message and not outcomes[3].error.retryable
    single = step_runner("file.write", {**cfg, "path": str(tmp_path / "single")})
    assert [o.ok for b in bodies for o in single.run_batch([Message(body=b)])] == [True, True, False, False]
    for ds in ("whole", "single"):
        tables = [pq.read_table(f) for f in (tmp_path / ds).glob("part-*.parquet")]
        assert {str(t.schema) for t in tables} == {"id: string\nn: double\nok: bool\ntags: string"}
        rows = sorted((r for t in tables for r in t.to_pylist()), key=lambda r: r["id"])
        assert rows == [{"id": "1", "n": 2.0, "ok": True, "tags": '["a"]'},
                        {"id": "A-2", "n": 0.5, "ok": None, "tags": '"x"'}]
    for bad, match in [({"types": {"id": "string"}, "path": "b.xlsx"}, "applies to Parquet"),
                       ({"types": {"other": "int"}, "columns": ["id"], "path": "ds", "format": "parquet"},
                        "not in 'columns'")]:
        with pytest.raises(ConfigError, match=match):
            step_runner("file.write", bad)

def test_config_and_dry_run(tmp_path):
    import flownb
    spec = write_flow(tmp_path, "bad", {"component": "file.read", "config": {"path": "x.csv"}},
                      [{"name": "log", "component": "log"}])
    with pytest.raises(ConfigError, match="set format: parquet or excel"):
        load_flow(spec).validate_components()
    flow = flownb.Flow(name="dry", trigger=flownb.step("src", "file.read", path="in.parquet"),
                       steps=[flownb.step("out", "file.write", path=str(tmp_path / "r.xlsx"), columns=["id", "tags"])])
    r = flow.test([{"id": 1, "tags": ["x"], "other": 2}])
    assert r.effects["out"] == [{"path": str(tmp_path / "r.xlsx"), "format": "excel",
                                 "row": {"id": 1, "tags": '["x"]'}}]
    assert not (tmp_path / "r.xlsx").exists()
