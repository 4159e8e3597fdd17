"""flownb upgrade on RabbitMQ: a renamed step's queued messages and dead letters move to the new
step's queues (published with confirms, acked after), and the old queues are removed."""

from __future__ import annotations

import pika
import pytest

import flownb
from flownb.message import Message
from flownb.runtime.amqp import names
from flownb.runtime.amqp.topology import connect, declare_flow, queue_depths
from flownb.runtime.upgrade import amqp_depths, make_plan, upgrade

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq, pytest.mark.timeout(300)]
N = 2500


def _flow(middle: str) -> flownb.Flow:
    return flownb.Flow(name="upg", trigger=flownb.step("hook", "webhook", token_env="UPG_TOKEN"),
                       steps=[flownb.step(middle, "mapping", fields={"id": "id"}), flownb.step("out", "log")])


def test_upgrade_moves_a_renamed_steps_messages_and_dead_letters(broker):
    old, new = _flow("slow"), _flow("enrich")
    conn = connect(broker)
    ch = conn.channel()
    declare_flow(ch, old.resolved())
    ch.confirm_delivery()
    for i in range(N):
        ch.basic_publish(names.exchange("upg"), "slow", Message(body={"id": i}, flow="upg", step="hook").to_json(),
                         pika.BasicProperties(delivery_mode=2))
    ch.basic_publish("", names.dead_letter_queue("upg", "slow"), b'{"id": -1}', pika.BasicProperties(delivery_mode=2))
    conn.close()

    plan = make_plan(old, new, depths=amqp_depths(old, broker))
    assert plan.guessed == {"slow": "enrich"} and plan.orphaned == {"slow": N + 1}

    plan, moved = upgrade(old, new, {"slow": "enrich"}, broker=broker)
    assert moved == {"slow": N + 1}
    assert queue_depths(new.resolved(), broker)["enrich"] == {"ready": N, "dead": 1, "retry": 0}
    conn = connect(broker)
    try:
        for q in (names.step_queue("upg", "slow"), names.dead_letter_queue("upg", "slow")):
            with pytest.raises(pika.exceptions.ChannelClosedByBroker):  # gone
                conn.channel().queue_declare(q, passive=True)
        ch = conn.channel()
        bodies = []
        while (got := ch.basic_get(names.step_queue("upg", "enrich"), auto_ack=True))[0] is not None:
            bodies.append(Message.from_json(got[2]).body["id"])
        assert bodies == list(range(N))  # every one, once, in order
    finally:
        conn.close()
