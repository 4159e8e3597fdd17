"""The worker of a polling trigger: its cursor lives in the broker.

The state queue ``flownb.<flow>.<trigger>.state`` (``x-single-active-consumer``) holds exactly one
message: the cursor (JSON), with the time of the last poll in a header. Only the active consumer
receives it, so only one replica polls at a time; the others wait and take over when it dies (its
unacked cursor is requeued). Each poll runs on the cursor, then in ONE AMQP transaction publishes
the emitted messages (persistent) and the new cursor and acks the old one: a crash before
``tx.commit`` changes nothing, so a poll is never lost nor emitted twice.

Back-pressure: before committing, the first step's queue depth plus the poll's size must fit its
length limit; otherwise the poll is not committed and is repeated (from the same cursor) later. The
check is what enforces the limit: a transaction has no publisher confirms, so a full queue does not
refuse a transactional publish (a quorum queue accepts it beyond its limit; RabbitMQ 3.10.8).

Queue types: the step queues are quorum queues (``FLOWNB_QUEUE_TYPE``), the state queue is classic;
the transaction spans both (tested: commit applies all of it, a connection closed before
``tx.commit`` nothing). The state queue stays classic because RabbitMQ refuses ``basic.get`` on a
quorum queue with a single active consumer, which :func:`read_state` uses.

The cursor is seeded (``{}``) once, under a lock (an exclusive queue), when the state queue has
neither a message nor a consumer.
"""

from __future__ import annotations

import logging
import threading
import time

import orjson
import pika
import pika.exceptions

from ...errors import BrokerError, FlownbError
from ...flow import Flow
from ..core import TriggerRunner
from ..on_error import event_from_dead, event_from_exception, event_payload
from . import names
from .metrics import StepMetrics
from .publish import PERSISTENT, POLLED_HEADER, error_props, state_props
from .topology import VERSION_HEADER, TopologyError, connect, declare_flow, max_length

__all__ = ["TriggerWorker", "read_state"]

log = logging.getLogger(__name__)
_AMQP_ERRORS = (pika.exceptions.AMQPError, BrokerError, OSError)


