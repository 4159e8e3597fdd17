"""End-to-end behaviour of the RabbitMQ runtime on a real broker (a throw-away vhost per test)."""

from __future__ import annotations

import pytest
from amqp_components import sink_counts, wait_for

import flownb
from flownb.runtime.amqp import names
from flownb.runtime.amqp.topology import connect, queue_depths
from flownb.runtime.amqp.trigger import read_state

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq]


def make_flow(name, db, total=500, batch=200, **work):
    return flownb.Flow(name=name, trigger=flownb.step("src", "amqptest.count", total=total, batch=batch,
                                                       interval="100ms"),
                       steps=[flownb.step("work", "amqptest.work", **work,
                                          retry={"max_attempts": 3, "initial": "200ms"}),
                              flownb.step("sink", "amqptest.sink", path=str(db))])


def test_messages_flow_through_every_step_and_the_cursor_is_kept(broker, running, tmp_path):
    db = tmp_path / "sink.db"
    flow = make_flow("e2e", db)
    r = running(flow, ["src", "work", "sink"], broker)
    wait_for(lambda: sink_counts(db)[0] == 500, what="500 messages at the sink")
    r.stop()
    seen, total = sink_counts(db)
    assert (seen, total) == (500, 500)
    assert read_state(flow, broker) == {"next": 500}
    depths = queue_depths(flow, broker)
    assert depths == {"work": {"ready": 0, "dead": 0, "retry": 0},
                      "sink": {"ready": 0, "dead": 0, "retry": 0}}


def test_restarted_trigger_continues_from_the_stored_cursor(broker, running, tmp_path):
    db = tmp_path / "sink.db"
    flow = make_flow("cursor", db, total=300, batch=100)
    r = running(flow, ["src", "work", "sink"], broker)
    wait_for(lambda: sink_counts(db)[0] == 300, what="first 300")
    r.stop()
    bigger = make_flow("cursor", db, total=450, batch=100)
    r = running(bigger, ["src", "work", "sink"], broker)
    wait_for(lambda: sink_counts(db)[0] == 450, what="150 more")
    r.stop()
    assert sink_counts(db) == (450, 450)  # nothing polled twice
    assert read_state(flow, broker) == {"next": 450}


def test_only_one_trigger_replica_polls(broker, running, tmp_path):
    db = tmp_path / "sink.db"
    flow = make_flow("sac", db, total=2000, batch=50)
    r = running(flow, ["src", "src", "src", "work", "sink"], broker)
    wait_for(lambda: sink_counts(db)[0] == 2000, what="2000 messages")
    r.stop()
    assert sink_counts(db) == (2000, 2000)


def test_last_step_answers_the_reply_to_queue(broker, running, tmp_path):
    flow = flownb.Flow(name="reply", trigger=flownb.step("src", "amqptest.count", total=0),
                       steps=[flownb.step("work", "amqptest.work")])
    running(flow, ["work"], broker)
    conn = connect(broker)
    ch = conn.channel()
    reply = ch.queue_declare("", exclusive=True).method.queue
    msg = flownb.Message(body={"n": 21}, headers={names.REPLY_TO_HEADER: reply}, flow="reply", step="src")
    ch.basic_publish(names.exchange("reply"), "work", msg.to_json())
    got = wait_for(lambda: ch.basic_get(reply, auto_ack=True)[2], timeout=15, what="reply")
    assert flownb.Message.from_json(got).body == {"n": 21, "w": 42}
    conn.close()


def test_a_csv_larger_than_a_batch_is_polled_batch_by_batch_with_the_offset_in_the_cursor(
        broker, running, tmp_path):
    """csv.poll on RabbitMQ: each batch and the pass's byte offset are one AMQP transaction, the next
    batch is polled at once (not after the 1 h interval), and every row arrives once."""
    import csv
    import os
    import time
    src = tmp_path / "rows.csv"
    with open(src, "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["n", "v"])  # the test sink keys rows by "n"
        w.writerows([i, f"v{i}"] for i in range(1, 2_501))
    t = time.time() - 60
    os.utime(src, (t, t))
    db = tmp_path / "sink.db"
    flow = flownb.Flow(name="csvbatches", trigger=flownb.step("src", "csv.poll", path=str(src), cursor="n",
                                                              key="n", batch_size=1000, interval="1h"),
                       steps=[flownb.step("sink", "amqptest.sink", path=str(db))])
    r = running(flow, ["src", "sink"], broker)
    wait_for(lambda: sink_counts(db)[0] == 2_500, what="2,500 rows at the sink")
    r.stop()
    assert sink_counts(db) == (2_500, 2_500)
    state = read_state(flow, broker)
    assert state["cursor"] == 2_500 and "pass" not in state
