"""Cursor time-travel on RabbitMQ: ``flownb state show|set|rewind --broker`` on the trigger's state
queue (refused while a trigger worker holds the cursor) and ``flow.preview_poll(broker=…)``. The
embedded runtime: tests/runtime/test_cursor_local.py."""

from __future__ import annotations

import threading

import pytest
from amqp_components import wait_for

import flownb
from flownb.cli import main
from flownb.cursor import read_cursor, write_cursor
from flownb.errors import FlownbError
from flownb.message import Message
from flownb.runtime.amqp import names
from flownb.runtime.amqp.topology import connect, declare_flow, trigger_queues
from flownb.runtime.amqp.trigger import TriggerWorker, read_state
from tests.processes import stop

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq]


def _flow():
    return flownb.Flow(name="cursor-amqp", trigger=flownb.step("src", "amqptest.count", total=10, batch=4,
                                                               interval="1h"),
                       steps=[flownb.step("work", "amqptest.work")])


def _poll(flow, broker, n):
    conn = connect(broker)
    declare_flow(conn.channel(), flow)
    conn.close()
    TriggerWorker(flow, broker, max_polls=n, ignore_interval=True).run()


def _bodies(flow, broker):
    conn = connect(broker)
    try:
        ch, out = conn.channel(), []
        while True:
            method, _p, body = ch.basic_get(names.step_queue(flow.name, "work"), auto_ack=True)
            if method is None:
                return out
            out.append(Message.from_json(body).body["n"])
    finally:
        conn.close()


def test_state_show_rewind_set_on_the_broker(broker, tmp_path, capsys, monkeypatch):
    flow = _flow()
    spec = str(flow.save(tmp_path / "flow.yaml"))
    _poll(flow, broker, 2)
    assert _bodies(flow, broker) == list(range(8))
    monkeypatch.setenv("FLOWNB_BROKER_URL", broker)  # as for flownb dlq: the broker from the environment
    assert main(["state", "show", spec]) == 0
    assert capsys.readouterr().out.strip() == '{"next": 8}'
    monkeypatch.delenv("FLOWNB_BROKER_URL")
    assert main(["state", "rewind", spec, "--broker", broker, "--to", "2"]) == 0
    assert capsys.readouterr().out.splitlines() == ['old: {"next": 8}', 'new: {"next": 2}']
    assert read_state(flow, broker) == {"next": 2}
    _poll(flow, broker, 1)  # the trigger worker polls from the rewound cursor, at once
    assert _bodies(flow, broker) == [2, 3, 4, 5]
    assert write_cursor(flow, {"next": 9}, broker=broker) == ({"next": 6}, {"next": 9})
    _poll(flow, broker, 1)
    assert _bodies(flow, broker) == [9] and read_cursor(flow, broker=broker) == {"next": 10}
    df = flow.preview_poll(broker=broker)  # nothing left after 10
    assert df.empty and df.attrs["state"] == {"next": 10}
    assert list(flow.preview_poll({"next": 7})["n"]) == [7, 8, 9]
    assert read_state(flow, broker) == {"next": 10} and _bodies(flow, broker) == []  # nothing committed


def test_state_is_refused_while_the_trigger_worker_runs(broker, tmp_path, capsys):
    flow = _flow()
    spec = str(flow.save(tmp_path / "flow.yaml"))
    _poll(flow, broker, 1)
    worker = TriggerWorker(flow, broker)  # interval 1h: it holds the cursor and waits
    t = threading.Thread(target=worker.run, daemon=True)
    t.start()
    try:
        wait_for(worker.consuming.is_set, what="the trigger worker")
        wait_for(lambda: worker._held is not None, what="the cursor held")
        assert main(["state", "rewind", spec, "--broker", broker, "--to", "0"]) == 1
        err = capsys.readouterr().err
        assert "refusing to change the cursor while the flow runs" in err and "stop the trigger worker" in err
        with pytest.raises(FlownbError, match="refusing to read"):
            read_cursor(flow, broker=broker)
    finally:
        worker.stop()
        t.join(30)
    assert not t.is_alive()
    assert read_cursor(flow, broker=broker) == {"next": 4}  # unchanged


def test_backfill_on_the_broker_reads_a_range_again_and_leaves_the_cursor(broker, tmp_path, capsys):
    flow = flownb.Flow(name="backfill-amqp", trigger=flownb.step("src", "amqptest.count", total=30, batch=4,
                                                                 interval="1h"),
                       steps=[flownb.step("work", "amqptest.work")])
    spec = str(flow.save(tmp_path / "flow.yaml"))
    _poll(flow, broker, 5)
    assert _bodies(flow, broker) == list(range(20))
    assert main(["backfill", spec, "--broker", broker, "--from", "5", "--to", "12"]) == 0
    out = capsys.readouterr().out
    assert "8 message(s) queued in 2 poll(s)" in out and 'cursor untouched: {"next": 20}' in out
    assert _bodies(flow, broker) == list(range(5, 13)) and read_state(flow, broker) == {"next": 20}
    assert main(["backfill", spec, "--broker", broker, "--from", "15", "--to", "25"]) == 2
    assert "past the cursor" in capsys.readouterr().err
    worker = TriggerWorker(flow, broker)  # running, holding the cursor (interval 1h: no poll of its own)
    t = threading.Thread(target=worker.run, daemon=True)
    t.start()
    try:
        wait_for(lambda: worker._held is not None, what="the cursor held")
        # the held cursor cannot be read, and this trigger's poll may do more than read: --key is needed
        assert main(["backfill", spec, "--broker", broker, "--from", "1", "--to", "3"]) == 2
        assert "holds the cursor" in capsys.readouterr().err and _bodies(flow, broker) == []
        assert main(["backfill", spec, "--broker", broker, "--from", "1", "--to", "3", "--key", "next"]) == 0
        assert "4 message(s) queued in 1 poll(s)" in capsys.readouterr().out
        assert worker._held is not None and worker._held[1] == {"next": 20}  # still held, unchanged
    finally:
        worker.stop()
        t.join(30)
    assert not t.is_alive()
    assert _bodies(flow, broker) == [1, 2, 3, 4] and read_state(flow, broker) == {"next": 20}


