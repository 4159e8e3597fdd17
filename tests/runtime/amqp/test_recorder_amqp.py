"""The flight recorder on RabbitMQ (docs/debugging.md "Trace a record"): step workers publish their
sampled events to the tap exchange; the tap queue is durable (events wait while no recorder runs) and
bounded (a missing recorder cannot fill the broker, and never slows a step); ``flownb recorder``, in
a subprocess, drains it into a SQLite file that ``flownb.trace(db=…)`` reads — the same rows as the
embedded runtime (tests/runtime/test_recorder_local.py), the same traces sampled on both."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from amqp_components import sink_counts, wait_for
from workbench_kit import make, records

import flownb
from flownb.cli import main
from flownb.flow import RecordPolicy
from flownb.message import Message
from flownb.recorder import REDACTED, sampled
from flownb.runtime.amqp import names
from flownb.runtime.amqp.publish import PERSISTENT
from flownb.runtime.amqp.topology import connect, declare_flow, queue_depths
from flownb.runtime.local import LocalRuntime

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq]

ROOT = Path(__file__).resolve().parents[3]


def recorded(flow: flownb.Flow, **policy) -> flownb.Flow:
    return flow.model_copy(update={"record": RecordPolicy(**{"sample": 1.0, **policy})})


def _publish(flow, broker, messages):
    conn = connect(broker)
    try:
        ch = conn.channel()
        declare_flow(ch, flow)
        ch.confirm_delivery()
        for m in messages:
            ch.basic_publish(names.exchange(flow.name), flow.steps[0].name, m.to_json(), PERSISTENT)
    finally:
        conn.close()


def _messages(flow, bodies):
    return [Message(body=b, flow=flow.name, step=flow.trigger.name) for b in bodies]


def _recorder(spec, broker, db, *extra, wait=True, **kw):
    """``flownb recorder`` in its own interpreter (the test components registered first)."""
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT / 'tests' / 'runtime')!r})
        import runtimes
        from flownb.cli import main
        sys.exit(main(sys.argv[1:]))
    """)
    argv = [sys.executable, "-c", script, "recorder", str(spec), "--broker", broker, "--db", str(db), *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if not wait:
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env, **kw)


def _queue_info(broker):
    vhost = broker.rsplit("/", 1)[1]
    out = subprocess.run(["rabbitmqctl", "-q", "list_queues", "-p", vhost, "name", "durable", "arguments",
                          "messages", "--formatter", "json"], check=True, capture_output=True, text=True,
                         timeout=60).stdout
    queues = {q["name"]: q for q in json.loads(out)}
    for q in queues.values():  # [[key, type, value], …] in rabbitmqctl's JSON
        q["arguments"] = {a[0]: a[-1] for a in q["arguments"]} if isinstance(q["arguments"], list) \
            else q["arguments"]
    return queues


def _run(flow, broker, running, sink, messages, dead):
    r = running(flow, ["price", "sink"], broker)
    _publish(flow, broker, messages)
    wait_for(lambda: sink_counts(sink)[0] == len(messages) - dead, what="the good records at the sink")
    wait_for(lambda: queue_depths(flow, broker)["price"]["dead"] == dead, what="the dead letters")
    r.stop()  # drained: every processed batch's events were published with its outcomes


