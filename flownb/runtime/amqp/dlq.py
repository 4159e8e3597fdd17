"""Dead letters on RabbitMQ: ``flownb dlq list/show/replay --broker URL``.

Each step's dead-letter queue ``flownb.<flow>.<step>.dlq`` holds the failed message (wire JSON) with
its :class:`~flownb.runtime.core.ErrorInfo` in the ``x-flownb-error`` header. A dead letter's id is
its message id. Listing reads every message with ``basic.get`` and returns them all to the queue
(closing the channel requeues them); replay publishes the chosen ones to their step's queue with
``attempt`` reset to 1, waits for the broker's confirms, and only then acks them out of the DLQ.
"""

from __future__ import annotations

from collections.abc import Iterable

import orjson
import pika.exceptions

from ...errors import BrokerError, FlownbError, MessageError
from ...flow import Flow
from ...message import Message
from ...secrets import Redactor, redact_dead_letter
from ..core import DeadLetter, DeadLetterStore, ErrorInfo, undecodable
from . import names
from .publish import PERSISTENT
from .topology import ERROR_HEADER, connect, declare_flow

__all__ = ["AmqpDeadLetters"]


def _dead_letter(step: str, props, body: bytes) -> DeadLetter:
    try:
        msg = Message.from_json(body)
    except MessageError:
        msg = undecodable(body, step)
    raw = (props.headers or {}).get(ERROR_HEADER)
    try:
        info = ErrorInfo.from_dict(orjson.loads(raw)) if raw else None
    except (orjson.JSONDecodeError, TypeError):
        info = None
    info = info or ErrorInfo(type="Unknown", message="no error recorded", step=step,
                             attempt=msg.attempt, retryable=False)
    return DeadLetter(id=msg.id, step=step, message=msg, error=info)


class AmqpDeadLetters(DeadLetterStore):
    """The dead-letter queues of ``flow`` on the broker at ``broker_url``."""

    def __init__(self, flow: Flow, broker_url: str):
        self.flow = flow
        self.url = broker_url
        self.redactor = Redactor.from_flow(flow)  # list/show mask secrets; replay sends what is stored

    def dead_letter_steps(self, step: str | None, *, trigger: bool = True) -> list[str]:
        """Steps whose dead letters to read. The trigger has dead letters too (records over
        max_message_bytes), listed but never replayed: they would be refused again."""
        if step is None:
            return ([self.flow.trigger.name] if trigger else []) + [s.name for s in self.flow.actions]
        found = self.flow.step(step)  # SpecError with a suggestion when unknown
        if found.name == self.flow.trigger.name and not trigger:
            raise FlownbError(f"'{step}' is the trigger: its dead letters are records over the flow's "
                              f"max_message_bytes and cannot be replayed; action steps: "
                              f"{', '.join(s.name for s in self.flow.actions)}")
        return [found.name]

    def read(self, ch, step: str) -> list[tuple[int, DeadLetter]]:
        """The dead letters of ``step`` with their delivery tags on ``ch`` (held unacked: a replay acks
        each once its copy is confirmed; the rest return to the queue with the channel)."""
        out: list[tuple[int, DeadLetter]] = []
        q = names.dead_letter_queue(self.flow.name, step)
        try:
            while True:
                method, props, body = ch.basic_get(q, auto_ack=False)
                if method is None:
                    return out
                out.append((method.delivery_tag, _dead_letter(step, props, body)))
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code == 404:
                return out
            raise BrokerError(f"cannot read dead letters of '{step}': {exc.reply_text}") from exc

    def list(self, step: str | None = None) -> list[DeadLetter]:
        steps = self.dead_letter_steps(step)
        conn = connect(self.url, name="flownb dlq")
        try:
            items = []
            for s in steps:
                ch = conn.channel()
                items += [redact_dead_letter(d, self.redactor) for _, d in self.read(ch, s)]
                if ch.is_open:
                    ch.close()  # unacked → back to the queue
            return items
        finally:
            conn.close()

    def show(self, dead_id: str) -> DeadLetter:
        for d in self.list():
            if d.id == dead_id:
                return d
        raise FlownbError(f"no dead letter with id '{dead_id}' in flow '{self.flow.name}'; "
                          f"see 'flownb dlq list'")

    def replay(self, step: str | None = None, ids: Iterable[str] | None = None) -> int:
        wanted = set(ids) if ids else None
        steps = self.dead_letter_steps(step, trigger=False)
        conn = connect(self.url, name="flownb dlq replay")
        try:
            declare_flow(conn.channel(), self.flow)
            count = 0
            for s in steps:
                count += self._replay_step(conn, s, wanted)
            return count
        finally:
            conn.close()

    def _replay_step(self, conn, step: str, wanted: set[str] | None) -> int:
        ch = conn.channel()
        ch.confirm_delivery()
        chosen = [(tag, d) for tag, d in self.read(ch, step) if wanted is None or d.id in wanted]
        for tag, d in chosen:
            m = d.message
            m.attempt = 1
            try:
                ch.basic_publish(names.exchange(self.flow.name), step, m.to_json(), PERSISTENT)
            except pika.exceptions.NackError as exc:
                raise BrokerError(f"the queue of step '{step}' is full; replay again when it drains") from exc
            ch.basic_ack(tag)
        ch.close()  # the dead letters not chosen go back to the DLQ
        return len(chosen)