def test_backfill_whose_poll_fails_stops_and_leaves_the_cursor(broker):
    from flownb import polling_trigger
    from flownb.cursor import backfill

    @polling_trigger("amqptest.breaks-at-8")
    def breaks(state, ctx):
        n = int(state.get("next", 0))
        if n >= 8 and ctx.params.get("broken"):
            raise ConnectionError("source went away")
        state["next"] = n + 4
        return [{"n": i} for i in range(n, n + 4)]

    flow = flownb.Flow(name="backfill-fails", parameters={"broken": False},
                       trigger=flownb.step("src", "amqptest.breaks-at-8", interval="1h"),
                       steps=[flownb.step("work", "amqptest.work")])
    _poll(flow, broker, 5)
    assert read_state(flow, broker) == {"next": 20}
    _bodies(flow, broker)
    with pytest.raises(FlownbError, match="backfill poll failed .ConnectionError: source went away.*cursor was "
                                          "not touched, 8 message"):
        backfill(flow.with_parameters(broken=True), 0, 16, broker=broker, poll_timeout=2)
    assert read_state(flow, broker) == {"next": 20} and _bodies(flow, broker) == list(range(8))


def test_backfill_while_the_workers_run_reaches_the_sink_and_leaves_the_live_cursor(broker, tmp_path, capsys):
    """Real worker processes (the trigger polling a SQLite table, a step posting to an HTTP sink); a
    backfill from this process while they run: the range arrives a second time, live rows keep
    arriving, and the saved cursor is the trigger worker's alone (never taken nor replaced)."""
    import sqlite3
    import subprocess
    import sys
    import time
    from collections import Counter
    from pathlib import Path

    from flownb.testing import HttpTarget

    flownb_cli = str(Path(sys.executable).parent / "flownb")
    src = tmp_path / "src.db"
    db = sqlite3.connect(src)
    db.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, amount INTEGER)")
    db.executemany("INSERT INTO orders VALUES (?, ?)", [(i, i * 10) for i in range(1, 21)])
    db.commit()
    procs: list[subprocess.Popen] = []
    with HttpTarget() as target:
        flow = flownb.Flow(name="backfill-live", trigger=flownb.step(
            "src", "sql.poll", url=f"sqlite:///{src}", table="orders", cursor="id", batch_size=4, interval="0.2s"),
            steps=[flownb.step("push", "http.request", method="POST", url=target.url)])
        spec = str(flow.save(tmp_path / "flow.yaml"))

        def arrived() -> Counter:
            return Counter(r.json["id"] for r in list(target.received))

        def wait(cond, what: str) -> None:
            deadline = time.monotonic() + 90
            while not cond():
                for p in procs:
                    assert p.poll() is None, f"a worker ended ({p.returncode}) while waiting for {what}"
                assert time.monotonic() < deadline, f"no {what} within 90 s: {sorted(arrived().items())}"
                time.sleep(0.1)

        def polled() -> int:  # the cursor's position in the trigger worker's commits (read_state: when not held)
            got = read_state(flow, broker)
            return -1 if got is None else got["cursor"]

        log = (tmp_path / "workers.log").open("ab")
        try:
            for step in ("src", "push"):
                procs.append(subprocess.Popen([flownb_cli, "worker", spec, "--step", step, "--broker", broker],
                                              stdout=log, stderr=subprocess.STDOUT))
            wait(lambda: arrived() == Counter(range(1, 21)), "the first 20 rows at the sink")
            assert main(["backfill", spec, "--broker", broker, "--from", "5", "--to", "12"]) == 0
            out = capsys.readouterr().out
            # sql.poll without a key reads 3 rows of a page of 4 (the last cursor value waits for its ties)
            assert "9 message(s) queued in 3 poll(s)" in out and "cursor untouched" in out
            db.executemany("INSERT INTO orders VALUES (?, ?)", [(i, i * 10) for i in range(21, 26)])
            db.commit()
            want = Counter({**dict.fromkeys(range(1, 26), 1), **dict.fromkeys(range(6, 15), 2)})
            wait(lambda: arrived() == want, "the backfilled rows twice and the live rows 21-25 once")
            time.sleep(1.0)  # a few more polls of the live trigger: nothing is read again
            assert arrived() == want
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                stop(p)
            log.close()
        db.close()
    # one cursor, the trigger worker's: where it read up to, with the version of its own commits only
    conn = connect(broker)
    try:
        ch = conn.channel()
        cursor_q = trigger_queues(flow)[0]
        assert ch.queue_declare(cursor_q, passive=True).method.message_count == 1
    finally:
        conn.close()
    assert polled() == 25 and read_cursor(flow, broker=broker)["cursor"] == 25