def test_the_recorder_drains_the_tap_into_the_table_and_a_dead_letter_leads_to_its_path(broker, running,
                                                                                       tmp_path, capsys):
    flow = recorded(make(tmp_path / "sink.db"), redact=["customer.email"])
    msgs = _messages(flow, records(12))
    _run(flow, broker, running, tmp_path / "sink.db", msgs, dead=4)
    # no recorder ran yet: the events wait in the durable, bounded tap queue
    tap = _queue_info(broker)[names.recorder_queue(flow.name)]
    assert tap["durable"] and tap["messages"] > 0
    assert tap["arguments"] == {"x-max-length": 100_000, "x-max-length-bytes": 256 * 1024 * 1024,
                                "x-overflow": "drop-head"}
    spec = flow.save(tmp_path / "flow.yaml")
    db = tmp_path / "recorder.db"
    r = _recorder(spec, broker, db, "--until-idle")
    assert r.returncode == 0, r.stderr
    assert f"{12 * 2 - 4} row(s) of" in r.stdout
    assert _queue_info(broker)[names.recorder_queue(flow.name)]["messages"] == 0
    dead = flownb.dead_letters(flow, broker=broker)
    for _, letter in dead.iterrows():
        path = flownb.trace(letter["_trace"], db=db)
        assert list(path["step"]) == ["price"] and list(path["outcome"]) == ["dead"]
        assert path["error"][0] == letter["_error"] and path["input"][0]["n"] == letter["n"]
        assert path["input"][0]["customer"]["email"] == REDACTED
    good = flownb.trace(msgs[1].trace, flow, db=db)
    assert list(good["step"]) == ["price", "sink"] and list(good["outcome"]) == ["delivered", "filtered"]
    assert good["output"][0] == [{"n": 1, "total": 20, "customer": {"email": REDACTED, "tier": None},
                                  "note": "row 1"}]
    con = sqlite3.connect(db)
    assert not any("@example.com" in i + o for i, o in con.execute("SELECT input, output FROM recorder"))
    con.close()
    # drained again (nothing new): the same rows, none twice
    assert _recorder(spec, broker, db, "--until-idle").returncode == 0
    assert len(flownb.trace(msgs[1].trace, flow, db=db)) == 2
    # flownb trace --db prints the same path
    assert main(["trace", str(spec), msgs[1].trace, "--db", str(db)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split("\t")[:2] + ln.split("\t")[4:5] for ln in lines[1:]] == [["price", "0", "delivered"],
                                                                             ["sink", "1", "filtered"]]


def test_the_same_traces_are_sampled_at_every_step_on_both_runtimes(broker, running, tmp_path):
    flow = recorded(make(tmp_path / "sink.db"), sample=0.3)
    msgs = _messages(flow, [{**b, "amount": "1"} for b in records(120)])
    _run(flow, broker, running, tmp_path / "sink.db", msgs, dead=0)
    db = tmp_path / "recorder.db"
    assert _recorder(flow.save(tmp_path / "flow.yaml"), broker, db, "--until-idle").returncode == 0
    local = make(tmp_path / "local-sink.db", name=flow.name).model_copy(update={"record": flow.record})
    with LocalRuntime(local, tmp_path / "state") as rt:  # the same messages (same trace ids), embedded
        rt.inject("price", [Message.from_json(m.to_json()) for m in msgs])
        rt.drain()

    def paths(path):
        con = sqlite3.connect(path)
        try:
            out: dict[str, list[str]] = {}
            for trace, step in con.execute("SELECT trace, step FROM recorder ORDER BY trace, pos, at, id"):
                out.setdefault(trace, []).append(step)
            return out
        finally:
            con.close()
    expected = {m.trace for m in msgs if sampled(m.trace, 0.3)}
    on_broker, embedded = paths(db), paths(tmp_path / "state" / f"{flow.name}.db")
    assert set(on_broker) == set(embedded) == expected and 15 < len(expected) < 60
    assert all(s == ["price", "sink"] for s in [*on_broker.values(), *embedded.values()])


def test_a_missing_recorder_cannot_fill_the_broker_nor_slow_the_steps(broker, running, tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWNB_RECORDER_MAX_LENGTH", "5")
    flow = recorded(make(tmp_path / "sink.db"))
    msgs = _messages(flow, [{**b, "amount": "1"} for b in records(300)])
    r = running(flow, ["price", "sink"], broker, prefetch=10)  # many small batches: many events
    _publish(flow, broker, msgs)
    wait_for(lambda: sink_counts(tmp_path / "sink.db")[0] == 300, what="every record at the sink")
    r.stop()
    assert sum(w.tap.published for w in r.workers) > 5 and not any(w.tap.dropped for w in r.workers)
    tap = _queue_info(broker)[names.recorder_queue(flow.name)]
    assert tap["messages"] == 5 and tap["arguments"]["x-overflow"] == "drop-head"
    # the 5 events left (the newest: drop-head) drain as usual, at most a batch of rows each
    db = tmp_path / "recorder.db"
    assert _recorder(flow.save(tmp_path / "flow.yaml"), broker, db, "--until-idle").returncode == 0
    con = sqlite3.connect(db)
    kept = con.execute("SELECT count(*), count(DISTINCT trace) FROM recorder").fetchone()
    con.close()
    assert 0 < kept[0] <= 5 * 10 and kept[1] < 300


def test_the_recorder_stops_on_sigterm_after_writing_what_it_holds(broker, running, tmp_path):
    flow = recorded(make(tmp_path / "sink.db"))
    spec = flow.save(tmp_path / "flow.yaml")
    db = tmp_path / "recorder.db"
    proc = _recorder(spec, broker, db, wait=False)
    try:
        msgs = _messages(flow, records(6))
        _run(flow, broker, running, tmp_path / "sink.db", msgs, dead=2)

        def rows():
            if not db.exists():
                return 0
            con = sqlite3.connect(db)
            try:
                return con.execute("SELECT count(*) FROM recorder").fetchone()[0]
            except sqlite3.OperationalError:
                return 0
            finally:
                con.close()
        wait_for(lambda: rows() == 6 * 2 - 2, what="the recorder to write every event while running")
    finally:
        time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "10 row(s) of" in out


def test_the_recorder_refuses_a_flow_without_record_and_a_broker_it_cannot_reach(tmp_path):
    plain = make(tmp_path / "sink.db")
    r = _recorder(plain.save(tmp_path / "plain.yaml"), "amqp://guest:guest@127.0.0.1:5672/", tmp_path / "r.db",
                  "--until-idle")
    assert r.returncode == 2 and "no 'record:' section" in r.stderr
    flow = recorded(make(tmp_path / "sink.db"))
    r = _recorder(flow.save(tmp_path / "flow.yaml"), "amqp://guest:guest@127.0.0.1:1/", tmp_path / "r.db",
                  "--until-idle")
    assert r.returncode == 1 and "flownb: error:" in r.stderr


def test_the_recorder_prunes_rows_older_than_keep(broker, tmp_path):
    from flownb.recorder import RecordBatch, insert, open_db
    flow = recorded(make(tmp_path / "sink.db"), keep="1d")
    db = tmp_path / "recorder.db"
    con = open_db(db)
    now = time.time()
    row = ("t" * 32, "price", 1, "m" * 32, 1, "{}", "[]", "filtered", None, None)
    insert(con, RecordBatch([(*row, now - 2 * 86400), (*row[:3], "n" * 32, *row[4:], now - 3600)]))
    con.close()
    r = _recorder(flow.save(tmp_path / "flow.yaml"), broker, db, "--until-idle")
    assert r.returncode == 0, r.stderr
    assert "1 row(s) older than keep pruned" in r.stdout
    con = sqlite3.connect(db)
    assert [m for (m,) in con.execute("SELECT message FROM recorder")] == ["n" * 32]
    con.close()
