"""A consumer the broker cancels (its queue deleted, the node holding it gone) must not leave a step
worker or a trigger silently idle: each reconnects, declares its queues again and goes on."""

from __future__ import annotations

import logging

import pytest
from amqp_components import publish_to_step, sink_counts, wait_for

import flownb
from flownb.runtime.amqp import names
from flownb.runtime.amqp.topology import connect

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq]


def test_a_step_worker_whose_consumer_the_broker_cancels_reconnects_and_goes_on(broker, running, tmp_path,
                                                                               caplog):
    db = tmp_path / "sink.db"
    flow = flownb.Flow(name="cancelled", trigger=flownb.step("src", "amqptest.count", total=0),
                       steps=[flownb.step("sink", "amqptest.sink", path=str(db))])
    r = running(flow, ["sink"], broker)
    publish_to_step(broker, flow, "sink", range(10))
    wait_for(lambda: sink_counts(db)[0] == 10, what="the first 10 at the sink")
    with caplog.at_level(logging.WARNING, logger="flownb.runtime.amqp.step_worker"):
        conn = connect(broker)
        try:  # the broker cancels the worker's consumer of the deleted queue (basic.cancel)
            conn.channel().queue_delete(names.step_queue(flow.name, "sink"))
        finally:
            conn.close()
        wait_for(lambda: "the broker cancelled consumer" in caplog.text, what="the cancel noticed")
        worker = r.workers[0]
        wait_for(lambda: worker.consuming.is_set() and _queue_exists(broker, flow), timeout=30,
                 what="the worker consuming its re-declared queue")
    publish_to_step(broker, flow, "sink", range(10, 20))
    wait_for(lambda: sink_counts(db)[0] == 20, timeout=30, what="the next 10 at the sink after the cancel")


def _queue_exists(broker: str, flow: flownb.Flow) -> bool:
    conn = connect(broker)
    try:
        return conn.channel().queue_declare(names.step_queue(flow.name, "sink"), passive=True).method.consumer_count > 0
    except Exception:
        return False
    finally:
        if conn.is_open:
            conn.close()


def test_a_trigger_whose_consumer_the_broker_cancels_reconnects(broker, tmp_path, caplog):
    import threading

    from flownb.runtime.amqp.trigger import TriggerWorker
    flow = flownb.Flow(name="cancelled-trigger", trigger=flownb.step("src", "amqptest.count", total=0,
                                                                     interval="100ms"),
                       steps=[flownb.step("sink", "amqptest.sink", path=str(tmp_path / "sink.db"))])
    worker = TriggerWorker(flow.resolved(), broker)
    t = threading.Thread(target=worker.run, daemon=True)
    with caplog.at_level(logging.WARNING, logger="flownb.runtime.amqp.trigger"):
        t.start()
        try:
            assert worker.consuming.wait(15)
            state_q = names.state_queue(flow.name, "src")
            conn = connect(broker)
            try:  # the broker cancels the trigger's consumer of the deleted queue (basic.cancel)
                conn.channel().queue_delete(state_q)
            finally:
                conn.close()
            wait_for(lambda: "the broker cancelled trigger 'src''s consumer" in caplog.text, timeout=30,
                     what="the cancel noticed")
            wait_for(lambda: _consumers(broker, state_q) == 1, timeout=30, what="consuming its queue again")
        finally:
            worker.stop()
            t.join(30)
    assert not t.is_alive()


def _consumers(broker: str, queue: str) -> int:
    conn = connect(broker)
    try:
        return conn.channel().queue_declare(queue, passive=True).method.consumer_count
    except Exception:
        return 0
    finally:
        if conn.is_open:
            conn.close()
