"""docs/rabbitmq.md, polling triggers: only the active consumer of the state queue polls; a standby
replica takes over when it dies, from the same cursor (nothing lost, nothing emitted twice); a poll
larger than the first queue's limit is never committed — it is repeated from the same cursor and the
log says what to do."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
from amqp_components import sink_counts, wait_for

import flownb
from flownb.runtime.amqp.topology import queue_depths
from flownb.runtime.amqp.trigger import TriggerWorker, read_state

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq]

RUN_WORKER = Path(__file__).parent / "run_worker.py"


def _trigger_process(spec: Path, broker: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(RUN_WORKER), "worker", str(spec), "--step", "src"],
                            env={**os.environ, "FLOWNB_BROKER_URL": broker},
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)


def _wait_up(proc: subprocess.Popen, log: Path, what: str) -> None:
    """Until the replica says it waits to be the active poller; a replica that died or stays silent
    fails with its exit code and its log (what it was doing instead)."""
    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"{what}: the process exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        return "waiting to be the active poller" in log.read_text()
    try:
        wait_for(up, 60, what=what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- its log ---\n{log.read_text()[-3000:]}") from None


@pytest.mark.slow
def test_a_standby_trigger_replica_takes_over_from_the_same_cursor(broker, running, tmp_path):
    db, gate = tmp_path / "sink.db", tmp_path / "gate"
    # numbers 20-39 wait for the gate, opened once the active replica is killed: however slowly the
    # standby starts on a loaded machine, the rest is left for it to emit
    flow = flownb.Flow(name=f"standby-{uuid.uuid4().hex[:8]}",
                       trigger=flownb.step("src", "amqptest.count", total=40, batch=1, interval="100ms",
                                           gate=str(gate), hold_from=20),
                       steps=[flownb.step("sink", "amqptest.sink", path=str(db))])
    spec = flow.save(tmp_path / "flow.yaml")
    sink = running(flow, ["sink"], broker)
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = [_trigger_process(spec, broker, logs[0])]
    try:
        _wait_up(procs[0], logs[0], "replica a up")
        procs.append(_trigger_process(spec, broker, logs[1]))  # b starts second: it is the standby
        _wait_up(procs[1], logs[1], "replica b up")
        wait_for(lambda: sink_counts(db)[0] >= 10, 60, what="10 messages from the active replica")
        assert "emitted" in logs[0].read_text() and "emitted" not in logs[1].read_text()  # b only waits
        procs[0].send_signal(signal.SIGKILL)  # the active poller dies: its unacked cursor is requeued
        procs[0].wait(30)
        gate.touch()
        wait_for(lambda: sink_counts(db)[0] == 40, 120, what="the standby to emit the rest")
        assert "emitted" in logs[1].read_text()
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(60)
        sink.stop()
    # at rest (every worker stopped, every queue empty): each number once, delivered once
    assert queue_depths(flow.resolved(), broker)["sink"] == {"ready": 0, "dead": 0, "retry": 0}
    assert sink_counts(db) == (40, 40)
    assert read_state(flow.resolved(), broker) == {"next": 40}  # released by the stopped poller


def test_a_poll_larger_than_the_queue_limit_is_never_committed(broker, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("FLOWNB_MAX_QUEUE_LENGTH", "5")
    flow = flownb.Flow(name=f"bigpoll-{uuid.uuid4().hex[:8]}",
                       trigger=flownb.step("src", "amqptest.count", total=20, batch=8, interval="50ms"),
                       steps=[flownb.step("sink", "amqptest.sink", path=str(tmp_path / "sink.db"))],
                       ).resolved()
    worker = TriggerWorker(flow, broker)
    t = threading.Thread(target=worker.run, daemon=True)
    with caplog.at_level(logging.ERROR, logger="flownb"):
        t.start()
        try:
            wait_for(lambda: sum("more than the queue limit" in r.getMessage() for r in caplog.records) >= 3,
                     60, what="the oversized poll to be tried three times")
        finally:
            worker.stop()
            t.join(60)
    [message] = {r.getMessage() for r in caplog.records if "more than the queue limit" in r.getMessage()}
    assert message == ("trigger 'src': one poll emitted 8 messages, more than the queue limit 5; emit "
                       "smaller batches or raise FLOWNB_MAX_QUEUE_LENGTH")  # the same poll each time
    assert queue_depths(flow, broker)["sink"]["ready"] == 0  # nothing of it was published
    assert read_state(flow, broker) == {}  # the cursor did not move: the poll is repeated from it


def test_a_quorum_trigger_moves_the_cursor_of_an_older_classic_state_queue(broker, tmp_path, monkeypatch, caplog):
    """A quorum deployment of an older flownb kept the cursor in the classic ``.state`` queue (and the
    trigger's dead letters in a classic ``.dlq``). A trigger worker of this version waits while an
    older worker still consumes ``.state``, then moves the cursor into ``.cursor`` in one transaction,
    deletes ``.state`` and polls on from that cursor; the classic dead-letter queue is kept, with a
    warning. docs/rabbitmq.md."""
    import orjson
    import pika

    from flownb.runtime.amqp import names
    from flownb.runtime.amqp.publish import state_props
    from flownb.runtime.amqp.topology import connect
    monkeypatch.setenv("FLOWNB_QUEUE_TYPE", "quorum")
    flow = flownb.Flow(name=f"moved-{uuid.uuid4().hex[:8]}",
                       trigger=flownb.step("src", "amqptest.count", total=12, batch=4, interval="50ms"),
                       steps=[flownb.step("sink", "amqptest.sink", path=str(tmp_path / "sink.db"))]).resolved()
    old_q, dlq = names.state_queue(flow.name, "src"), names.dead_letter_queue(flow.name, "src")
    conn = connect(broker)
    ch = conn.channel()
    ch.queue_declare(old_q, durable=True, arguments={"x-single-active-consumer": True})  # as the older flownb did
    ch.queue_declare(dlq, durable=True)
    ch.confirm_delivery()
    ch.basic_publish("", old_q, orjson.dumps({"next": 4}), state_props(0.0, 3))
    older = connect(broker)  # an older trigger worker, still running: it holds the cursor
    older.channel().basic_consume(old_q, lambda *a: None, auto_ack=False)

    worker = TriggerWorker(flow, broker, max_polls=2, ignore_interval=True)
    t = threading.Thread(target=worker.run, daemon=True)
    with caplog.at_level(logging.INFO, logger="flownb"):
        t.start()
        try:
            wait_for(lambda: any("still polls from the classic queue" in r.getMessage() for r in caplog.records),
                     60, what="the new worker to wait for the older one")
            older.process_data_events(time_limit=1.0)
            assert worker.polls == 0 and queue_depths(flow, broker)["sink"]["ready"] == 0  # it did not poll beside it
            older.close()  # the older worker stops: its unacked cursor returns to '.state'
            t.join(60)
            assert not t.is_alive()
        finally:
            worker.stop()
            t.join(10)
    messages = [r.getMessage() for r in caplog.records]
    assert any(f"moved the cursor from the classic queue '{old_q}'" in m for m in messages), messages
    assert any(f"queue '{dlq}' is a classic queue" in m for m in messages), messages
    assert queue_depths(flow, broker)["sink"]["ready"] == 8  # n = 4 … 11: on from the moved cursor
    assert read_state(flow, broker) == {"next": 12}
    with pytest.raises(pika.exceptions.ChannelClosedByBroker):  # moved, then deleted
        conn.channel().queue_declare(old_q, passive=True)
    conn.close()