class TriggerWorker:
    """Polls a trigger on its interval, committing outputs and cursor atomically."""

    def __init__(self, flow: Flow, broker_url: str, *, max_polls: int | None = None,
                 ignore_interval: bool = False):
        """``max_polls``: stop after that many committed polls; ``ignore_interval``: poll as soon as
        the cursor is held (tests, one-shot runs)."""
        self.flow = flow
        self.max_polls = max_polls
        self.ignore_interval = ignore_interval
        self.polls = 0
        self.url = broker_url
        self.runner = TriggerRunner(flow)
        self.name = flow.trigger.name
        self.state_q = names.state_queue(flow.name, self.name)
        self.first = flow.steps[0].name if flow.steps else None
        self.exchange = names.exchange(flow.name)
        self.metrics = StepMetrics(flow.name, self.name)
        self.consuming = threading.Event()
        self._stopping = False
        self._wake = threading.Event()
        self._held: tuple[int, dict, int, float] | None = None  # (delivery tag, state, version, due time)

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    def run(self) -> None:
        backoff = 0.5
        try:
            while not self._stopping:
                started = time.monotonic()
                try:
                    self._session()
                except TopologyError:
                    raise  # a configuration problem: retrying cannot fix it
                except _AMQP_ERRORS as exc:
                    log.warning("trigger '%s': broker connection lost (%r); retrying in %.1fs",
                                self.name, exc, backoff)
                self.consuming.clear()
                self._held = None
                if self._stopping:
                    break
                backoff = 0.5 if time.monotonic() - started > 10 else min(backoff * 2, 15.0)
                self._wake.wait(backoff)
        finally:
            self.runner.close()

    # -- one connection's life --------------------------------------------------------------
    def _session(self) -> None:
        conn = connect(self.url, name=f"flownb {self.name}", heartbeat=60)
        try:
            ch = conn.channel()
            declare_flow(ch, self.flow)
            self._seed(conn)
            ch.basic_qos(prefetch_count=1)
            ch.tx_select()
            ch.basic_consume(self.state_q, self._on_state, auto_ack=False)
            self.consuming.set()
            log.info("trigger '%s': waiting to be the active poller", self.name)
            while not self._stopping:
                conn.process_data_events(time_limit=self._wait_time())
                if self._held and time.time() >= self._held[3]:
                    self._poll(conn, ch)
        finally:
            if conn.is_open:
                try:
                    conn.close()  # an unacked cursor goes back to the queue for the next poller
                except _AMQP_ERRORS:
                    pass

    def _wait_time(self) -> float:
        if self._held is None:
            return 0.2
        return max(0.0, min(0.2, self._held[3] - time.time()))

    def _on_state(self, ch, method, props, body) -> None:
        headers = props.headers or {}
        try:
            state = orjson.loads(body)
        except orjson.JSONDecodeError:
            log.error("trigger '%s': the stored cursor is not JSON (%r); starting from {}", self.name, body[:80])
            state = {}
        polled = float(headers.get(POLLED_HEADER) or 0)
        version = int(headers.get(VERSION_HEADER) or 0)
        due = polled + self.runner.next_delay(state) if polled and not self.ignore_interval else time.time()
        self._held = (method.delivery_tag, state, version, due)

    def _seed(self, conn) -> None:
        lock = self.state_q + ".lock"
        while not self._stopping:
            ch = conn.channel()
            try:
                ch.queue_declare(lock, exclusive=True, auto_delete=True)
            except pika.exceptions.ChannelClosedByBroker as exc:
                if exc.reply_code != 405:
                    raise
                self._wake.wait(0.3)
                continue
            try:
                ok = ch.queue_declare(self.state_q, passive=True).method
                if ok.message_count == 0 and ok.consumer_count == 0:
                    ch.confirm_delivery()
                    ch.basic_publish("", self.state_q, b"{}", state_props(0.0, 0))
                    log.info("trigger '%s': seeded an empty cursor", self.name)
                ch.queue_delete(lock)
            finally:
                if ch.is_open:
                    ch.close()
            return

    # -- one poll, one transaction ------------------------------------------------------------
    def _poll(self, conn, ch) -> None:
        assert self._held is not None  # run() polls only while it holds the cursor
        tag, state, version, _ = self._held
        now = time.time()
        try:
            msgs, payloads, new_state = self.runner.poll(state)
        except FlownbError as exc:
            log.error("trigger '%s': poll failed: %s; next try after the interval", self.name, exc)
            self._report(ch, exc)
            self._retry_later(state)
            return
        except Exception as exc:  # a source error must not kill the poller; it tries again next interval
            log.exception("trigger '%s': poll failed; next try after the interval", self.name)
            self._report(ch, exc)
            self._retry_later(state)
            return
        if payloads and self.first and not self._fits(conn, len(payloads)):
            # a source with a backlog says "poll again now": still wait a little for the queue
            self._held = (tag, state, version, time.time() + max(0.2, min(1.0, self.runner.next_delay(state))))
            return
        if self.first:
            for p in payloads:
                ch.basic_publish(self.exchange, self.first, p, PERSISTENT)
        dlq = names.dead_letter_queue(self.flow.name, self.name)
        for _m, info, p in self.runner.last_dead:  # records over max_message_bytes: dead, cursor moves on
            ch.basic_publish("", dlq, p, error_props(info, self.name))
            if self.flow.on_error is not None:  # in the same transaction: the on_error actions hear of it
                ev = event_payload(self.flow.name, event_from_dead(self.flow.name, _m, info))
                ch.basic_publish("", names.errors_queue(self.flow.name), ev, PERSISTENT)
            log.warning("trigger '%s': a record was dead-lettered: %s", self.name, info.message)
        ch.basic_publish("", self.state_q, orjson.dumps(new_state), state_props(now, version + 1))
        ch.basic_ack(tag)
        ch.tx_commit()
        self._held = None
        self.polls += 1
        if self.max_polls is not None and self.polls >= self.max_polls:
            self._stopping = True
        self.metrics.processed.inc(len(payloads))
        if payloads:
            log.info("trigger '%s': emitted %d message(s)", self.name, len(payloads))

    def _report(self, ch, exc: BaseException) -> None:
        """A failed poll, to the flow's on_error actions (its own transaction: nothing else is in it)."""
        if self.flow.on_error is None:
            return
        ev = event_from_exception("poll_failed", self.flow.name, self.name, exc)
        ch.basic_publish("", names.errors_queue(self.flow.name), event_payload(self.flow.name, ev), PERSISTENT)
        ch.tx_commit()

    def _retry_later(self, state: dict) -> None:
        self.metrics.failed.inc()
        assert self._held is not None  # from _poll, which holds the cursor
        tag, _, version, _ = self._held
        self._held = (tag, state, version, time.time() + self.runner.next_delay(state))

    def _fits(self, conn, n: int) -> bool:
        assert self.first is not None  # asked only when the flow has a first action step
        limit = max_length()
        if n > limit:
            log.error("trigger '%s': one poll emitted %d messages, more than the queue limit %d; emit "
                      "smaller batches or raise FLOWNB_MAX_QUEUE_LENGTH", self.name, n, limit)
            return False
        ch = conn.channel()
        try:
            depth = ch.queue_declare(names.step_queue(self.flow.name, self.first), passive=True).method.message_count
        finally:
            if ch.is_open:
                ch.close()
        if depth + n > limit:
            log.warning("trigger '%s': queue of '%s' holds %d of %d; waiting before committing %d more",
                        self.name, self.first, depth, limit, n)
            return False
        return True


def read_state(flow: Flow, broker_url: str) -> dict | None:
    """The trigger's current cursor (None when none is stored or a poller holds it right now)."""
    conn = connect(broker_url, name="flownb read-state")
    try:
        ch = conn.channel()
        method, _props, body = ch.basic_get(names.state_queue(flow.name, flow.trigger.name), auto_ack=False)
        if method is None:
            return None
        ch.basic_nack(method.delivery_tag, requeue=True)
        return orjson.loads(body)
    finally:
        conn.close()
