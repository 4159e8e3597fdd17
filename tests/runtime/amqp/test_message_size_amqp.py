"""A broker with a real message size limit (a private node with max_message_size = 64 KiB): an output
over the flow's max_message_bytes is dead-lettered before it is published — the worker does not
lose its channel and redeliver for ever — and smaller outputs flow on."""

from __future__ import annotations

import pytest
from amqp_components import wait_for

import flownb
from flownb.message import Message
from flownb.runtime.amqp import names
from flownb.runtime.amqp.dlq import AmqpDeadLetters
from flownb.runtime.amqp.step_worker import PERSISTENT
from flownb.runtime.amqp.topology import connect, declare_flow, queue_depths

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq, pytest.mark.slow]

GROW = '''
def grow(body, ctx):
    return {**body, "pad": "y" * body["size"]}
'''


def test_an_output_over_max_message_bytes_is_dead_lettered_not_published(private_broker_with, running,
                                                                          caplog):
    node = private_broker_with(max_message_size=65536)
    url = node.new_vhost()
    f = flownb.Flow(name="sizes-amqp", max_message_bytes="48KiB",
                    trigger=flownb.step("hook", "webhook", token_env="UNUSED_TOKEN"),
                    steps=[flownb.step("grow", "python", source=GROW, function="grow"),
                           flownb.step("next", "mapping", fields={"id": "id"})])
    running(f, ["grow"], url)
    conn = connect(url)
    try:
        ch = conn.channel()
        declare_flow(ch, f)
        ch.confirm_delivery()
        for i, size in enumerate([100, 200_000, 40_000, 70_000, 10]):
            ch.basic_publish(names.exchange(f.name), "grow",
                             Message(body={"id": i, "size": size}, flow=f.name, step="hook").to_json(), PERSISTENT)
    finally:
        conn.close()
    store = AmqpDeadLetters(f.resolved(), url)
    dead = wait_for(lambda: (d := store.list()) and len(d) == 2 and d, timeout=60, what="2 dead letters")
    assert sorted(d.message.body["id"] for d in dead) == [1, 3]
    assert {d.error.type for d in dead} == {"MessageTooLarge"}
    assert all("over the flow's max_message_bytes (49,152 bytes)" in d.error.message for d in dead)
    wait_for(lambda: queue_depths(f.resolved(), url)["next"]["ready"] == 3, timeout=30, what="3 outputs queued")
    assert queue_depths(f.resolved(), url)["grow"] == {"ready": 0, "dead": 2, "retry": 0}
    assert "channel closed by the broker" not in caplog.text and "connection lost" not in caplog.text


BIG_POLL = '''
def poll(state, ctx):
    if state.get("done"):
        return []
    state["done"] = True
    return [{"id": i, "blob": "z" * (60_000 if i == 1 else 10)} for i in range(4)]
'''


def test_a_trigger_record_over_max_message_bytes_is_a_trigger_dead_letter_and_the_cursor_moves(broker):
    from flownb.runtime.amqp.trigger import TriggerWorker, read_state
    f = flownb.Flow(name="sizes-trigger", max_message_bytes="16KiB",
                    trigger=flownb.step("src", "python.poll", source=BIG_POLL, function="poll", interval="1h"),
                    steps=[flownb.step("next", "mapping", fields={"id": "id"})]).resolved()
    TriggerWorker(f, broker, max_polls=1, ignore_interval=True).run()
    assert read_state(f, broker) == {"done": True}  # the cursor moved past the oversized record
    assert queue_depths(f, broker)["next"]["ready"] == 3
    store = AmqpDeadLetters(f, broker)
    dead = store.list()
    assert [(d.step, d.error.type, d.message.body["id"]) for d in dead] == [("src", "MessageTooLarge", 1)]
    assert "a record of this trigger is" in dead[0].error.message
    assert dead[0].message.body["_truncated"] is True  # a stand-in: the record itself is at its source
    with pytest.raises(flownb.errors.FlownbError, match="cannot be replayed"):
        store.replay("src")
