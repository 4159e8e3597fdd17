"""Cursor time-travel on the embedded runtime: ``flownb state show|set|rewind`` (refused while the
flow runs) and ``flow.preview_poll`` (commits nothing). RabbitMQ: tests/runtime/amqp/test_cursor_amqp.py."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

import flownb
from flownb.cli import main
from flownb.errors import FlownbError, SpecError
from flownb.runtime.local import LocalRuntime
from tests.processes import stop


def _flow(tmp_path):
    return flownb.Flow(name="cursor-local", trigger=flownb.step("src", "lt.count", total=10, batch=4),
                       steps=[flownb.step("double", "lt.double")])


def _queued(state, flow):
    db = sqlite3.connect(state / f"{flow.name}.db")
    try:
        return db.execute("SELECT count(*) FROM queue").fetchone()[0]
    finally:
        db.close()


def test_state_show_rewind_set_and_the_next_poll_reads_again(tmp_path, capsys):
    flow, state = _flow(tmp_path), tmp_path / "state"
    spec = str(flow.save(tmp_path / "flow.yaml"))
    with LocalRuntime(flow, state) as rt:
        rt.poll_once()
        rt.poll_once()
        rt.drain()
    assert main(["state", "show", spec, "--state-dir", str(state)]) == 0
    assert capsys.readouterr().out.strip() == '{"next": 8}'
    assert main(["state", "rewind", spec, "--state-dir", str(state), "--to", "2"]) == 0
    assert capsys.readouterr().out.splitlines() == ['old: {"next": 8}', 'new: {"next": 2}']
    with LocalRuntime(flow, state, record=True) as rt:
        rt.poll_once()  # due at once, from the rewound cursor
        assert [b["n"] for b in rt.recorded["src"]] == [2, 3, 4, 5]
    assert main(["state", "set", spec, "--state-dir", str(state), "--to", '{"next": 9}']) == 0
    assert capsys.readouterr().out.splitlines() == ['old: {"next": 6}', 'new: {"next": 9}']
    from flownb.cursor import read_cursor
    assert read_cursor(flow, state_dir=state) == {"next": 9}
    assert main(["state", "rewind", spec, "--state-dir", str(state)]) == 0  # no --to: from the beginning
    assert capsys.readouterr().out.splitlines()[-1] == "new: {}"
    # bad input: exit 2, the cursor unchanged
    assert main(["state", "set", spec, "--state-dir", str(state), "--to", "[1, 2]"]) == 2
    assert "not a JSON object" in capsys.readouterr().err
    assert main(["state", "set", spec, "--state-dir", str(state)]) == 2
    assert main(["state", "show", spec, "--state-dir", str(state)]) == 0
    assert capsys.readouterr().out.strip() == "{}"


def test_state_is_refused_while_the_flow_runs(tmp_path, capsys):
    flow, state = _flow(tmp_path), tmp_path / "state"
    spec = str(flow.save(tmp_path / "flow.yaml"))
    with LocalRuntime(flow, state) as rt:
        rt.poll_once()
        assert main(["state", "rewind", spec, "--state-dir", str(state), "--to", "0"]) == 1
        err = capsys.readouterr().err
        assert "refusing to change the cursor while the flow runs" in err and "stop it first" in err
        assert rt.store.get_state("src")[0] == {"next": 4}
    from flownb.cursor import write_cursor
    assert write_cursor(flow, {"next": 1}, state_dir=state) == ({"next": 4}, {"next": 1})


def test_state_errors_say_what_to_do(tmp_path):
    from flownb.cursor import read_cursor, rewound, write_cursor
    flow = _flow(tmp_path)
    with pytest.raises(FlownbError, match="no local state.*--state-dir"):
        read_cursor(flow, state_dir=tmp_path / "none")
    hook = flownb.Flow(name="hook", trigger=flownb.step("in", "webhook"), steps=[flownb.step("d", "lt.double")])
    with pytest.raises(SpecError, match="does not poll"):
        write_cursor(hook, {}, state_dir=tmp_path)
    with pytest.raises(SpecError, match="several fields.*--key"):
        rewound({"a": 1, "b": 2}, 0)
    assert rewound({"cursor": "2024-05-01", "cursor_type": "date", "key": 7, "key_type": "json"},
                   "2024-01-01") == {"cursor": "2024-01-01", "cursor_type": "date"}


def test_preview_poll_shows_the_next_poll_and_commits_nothing(tmp_path):
    flow, state = _flow(tmp_path), tmp_path / "state"
    with LocalRuntime(flow, state) as rt:
        rt.poll_once()
        rt.poll_once()
    depth = _queued(state, flow)
    df = flow.preview_poll(state_dir=state)
    assert list(df["n"]) == [8, 9] and df.attrs["state"] == {"next": 8} and df.attrs["next_state"] == {"next": 10}
    assert list(flow.preview_poll({"next": 0})["n"]) == [0, 1, 2, 3]
    assert list(flow.preview_poll()["n"]) == [0, 1, 2, 3]  # no state: from the beginning
    with LocalRuntime(flow, state) as rt:
        assert rt.store.get_state("src")[0] == {"next": 8} and _queued(state, flow) == depth


def test_backfill_reads_a_past_range_again_and_leaves_the_cursor(tmp_path, capsys):
    flow = flownb.Flow(name="backfill-local", trigger=flownb.step("src", "lt.count", total=30, batch=4),
                       steps=[flownb.step("double", "lt.double")])
    state = tmp_path / "state"
    spec = str(flow.save(tmp_path / "flow.yaml"))
    with LocalRuntime(flow, state) as rt:
        for _ in range(5):
            rt.poll_once()
        rt.drain()
        assert rt.store.get_state("src")[0] == {"next": 20}
    assert main(["backfill", spec, "--state-dir", str(state), "--from", "5", "--to", "12"]) == 0
    out = capsys.readouterr().out
    assert "8 message(s) queued in 2 poll(s)" in out and 'cursor untouched: {"next": 20}' in out
    with LocalRuntime(flow, state, record=True) as rt:
        assert rt.store.get_state("src")[0] == {"next": 20}
        rt.drain()
        assert sorted(b["n"] for b in rt.recorded["double"]) == list(range(5, 13))  # 5 to 12: two pages of 4
    # refused: past the cursor, reversed; nothing changes
    assert main(["backfill", spec, "--state-dir", str(state), "--from", "15", "--to", "25"]) == 2
    assert "past the cursor" in capsys.readouterr().err
    assert main(["backfill", spec, "--state-dir", str(state), "--from", "9", "--to", "3"]) == 2
    # while a runtime holds the flow (its lock): queued for it, its cursor not touched
    with LocalRuntime(flow, state, record=True) as rt:
        assert main(["backfill", spec, "--state-dir", str(state), "--from", "1", "--to", "3"]) == 0
        assert "4 message(s) queued in 1 poll(s)" in capsys.readouterr().out
        assert rt.store.get_state("src")[0] == {"next": 20} and rt.store.depths() == {"double": 4}
        rt.drain()
        assert sorted(b["n"] for b in rt.recorded["double"]) == [1, 2, 3, 4]


def test_backfill_that_fails_half_way_leaves_the_cursor(tmp_path):
    from flownb import polling_trigger
    from flownb.cursor import backfill

    @polling_trigger("ltlocal.breaks-at-8")
    def breaks(state, ctx):
        n = int(state.get("next", 0))
        if n >= 8 and ctx.params.get("broken"):
            raise ConnectionError("source went away")
        state["next"] = n + 4
        return [{"n": i} for i in range(n, n + 4)]

    flow = flownb.Flow(name="backfill-fails", parameters={"broken": False},
                       trigger=flownb.step("src", "ltlocal.breaks-at-8"), steps=[flownb.step("double", "lt.double")])
    with LocalRuntime(flow, tmp_path) as rt:
        for _ in range(5):
            rt.poll_once()
    with pytest.raises(FlownbError, match="backfill poll failed .ConnectionError: source went away.*cursor was "
                                          "not touched, 8 message"):
        backfill(flow.with_parameters(broken=True), 0, 16, state_dir=tmp_path)
    with LocalRuntime(flow, tmp_path) as rt:
        assert rt.store.get_state("src")[0] == {"next": 20}


def test_backfill_while_flownb_run_runs_reaches_the_sink_and_leaves_the_live_cursor(tmp_path, capsys):
    """A real ``flownb run`` process polls a SQLite table into an HTTP sink; a backfill from this
    process queues a past range for it while it runs: the range arrives a second time, live rows
    keep arriving, and the cursor is the running flow's alone."""
    import subprocess
    import sys
    import time
    from collections import Counter

    from flownb.cursor import read_cursor
    from flownb.testing import HttpTarget

    src = tmp_path / "src.db"
    db = sqlite3.connect(src)
    db.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, amount INTEGER)")
    db.executemany("INSERT INTO orders VALUES (?, ?)", [(i, i * 10) for i in range(1, 21)])
    db.commit()
    state = tmp_path / "state"
    with HttpTarget() as target:
        flow = flownb.Flow(name="backfill-live", trigger=flownb.step(
            "src", "sql.poll", url=f"sqlite:///{src}", table="orders", cursor="id", batch_size=4, interval="0.2s"),
            steps=[flownb.step("to-crm", "mapping", fields={"id": "id", "amount": "amount"}),
                   flownb.step("push", "http.request", method="POST", url=target.url)])
        spec = str(flow.save(tmp_path / "flow.yaml"))

        def arrived() -> Counter:
            return Counter(r.json["id"] for r in list(target.received))

        def wait(cond, what: str) -> None:
            deadline = time.monotonic() + 60
            while not cond():
                assert proc.poll() is None, f"flownb run ended ({proc.returncode}) while waiting for {what}"
                assert time.monotonic() < deadline, f"no {what} within 60 s: {sorted(arrived().items())}"
                time.sleep(0.1)

        log = tmp_path / "run.log"
        with log.open("wb") as out:  # a file, not a pipe nobody reads while it runs
            proc = subprocess.Popen([str(Path(sys.executable).with_name("flownb")), "run", spec, "--state-dir",
                                     str(state)], stdout=out, stderr=subprocess.STDOUT)
        try:
            wait(lambda: arrived() == Counter(range(1, 21)), "the first 20 rows at the sink")
            # read beside the running flow (committed just after the sink got the last rows)
            wait(lambda: read_cursor(flow, state_dir=state)["cursor"] == 20, "the live cursor at 20")
            live = read_cursor(flow, state_dir=state)
            assert main(["backfill", spec, "--state-dir", str(state), "--from", "5", "--to", "12"]) == 0
            out = capsys.readouterr().out
            # sql.poll without a key reads 3 rows of a page of 4 (the last cursor value waits for its
            # ties): 6-8, 9-11, 12-14
            assert "9 message(s) queued in 3 poll(s)" in out and "cursor untouched" in out and '"cursor": 20' in out
            assert read_cursor(flow, state_dir=state) == live  # the backfill never wrote the cursor
            db.executemany("INSERT INTO orders VALUES (?, ?)", [(i, i * 10) for i in range(21, 26)])
            db.commit()
            want = Counter({**dict.fromkeys(range(1, 26), 1), **dict.fromkeys(range(6, 15), 2)})
            wait(lambda: arrived() == want, "the backfilled rows twice and the live rows 21-25 once")
            wait(lambda: read_cursor(flow, state_dir=state)["cursor"] == 25, "the live cursor at 25")
            assert proc.poll() is None  # still running
        finally:
            stop(proc)
        db.close()
        assert proc.returncode == 0, log.read_text()[-2000:]
        assert arrived() == want  # nothing more after the stop
        assert {r.json["amount"] for r in target.received if r.json["id"] == 7} == {70}
