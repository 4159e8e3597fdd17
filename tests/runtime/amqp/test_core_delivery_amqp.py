"""The delivery rules of the runtime core on RabbitMQ: a component that returns too few or too many
results dead-letters its batch (it used to truncate with zip and crash pika's I/O loop), and a body
that is not a message is dead-lettered as received — as on the embedded runtime."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent))
import delivery_components  # noqa: E402,F401  (registers deliverytest.*)
from amqp_components import wait_for  # noqa: E402

import flownb  # noqa: E402
from flownb.message import Message  # noqa: E402
from flownb.runtime.amqp import names  # noqa: E402
from flownb.runtime.amqp.dlq import AmqpDeadLetters  # noqa: E402
from flownb.runtime.amqp.step_worker import PERSISTENT  # noqa: E402
from flownb.runtime.amqp.topology import connect, declare_flow, queue_depths  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq]


def _flow(component: str) -> flownb.Flow:
    return flownb.Flow(name=f"delivery-{component.split('.')[-1]}", trigger=flownb.step("src", "webhook"),
                       steps=[flownb.step("bad", component),
                              flownb.step("shape", "mapping", fields={"id": "id"})])


def _publish(f, broker: str, bodies: list[bytes]) -> None:
    conn = connect(broker)
    try:
        ch = conn.channel()
        declare_flow(ch, f)
        ch.confirm_delivery()
        for b in bodies:
            ch.basic_publish(names.exchange(f.name), "bad", b, PERSISTENT)
    finally:
        conn.close()


@pytest.mark.parametrize("component", ["deliverytest.short", "deliverytest.long"])
def test_a_wrong_number_of_results_dead_letters_the_batch(broker, running, component):
    f = _flow(component)
    running(f, ["bad"], broker, prefetch=50)
    _publish(f, broker, [Message(body={"id": i}).to_json() for i in range(3)])
    store = AmqpDeadLetters(f.resolved(), broker)
    dead = wait_for(lambda: (d := store.list()) and len(d) == 3 and d, what="3 dead letters")
    assert sorted(d.message.body["id"] for d in dead) == [0, 1, 2]
    assert all(d.step == "bad" and "results for" in d.error.message and
               "return exactly one result" in d.error.message for d in dead)
    assert queue_depths(f.resolved(), broker)["shape"]["ready"] == 0


def test_a_body_that_is_not_a_message_is_dead_lettered_as_received(broker, running):
    f = flownb.Flow(name="delivery-raw", trigger=flownb.step("src", "webhook"),
                    steps=[flownb.step("bad", "mapping", fields={"id": "id"})])
    running(f, ["bad"], broker)
    _publish(f, broker, [b"not json", Message(body={"id": 1}).to_json()])
    store = AmqpDeadLetters(f.resolved(), broker)
    dead = wait_for(lambda: store.list(), what="the dead letter")
    assert len(dead) == 1 and dead[0].error.type == "MessageError"
    assert dead[0].message.body == {"_raw": "not json"}
