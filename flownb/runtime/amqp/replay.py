"""Replay of (edited) dead letters on RabbitMQ (``flownb.replay``, ``flownb dlq replay --edit``).

Each step's dead-letter queue is read without acknowledging (``basic.get``); once every wanted id
is found, each chosen dead letter is published to its step (persistent, mandatory, on a channel in
confirm mode, so ``basic_publish`` returns only once the broker has the message durably) and only
then acknowledged out of the dead-letter queue. A crash (kill -9) between the two leaves the dead
letter in its queue (unacknowledged messages return) *and* the replayed message in the step's
queue: a duplicate, never a loss (tests/runtime/amqp/test_workbench_amqp.py kills a replay there).
The dead letters not chosen return to their queue when the connection closes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pika.exceptions

from ...errors import BrokerError, SpecError
from ...flow import Flow
from ...message import Message
from . import names
from .dlq import AmqpDeadLetters
from .publish import PERSISTENT
from .topology import connect, declare_flow

__all__ = ["replay_edited"]

Rebuild = Callable[[str, str, Message], tuple[bytes, bool]]


def replay_edited(flow: Flow, broker_url: str, wanted: Mapping[str, Any], rebuild: Rebuild, *,
                  step: str | None = None) -> list[dict]:
    dlq = AmqpDeadLetters(flow, broker_url)
    asked = {wanted[i].get("_step") for i in wanted}
    steps = [step] if step is not None else (
        sorted(asked) if None not in asked else [s.name for s in flow.actions])
    for s in steps:
        dlq.dead_letter_steps(s, trigger=False)  # SpecError / FlownbError for an unknown step or the trigger
    conn = connect(broker_url, name="flownb replay")
    try:
        declare_flow(conn.channel(), flow)
        channels: dict[str, Any] = {}  # pika channels by step
        found: dict[str, list[tuple]] = {}  # (step, channel, delivery tag, DeadLetter) by dead letter id
        for s in steps:
            ch = conn.channel()
            ch.confirm_delivery()
            channels[s] = ch
            for tag, d in dlq.read(ch, s):
                if d.id in wanted and wanted[d.id].get("_step") in (None, s):
                    found.setdefault(d.id, []).append((s, ch, tag, d))
        missing = [i for i in wanted if i not in found]
        if missing:
            raise SpecError(f"cannot replay dead letter(s) {', '.join(missing)}: not in the dead-letter "
                            f"queue(s) of {', '.join(steps)} (replayed meanwhile?); nothing was replayed — "
                            f"list them again (flownb.dead_letters / 'flownb dlq list')", field="id")
        plans = [(s, ch, tag, d, *rebuild(s, d.id, d.message)) for i in wanted for s, ch, tag, d in found[i]]
        done: list[dict] = []
        for s, ch, tag, d, payload, edited in plans:
            try:
                ch.basic_publish(names.exchange(flow.name), s, payload, PERSISTENT, mandatory=True)
            except pika.exceptions.NackError as exc:
                raise BrokerError(f"the queue of step '{s}' refused the replayed message (full); "
                                  f"{len(done)} replayed; replay the rest when it drains") from exc
            except pika.exceptions.UnroutableError as exc:
                raise BrokerError(f"the replayed message for step '{s}' could not be routed (is the "
                                  f"step's queue bound?); {len(done)} replayed") from exc
            ch.basic_ack(tag)  # only now: the broker confirmed the replayed message
            done.append({"_id": d.id, "_step": s, "edited": edited,
                         "message_id": Message.from_json(payload).id})
        return done
    finally:
        if conn.is_open:
            conn.close()  # the dead letters not replayed return to their queues
