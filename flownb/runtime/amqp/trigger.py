"""The worker of a polling trigger: its cursor lives in the broker.

The cursor queue holds exactly one message: the cursor (JSON), with the time of the last poll in a
header. Exactly one replica — the active poller — consumes it (prefetch 1), so only one polls at a
time; the others wait and take over when it dies (its unacked cursor is requeued). Each poll runs on
the cursor, then in ONE AMQP transaction (:class:`~flownb.runtime.amqp.publish.TransactionalPublisher`)
publishes the emitted messages (persistent) and the new cursor and acks the old one: a crash before
``tx.commit`` changes nothing, so a poll is never lost nor emitted twice.

Who is the active poller (:func:`~flownb.runtime.amqp.topology.trigger_queues`):

- classic topology: the cursor queue ``flownb.<flow>.<trigger>.state`` has
  ``x-single-active-consumer``; every replica consumes it and the broker delivers the cursor to one;
- quorum topology (replicated): the cursor is in ``.cursor`` (a quorum queue without single active
  consumer, so ``basic.get`` can read it) and the election is in ``.poller``, a quorum queue with
  ``x-single-active-consumer`` holding one token message. Every replica consumes ``.poller``; the one
  that receives the token holds it unacked for as long as it lives and only then consumes ``.cursor``.
  The token and the cursor are consumed on one connection, so when it goes both return to their
  queues and the next replica's consumer of ``.poller`` becomes active. A worker that takes over on a
  broker where an older flownb kept the cursor in the classic ``.state`` queue moves it across first
  (one transaction: publish into ``.cursor``, ack from ``.state``; then ``.state`` is deleted), after
  waiting for any consumer of ``.state`` — an older trigger worker still polling — to go.

Quorum step queues: the emitted messages are published *with publisher confirms*
(:class:`~flownb.runtime.amqp.publish.ConfirmedPublisher`, mandatory) before the transaction, which
then holds only the new cursor and the ack. RabbitMQ 3.10.8 does not confirm a transactional publish
into a quorum queue, and a poll committed right after the node leading the step queue died (its
queue still electing a leader) lost every message while the cursor moved on.
A confirm not received within ``FLOWNB_BROKER_TIMEOUT`` replaces the publishing channel (the cursor
and the poller token stay held); the room check or a ``tx.commit`` not answered as long ends the
connection (:func:`~flownb.runtime.amqp.publish.deadline`). Either way the poll is repeated from the
committed cursor, so in the quorum topology a poll is at-least-once.

A replica whose connection went quiet while it stays open must not keep the poll from the others:
every replica probes the cursor queue every few seconds (see ``_watch``), bounded by
``FLOWNB_BROKER_TIMEOUT``.

Back-pressure: before committing, the first step's queue depth plus the poll's size must fit its
length limit; otherwise the poll is not committed and is repeated (from the same cursor) later. The
check is what enforces the limit: a transaction has no publisher confirms, so a full queue does not
refuse a transactional publish (a quorum queue accepts it beyond its limit; RabbitMQ 3.10.8).

The transaction spans queue types (tested on 3.10.8: a commit applies all of it, a connection closed
before ``tx.commit`` nothing).

Seeding: in the classic topology the cursor (``{}``) is seeded under a lock (an exclusive queue) when
the state queue has neither a message nor a consumer. In the quorum topology the token is seeded the
same way (``.poller`` without message or consumer: a quorum queue reports 0 of both while it elects a
leader, so a second token is possible — and harmless, since only the single active consumer of
``.poller`` receives tokens). A second *cursor* would not be harmless, so the cursor is seeded only
by the declaration that creates ``.cursor`` (:func:`~flownb.runtime.amqp.topology.declare_flow`,
under a lock), never from message counts.
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
from .publish import (
    PERSISTENT,
    POLLED_HEADER,
    ConfirmedPublisher,
    TransactionalPublisher,
    async_channel,
    deadline,
    error_props,
    redelivered_props,
    state_props,
)
from .topology import (
    AMQP_ERRORS,
    VERSION_HEADER,
    TopologyError,
    broker_timeout,
    connect,
    declare_flow,
    max_length,
    queue_type,
    run_sessions,
    trigger_queues,
)

__all__ = ["TriggerWorker", "read_state"]

log = logging.getLogger(__name__)


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
        self.state_q, self.lock_q = trigger_queues(flow)  # the cursor; the poller's lock (quorum only)
        self.first = flow.steps[0].name if flow.steps else None
        self.exchange = names.exchange(flow.name)
        self.metrics = StepMetrics(flow.name, self.name)
        #: quorum step queues: the emitted messages are published with confirms before the cursor's
        #: transaction (a transaction into a quorum queue is not confirmed: see the module's docstring)
        self.confirm = queue_type(flow) == "quorum"
        self.timeout = broker_timeout()  # the longest wait for the broker (a confirm, tx.commit)
        self._pub: pika.adapters.blocking_connection.BlockingChannel | None = None  # the confirm channel
        self._out: ConfirmedPublisher | None = None  # publishes on self._pub
        self._tx: TransactionalPublisher  # the cursor's channel, set by each session
        self.consuming = threading.Event()
        self._stopping = False
        self._wake = threading.Event()
        self._held: tuple[int, dict, int, float] | None = None  # (delivery tag, state, version, due time)
        self._token = False       # quorum topology: this replica received the poller token
        self._reading = False     # consuming the cursor queue (quorum: once the token is held)
        self._took_at = 0.0       # quorum: when this replica took over (no cursor for long: an error)
        self._next_probe = 0.0    # when the watchdog next probes the cursor queue (time.monotonic())
        self._unread_since: float | None = None  # quorum: a cursor seen ready with no consumer since

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    def run(self) -> None:
        def forget() -> None:
            self.consuming.clear()
            self._held = None
        try:
            run_sessions(self._session, stopping=lambda: self._stopping, wake=self._wake,
                         what=f"trigger '{self.name}'", after=forget)
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
            self._tx = TransactionalPublisher(ch)
            self._pub = self._out = None
            if self.confirm and self.first:
                self._open_pub(conn)
            self._token = self._reading = False
            self._took_at = 0.0
            probe = conn.channel()  # the watchdog's: a passive declare that fails closes only this channel
            self._next_probe, self._unread_since = time.monotonic() + self._probe_every(), None
            if self.lock_q is None:
                ch.basic_consume(self.state_q, self._on_state, auto_ack=False)
                self._reading = True
            else:
                lock = conn.channel()
                lock.basic_qos(prefetch_count=1)
                lock.basic_consume(self.lock_q, self._on_token, auto_ack=False)  # held unacked while alive
            cancelled: list[str] = []  # a consumer the broker cancelled (queue deleted, its node gone)
            for c in (ch, lock) if self.lock_q is not None else (ch,):
                c.add_on_cancel_callback(lambda frame: cancelled.append(frame.method.consumer_tag))
            # a channel the broker closed under a consumer (RabbitMQ's consumer_timeout closes the channel
            # of a delivery unacked for 30 min by default: the poller token is never acked) is no error
            # that pika raises while this loop only runs process_data_events: without a word the token
            # would pass to the next replica while this one polls on, or a held cursor would return
            closed: list[str] = []
            for c in (ch, lock, probe) if self.lock_q is not None else (ch, probe):
                impl = async_channel(c)
                if impl is not None:
                    impl.add_on_close_callback(lambda _c, reason: closed.append(str(reason)))
            self.consuming.set()
            log.info("trigger '%s': waiting to be the active poller", self.name)
            while not self._stopping:
                conn.process_data_events(time_limit=self._wait_time())
                if closed:
                    raise BrokerError(f"the broker closed a channel of trigger '{self.name}' ({closed[0]}); "
                                      f"starting over on a new connection")
                if cancelled:  # nothing more would arrive, silently: start over on a new connection
                    raise BrokerError(f"the broker cancelled trigger '{self.name}''s consumer {cancelled[0]} "
                                      f"(its queue was deleted or its node went down)")
                if self._token and not self._reading:
                    self._take_over(conn, ch)
                if self._took_at and self._held is None and time.monotonic() - self._took_at > 60:
                    self._took_at = 0.0  # said once per session
                    log.error("trigger '%s': no cursor in '%s' for 60 s (a worker died while creating the "
                              "queue?): set one with 'flownb state set SPEC --broker URL --to …'",
                              self.name, self.state_q)
                if self._held and time.time() >= self._held[3]:
                    self._poll(conn)
                if time.monotonic() >= self._next_probe:
                    self._watch(conn, probe)
        finally:
            if conn.is_open:
                try:
                    conn.close()  # an unacked cursor goes back to the queue for the next poller
                except AMQP_ERRORS:
                    pass

    # -- the watchdog: a connection that went quiet must not keep the poll from the other replicas --
    # A replica's connection can stop carrying the broker's frames, or its deliveries, while it stays
    # open (the broker still hears this replica's heartbeats, so it keeps what it handed out). If the
    # broker hands the cursor (classic) or the poller token (quorum) to such a replica, nobody polls:
    # pika's heartbeat check would notice a silent connection only after 65-130 s, and a lost delivery
    # never. So every replica, waiting or polling, probes the cursor queue every few seconds:
    # - a probe not answered within the timeout ends the connection (:func:`deadline`): this replica
    #   starts over, and whatever the broker handed it goes back to its queue;
    # - quorum topology: a cursor that stays ready in ``.cursor`` with no consumer for longer than the
    #   timeout means the token went to a replica that did not get it (it consumes ``.cursor`` as soon
    #   as it does): every replica that sees it starts over on a new connection, the one holding the
    #   token unawares included. (In the classic topology the cursor itself is what the broker hands
    #   over, and a lost delivery of it looks like a held cursor: only the first case is seen there;
    #   the broker's consumer_timeout closes the channel of that lost delivery in the end, see _session.)
    def _probe_every(self) -> float:
        return max(2.0, self.timeout / 6)

    def _watch(self, conn, probe) -> None:
        now = time.monotonic()
        self._next_probe = now + self._probe_every()
        with deadline(conn, self.timeout, f"trigger '{self.name}' probing its cursor queue '{self.state_q}'"):
            cursor = probe.queue_declare(self.state_q, passive=True).method
        if self.lock_q is None or self._reading or not cursor.message_count or cursor.consumer_count:
            self._unread_since = None
            return
        if self._unread_since is None:
            self._unread_since = now
        elif now - self._unread_since > self.timeout:
            raise BrokerError(f"trigger '{self.name}': the cursor has waited in '{self.state_q}' for "
                              f"{now - self._unread_since:.0f} s with nobody reading it, so the poller token of "
                              f"'{self.lock_q}' went to a replica that did not receive it (maybe this one); "
                              f"starting over on a new connection")

    def _wait_time(self) -> float:
        if self._held is None:
            return 0.2
        return max(0.0, min(0.2, self._held[3] - time.time()))

    def _on_token(self, ch, method, props, body) -> None:
        self._token = True  # never acked: the connection's end returns it to the next replica

    def _take_over(self, conn, ch) -> None:
        """Holding the poller token (quorum topology): move an older flownb's cursor across, then
        consume the cursor queue (its cursor was seeded when the queue was created: declare_flow)."""
        assert self.lock_q is not None  # only the quorum topology has a token
        self._migrate(conn)
        ch.basic_consume(self.state_q, self._on_state, auto_ack=False)
        self._took_at = time.monotonic()
        self._reading = True
        log.info("trigger '%s': took over as the active poller (holds the token of '%s')", self.name, self.lock_q)

    def _migrate(self, conn) -> None:
        """Move the cursor of the classic ``.state`` queue an older flownb kept into the quorum cursor
        queue: one transaction (publish, ack), then delete ``.state``. Waits while ``.state`` has a
        consumer: an older trigger worker still polls from it, and two pollers would emit twice."""
        old = names.state_queue(self.flow.name, self.name)
        warned = False
        while not self._stopping:
            probe = conn.channel()
            try:
                ok = probe.queue_declare(old, passive=True).method
            except pika.exceptions.ChannelClosedByBroker as exc:
                if exc.reply_code == 404:
                    return  # nothing to move
                raise
            if ok.consumer_count == 0:
                break
            probe.close()
            if not warned:
                log.warning("trigger '%s': an older trigger worker still polls from the classic queue '%s'; "
                            "waiting for it to stop before moving its cursor to '%s'", self.name, old, self.state_q)
                warned = True
            conn.sleep(1.0)
        else:
            return
        try:
            tx = TransactionalPublisher(probe)
            method, props, body = probe.basic_get(old, auto_ack=False)
            if method is not None:
                here = conn.channel()
                try:
                    held = here.queue_declare(self.state_q, passive=True).method
                finally:
                    if here.is_open:
                        here.close()
                if held.message_count or held.consumer_count:
                    raise TopologyError(
                        f"trigger '{self.name}': both '{old}' (an older flownb's classic cursor queue) and "
                        f"'{self.state_q}' hold a cursor; keep the right one (flownb state show with "
                        f"FLOWNB_QUEUE_TYPE=classic and =quorum), delete the other queue, then start the trigger")
                tx.publish("", self.state_q, body, redelivered_props(props, props.headers))
                tx.ack(method.delivery_tag)
                tx.commit()
                log.info("trigger '%s': moved the cursor from the classic queue '%s' to '%s'",
                         self.name, old, self.state_q)
            probe.queue_delete(old, if_empty=True)
        except pika.exceptions.ChannelClosedByBroker as exc:  # published to meanwhile: left in place
            log.warning("trigger '%s': could not delete '%s' (%s)", self.name, old, exc.reply_text)
        finally:
            if probe.is_open:
                probe.close()

    def _on_state(self, ch, method, props, body) -> None:
        self._took_at = 0.0  # a cursor arrived
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
        """Seed the first message of the queue every replica consumes — the cursor (classic topology)
        or the poller token (quorum) — once, under a lock (an exclusive queue)."""
        queue = self.lock_q or self.state_q
        body, props = (b"{}", state_props(0.0, 0)) if self.lock_q is None else (b"token", PERSISTENT)
        lock = queue + ".lock"
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
                ok = ch.queue_declare(queue, passive=True).method
                if ok.message_count == 0 and ok.consumer_count == 0:
                    got = ConfirmedPublisher(ch, mandatory=True).publish_batch(conn, "", queue, [body], props,
                                                                                self.timeout)
                    if not got.ok:
                        raise BrokerError(f"trigger '{self.name}' could not seed '{queue}' (the broker did not "
                                          f"confirm it: {got}); starting over on a new connection")
                    log.info("trigger '%s': seeded %s", self.name,
                             "an empty cursor" if self.lock_q is None else "the poller token")
                ch.queue_delete(lock)
            finally:
                if ch.is_open:
                    ch.close()
            return

    # -- one poll, one transaction ------------------------------------------------------------
    def _poll(self, conn) -> None:
        assert self._held is not None  # run() polls only while it holds the cursor
        tag, state, version, _ = self._held
        now = time.time()
        try:
            msgs, payloads, new_state = self.runner.poll(state)
        except FlownbError as exc:
            log.error("trigger '%s': poll failed: %s; next try after the interval", self.name, exc)
            self._report(exc)
            self._retry_later(state)
            return
        except Exception as exc:  # a source error must not kill the poller; it tries again next interval
            log.exception("trigger '%s': poll failed; next try after the interval", self.name)
            self._report(exc)
            self._retry_later(state)
            return
        with deadline(conn, self.timeout, f"trigger '{self.name}' publishing a poll of {len(payloads)} message(s)"):
            if payloads and self.first and not self._fits(conn, len(payloads)):
                # a source with a backlog says "poll again now": still wait a little for the queue
                self._held = (tag, state, version, time.time() + max(0.2, min(1.0, self.runner.next_delay(state))))
                return
            if self.first and payloads and self._pub is not None and not self._publish_confirmed(conn, payloads):
                self._held = (tag, state, version, time.time() + max(0.2, min(1.0, self.runner.next_delay(state))))
                return
            self._commit(tag, new_state, version, now, payloads)

    def _open_pub(self, conn) -> None:
        """The channel a poll's messages are published on, with confirms; mandatory: a message that
        reaches no queue does not let the cursor move."""
        self._pub = conn.channel()
        self._out = ConfirmedPublisher(self._pub, mandatory=True)
        conn.process_data_events(time_limit=0)

    def _publish_confirmed(self, conn, payloads: list[bytes]) -> bool:
        """Publish a poll's messages into the (quorum) first step queue and wait for their confirms,
        before the cursor moves. False: the poll is repeated later from the same cursor (the held
        cursor and the poller token stay with this replica), and those already confirmed arrive twice
        (at-least-once) — when the queue refused or returned one, or when a confirm did not come within
        the timeout. Either way the channel is replaced: on RabbitMQ 3.10.8 a channel whose first publish
        to a quorum queue met its leader's node down has every later publish to it refused (seen in the
        failover test: 99 of 99, poll after poll, into an empty queue), and a queue whose leader died
        may never confirm what the old leader got (the broker sequences each channel's publishes)."""
        assert self._pub is not None and self._out is not None and self.first is not None
        got = self._out.publish_batch(conn, self.exchange, self.first, payloads, PERSISTENT, self.timeout)
        if got.ok:
            return True
        if got.unconfirmed:
            log.warning("trigger '%s': %d of the %d message(s) of this poll not confirmed within %g s (the queue "
                        "of '%s' lost its leader?); the poll is repeated on a new channel", self.name,
                        got.unconfirmed, len(payloads), self.timeout, self.first)
        else:
            # full, or (RabbitMQ 3.10.8) a channel whose first publish met the queue's leader gone: that
            # channel's publishes to the queue are refused from then on, so the poll goes on a new one
            log.warning("trigger '%s': the queue of '%s' refused %d and returned %d of the %d message(s) of this "
                        "poll (full, its leader was lost, or it is gone); the poll is repeated later on a new "
                        "channel", self.name, self.first, got.refused, got.returned, len(payloads))
        self._pub.close()
        self._open_pub(conn)
        return False

    def _commit(self, tag: int, new_state: dict, version: int, now: float, payloads: list[bytes]) -> None:
        """The poll's transaction: its messages (unless already confirmed), dead letters, the new
        cursor and the ack of the old one."""
        tx = self._tx
        if self.first and self._pub is None:
            for p in payloads:
                tx.publish(self.exchange, self.first, p)
        dlq = names.dead_letter_queue(self.flow.name, self.name)
        for _m, info, p in self.runner.last_dead:  # records over max_message_bytes: dead, cursor moves on
            tx.publish("", dlq, p, error_props(info, self.name))
            if self.flow.on_error is not None:  # in the same transaction: the on_error actions hear of it
                ev = event_payload(self.flow.name, event_from_dead(self.flow.name, _m, info))
                tx.publish("", names.errors_queue(self.flow.name), ev)
            log.warning("trigger '%s': a record was dead-lettered: %s", self.name, info.message)
        tx.publish("", self.state_q, orjson.dumps(new_state), state_props(now, version + 1))
        tx.ack(tag)
        tx.commit()
        self._held = None
        self.polls += 1
        if self.max_polls is not None and self.polls >= self.max_polls:
            self._stopping = True
        self.metrics.processed.inc(len(payloads))
        if payloads:
            log.info("trigger '%s': emitted %d message(s)", self.name, len(payloads))

    def _report(self, exc: BaseException) -> None:
        """A failed poll, to the flow's on_error actions (its own transaction: nothing else is in it)."""
        if self.flow.on_error is None:
            return
        ev = event_from_exception("poll_failed", self.flow.name, self.name, exc)
        self._tx.publish("", names.errors_queue(self.flow.name), event_payload(self.flow.name, ev))
        self._tx.commit()

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
        method, _props, body = ch.basic_get(trigger_queues(flow)[0], auto_ack=False)
        if method is None:
            return None
        ch.basic_nack(method.delivery_tag, requeue=True)
        return orjson.loads(body)
    finally:
        conn.close()
