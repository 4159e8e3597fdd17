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


@pytest.mark.slow
def test_a_standby_trigger_replica_takes_over_from_the_same_cursor(broker, running, tmp_path):
    db = tmp_path / "sink.db"
    flow = flownb.Flow(name=f"standby-{uuid.uuid4().hex[:8]}",
                       trigger=flownb.step("src", "amqptest.count", total=40, batch=1, interval="100ms"),
                       steps=[flownb.step("sink", "amqptest.sink", path=str(db))])
    spec = flow.save(tmp_path / "flow.yaml")
    sink = running(flow, ["sink"], broker)
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = [_trigger_process(spec, broker, logs[0])]
    try:
        wait_for(lambda: "waiting to be the active poller" in logs[0].read_text(), 60, what="replica a up")
        procs.append(_trigger_process(spec, broker, logs[1]))  # b starts second: it is the standby
        wait_for(lambda: "waiting to be the active poller" in logs[1].read_text(), 60, what="replica b up")
        wait_for(lambda: sink_counts(db)[0] >= 10, 60, what="10 messages from the active replica")
        assert "emitted" in logs[0].read_text() and "emitted" not in logs[1].read_text()  # b only waits
        procs[0].send_signal(signal.SIGKILL)  # the active poller dies: its unacked cursor is requeued
        procs[0].wait(30)
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
