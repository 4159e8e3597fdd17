"""Publishing to RabbitMQ, in one place: the publishers, the message properties every publisher uses,
and the four places where flownb relies on a client library's private API, each guarded by a version
check (:func:`private_api_problems`, tested) and falling back to the public API (or, for
:func:`deadline`, to an unbounded wait) when it is missing.

Three publishers, because three jobs need different guarantees from the broker:

- :class:`ConfirmedPublisher` (pika; the step workers and their flight-recorder tap, a trigger's
  seed and a quorum trigger's poll): publisher confirms. Each publish is tracked by its delivery tag
  until the broker acks it (stored), nacks it (refused: a full queue with ``reject-publish``, a
  quorum queue without a leader) or returns it (``mandatory``: routed to no queue). A step worker
  acks its input only once everything the input produced is confirmed; a refused publish is sent
  again, its input still held. On a ``BlockingConnection`` :meth:`ConfirmedPublisher.publish_batch`
  publishes a whole batch at once and waits for its confirms within a deadline (a quorum queue that
  lost its leader may never confirm).
- :class:`TransactionalPublisher` (pika; the polling trigger): an AMQP transaction. A poll must move
  the cursor (publish the new one into the state queue, ack the old one) and emit its messages
  *together*: a crash in between must neither lose a poll nor emit it twice. Confirms cannot give
  that — a confirmed publish cannot be taken back when the ack that should go with it fails, and an
  ack cannot wait for a confirm atomically — while ``tx.commit`` applies publishes and acks of one
  channel at once or not at all (on RabbitMQ across queue types). A transaction has no per-message
  answer, though: a full queue does not refuse a transactional publish (the trigger checks room
  first), and RabbitMQ 3.10.8 does not confirm a transactional publish into a quorum queue. So with
  quorum step queues the trigger publishes the poll's messages with a :class:`ConfirmedPublisher`
  first and commits only the cursor in the transaction (at-least-once: a repeated poll emits again).
- :class:`FastPublisher` (aiormq; the webhook ingress, the ``webhook`` extra): confirms on the ASGI
  server's asyncio event loop, where pika's loops cannot run, with the frames written by hand.

Message properties: every message is ``application/json``; persistent (``delivery_mode=2``) except
a sync reply; dead letters and retries carry the error (``x-flownb-error``) and the step; the trigger's
state message carries the poll time and the cursor version. Builders for pika
(:data:`PERSISTENT`, :data:`TRANSIENT`, :func:`error_props`, :func:`state_props`,
:func:`redelivered_props`) and for aiormq (:func:`aiormq_props`); nothing else builds properties.

pika (step workers): :class:`CoalescingConnection` holds the frames of a batch and writes them with
one ``send`` (``_output_marshaled_frames`` / ``_adapter_emit_data``, pika ≥ 1.0). pika (the trigger):
:func:`deadline` bounds a blocking wait on the broker by ending the connection as pika's own heartbeat
timeout does (``BlockingConnection._impl``, ``Connection._terminate_stream``, pika ≥ 1.0); without
them the wait is unbounded, as before, and :func:`private_api_problems` says so. pika (a quorum
trigger's poll, :func:`async_channel`): the channel under a ``BlockingChannel`` (``_impl``), on which
:class:`ConfirmedPublisher` publishes a batch at once and counts its confirms; without it each publish
waits for its confirm.

aiormq (the webhook ingress; the ``webhook`` extra): :class:`FastPublisher`, below.

A lean publisher for the ingress's one exchange and routing key on an aiormq confirm channel.

aiormq's ``basic_publish`` costs about 110 µs of CPU per message here (pamqp builds three frame
objects and marshals them, a lock is taken, and its write queue holds only 10 frames, so under load
publishers queue up behind it). A webhook publishes to one exchange with one routing key and a
handful of properties, so this module writes the frames itself:

- the ``Basic.Publish`` method frame is marshalled once per channel;
- the content header is packed with :mod:`struct` (``content_type``, ``delivery_mode``,
  ``correlation_id``, ``reply_to``, ``message_id``; a message with AMQP headers, which only sync
  replies carry, is marshalled by pamqp);
- the publishes of one event-loop tick go to the connection's writer as one buffer (one write).

Confirms stay aiormq's: each publish takes the channel's next delivery tag and registers its future
in ``channel.confirmations`` (and its message id for returned messages) before any later publish, so
acks, nacks (``DeliveryError``), returns (``PublishError``) and a closed channel (the future is
rejected) resolve exactly as with ``basic_publish``. The publisher owns its channel: nothing else
publishes on it.

:func:`marshal_header` is tested byte for byte against pamqp.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import struct
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from importlib import metadata
from typing import Any, Protocol, TypeGuard

import orjson
import pika
import pika.adapters.blocking_connection
import pika.channel
import pika.exceptions
import pika.spec
from pika.adapters.select_connection import SelectConnection

from ...errors import BrokerError
from .topology import ERROR_HEADER, STEP_HEADER, VERSION_HEADER

try:  # the webhook extra: workers publish with pika only
    import aiormq
    from aiormq.abc import ChannelFrame
    from pamqp import commands
    from pamqp import frame as pamqp_frame
    from pamqp.header import ContentHeader
except ImportError:  # pragma: no cover - without the webhook extra there is no ingress (and no use
    pass             # of these names)

__all__ = ["PERSISTENT", "TRANSIENT", "CONTENT_TYPE", "POLLED_HEADER", "error_props", "state_props",
           "redelivered_props", "aiormq_props", "Outgoing", "ConfirmedPublisher", "Confirms", "TransactionalPublisher",
           "CoalescingConnection", "FastPublisher", "marshal_header", "supported", "private_api_problems",
           "deadline"]

CONTENT_TYPE = "application/json"
POLLED_HEADER = "x-flownb-polled"
PERSISTENT = pika.BasicProperties(delivery_mode=2, content_type=CONTENT_TYPE)
#: a sync reply: its queue is the requester's own, exclusive and short-lived
TRANSIENT = pika.BasicProperties(delivery_mode=1, content_type=CONTENT_TYPE)


def error_props(info, step: str) -> pika.BasicProperties:
    """A dead letter or a retry: persistent, with the error (``ErrorInfo``) and the step."""
    return pika.BasicProperties(delivery_mode=2, content_type=CONTENT_TYPE,
                                headers={ERROR_HEADER: orjson.dumps(info.to_dict()).decode(), STEP_HEADER: step})


def state_props(polled: float, version: int) -> pika.BasicProperties:
    """The polling trigger's state message: when it polled and the cursor's version."""
    return pika.BasicProperties(delivery_mode=2, content_type=CONTENT_TYPE,
                                headers={POLLED_HEADER: repr(polled), VERSION_HEADER: version})


def redelivered_props(props: pika.BasicProperties, headers: dict | None) -> pika.BasicProperties:
    """A message moved to another queue (to a step's suspect queue; a cursor from an older flownb's
    queue), persistent, with ``headers`` replacing its own."""
    return pika.BasicProperties(delivery_mode=2, content_type=props.content_type or CONTENT_TYPE, headers=headers)


def aiormq_props(*, message_id: str, correlation_id: str | None = None, reply_to: str | None = None,
                 headers: dict | None = None):
    """The properties of a message the webhook ingress publishes (aiormq/pamqp)."""
    return commands.Basic.Properties(content_type=CONTENT_TYPE, delivery_mode=2, message_id=message_id,
                                     correlation_id=correlation_id, reply_to=reply_to, headers=headers)


class CoalescingConnection(SelectConnection):
    """A SelectConnection that can hold outgoing frames and write them with one ``send``.

    pika writes every frame (3 per published message) with its own ``socket.send``; holding the
    frames of a whole batch and writing them joined cuts the system calls ~100-fold. Uses pika's
    ``_output_marshaled_frames`` / ``_adapter_emit_data`` (present since pika 1.0); when a pika
    version lacks them, frames are written as usual."""

    _hold: list[bytes] | None = None
    _can_hold = hasattr(SelectConnection, "_output_marshaled_frames") and \
        hasattr(SelectConnection, "_adapter_emit_data")

    def _output_marshaled_frames(self, marshaled_frames) -> None:
        if self._hold is None:
            super()._output_marshaled_frames(marshaled_frames)
            return
        for f in marshaled_frames:
            self.bytes_sent += len(f)
            self.frames_sent += 1
        self._hold.extend(marshaled_frames)

    def hold(self) -> None:
        if self._can_hold:
            self._hold = []

    def release(self) -> None:
        frames, self._hold = self._hold, None
        if frames and not (self.is_closing or self.is_closed):
            self._adapter_emit_data(b"".join(frames))


_CAN_TERMINATE = hasattr(pika.connection.Connection, "_terminate_stream")


@contextlib.contextmanager
def deadline(conn: pika.BlockingConnection, seconds: float, what: str) -> Iterator[None]:
    """Bound the blocking calls made inside (a publish waiting for its confirm, ``tx.commit``): if the
    broker has not answered within ``seconds`` — a quorum queue that lost its leader may never confirm
    while heartbeats still flow — the connection is ended and the waiting call raises
    :class:`~flownb.errors.BrokerError` naming ``what``, so the caller starts over on a new connection.
    pika's BlockingConnection runs its I/O loop's timers while it waits (that is how its heartbeat
    timeout ends a dead connection); this timer ends the stream the same way."""
    impl = getattr(conn, "_impl", None)
    if impl is None or not _CAN_TERMINATE:
        yield
        return

    def expire() -> None:
        if impl.is_open:
            impl._terminate_stream(BrokerError(f"no answer from the broker for {seconds:g} s ({what}); the "
                                               f"connection is dropped and opened again"))
    timer = impl.ioloop.call_later(seconds, expire)
    try:
        yield
    finally:
        impl.ioloop.remove_timeout(timer)


def async_channel(channel: Any) -> Any:
    """pika's own channel under a BlockingChannel (private ``_impl``), whose ``basic_publish`` does
    not wait for the confirm and whose ``confirm_delivery`` takes an ack/nack callback: a quorum
    trigger publishes a poll at once, then counts its confirms. None when this pika lacks it (the
    caller then confirms each publish in turn)."""
    impl = getattr(channel, "_impl", None)
    return impl if isinstance(impl, pika.channel.Channel) else None


@dataclasses.dataclass(slots=True)
class Outgoing:
    """One publish, kept until the broker confirms it: what to send again after a nack, and ``ref``,
    the caller's own (a step worker: the input it belongs to)."""

    exchange: str
    key: str
    body: bytes
    props: pika.BasicProperties
    ref: Any = None
    sent: float = 0.0  # time.monotonic() of its basic.publish: how long its confirm has been awaited


@dataclasses.dataclass(slots=True)
class Confirms:
    """What the broker answered to a batch: publishes it did not confirm in time, nacked, returned."""

    unconfirmed: int = 0
    refused: int = 0
    returned: int = 0

    @property
    def ok(self) -> bool:
        return not (self.unconfirmed or self.refused or self.returned)


class ConfirmedPublisher:
    """Publishes on one pika channel in confirm mode, each publish tracked by its delivery tag until
    the broker confirms it (see the module's docstring).

    ``channel``: pika's own ``Channel`` (a step worker's SelectConnection) or a ``BlockingChannel``
    (:meth:`publish_batch`: publishes under it on its ``Channel``, :func:`async_channel`, or — a pika
    without it — one confirmed publish at a time). ``on_confirm(done, ack)`` runs in the I/O loop with
    the publishes one ack or nack settled (a ``multiple`` one settles every earlier tag). ``mandatory``:
    a publish that reaches no queue is returned and counted as :attr:`returned` (the broker then acks
    it: a return comes first on the channel, so it is counted by the time its confirm arrives). The
    publisher owns the channel's confirms: nothing else publishes on it."""

    def __init__(self, channel: Any, on_confirm: Callable[[list[Outgoing], bool], None] | None = None, *,
                 mandatory: bool = False, retain: bool = True):
        self.mandatory = mandatory
        #: False: a pending publish drops its body once sent (a caller that never sends it again, such
        #: as the flight recorder's tap, holds no bodies while confirms are slow in coming)
        self.retain = retain
        self.pending: OrderedDict[int, Outgoing] = OrderedDict()  # delivery tag -> publish, in tag order
        self.refused = self.returned = 0  # nacks and returns received (reset by the caller as it likes)
        self._on_confirm_cb = on_confirm
        self._seq = 0
        self._serial: pika.adapters.blocking_connection.BlockingChannel | None = None
        impl = channel if isinstance(channel, pika.channel.Channel) else async_channel(channel)
        if impl is None:  # pragma: no cover - a pika without BlockingChannel._impl: one publish at a time
            self._serial = channel
            channel.confirm_delivery()
            self.channel = channel
            return
        self.channel = impl
        # the publishes that follow Confirm.Select on this channel are confirmed (the broker keeps the
        # channel's order), so they need not wait for its SelectOk
        impl.confirm_delivery(ack_nack_callback=self._on_confirm)
        if mandatory:
            impl.add_on_return_callback(self._on_return)

    def __len__(self) -> int:
        return len(self.pending)

    def oldest(self) -> Outgoing | None:
        """The publish whose confirm has been awaited longest (None: nothing outstanding)."""
        return next(iter(self.pending.values()), None)

    def publish(self, exchange: str, key: str, body: bytes, props: pika.BasicProperties,
                ref: Any = None) -> Outgoing:
        pub = Outgoing(exchange, key, body, props, ref)
        self.send(pub)
        return pub

    def send(self, pub: Outgoing) -> None:
        """Publish ``pub`` (again, after a nack: it takes a new delivery tag)."""
        pub.sent = time.monotonic()
        if self._serial is not None:  # pragma: no cover - see __init__
            try:
                self._serial.basic_publish(pub.exchange, pub.key, pub.body, pub.props, mandatory=self.mandatory)
            except pika.exceptions.UnroutableError:
                self.returned += 1
            except pika.exceptions.NackError:
                self.refused += 1
            return
        # registered once sent: a publish that raised (its channel closed) took no delivery tag, and no
        # confirm can arrive before this returns (they are read by this thread's I/O loop)
        self.channel.basic_publish(pub.exchange, pub.key, pub.body, pub.props, mandatory=self.mandatory)
        if not self.retain:
            pub.body = b""
        self._seq += 1
        self.pending[self._seq] = pub

    def _on_confirm(self, frame) -> None:
        method = frame.method
        ack = isinstance(method, pika.spec.Basic.Ack)
        tag = method.delivery_tag
        if method.multiple:
            done = []
            while self.pending:
                seq = next(iter(self.pending))
                if seq > tag:
                    break
                done.append(self.pending.pop(seq))
        else:
            done = [self.pending.pop(tag)] if tag in self.pending else []
        if not ack:
            self.refused += len(done)
        if self._on_confirm_cb is not None:
            self._on_confirm_cb(done, ack)

    def _on_return(self, _channel, _method, _props, _body) -> None:
        self.returned += 1

    def publish_batch(self, conn: pika.BlockingConnection, exchange: str, key: str, bodies: Iterable[bytes],
                      props: pika.BasicProperties, timeout: float) -> Confirms:
        """On a BlockingConnection: publish ``bodies`` at once, then run the connection's I/O until each
        is confirmed or ``timeout`` seconds pass (pika's BlockingChannel would wait for each confirm in
        turn, without a bound). What was not confirmed stays in :attr:`pending`; after a result that is
        not :attr:`Confirms.ok` the caller replaces the channel (its late confirms would be counted in
        the next batch)."""
        self.refused = self.returned = 0
        n = 0
        for body in bodies:
            self.publish(exchange, key, body, props)
            n += 1
        until = time.monotonic() + timeout
        while self.pending and time.monotonic() < until:
            conn.process_data_events(time_limit=min(0.05, max(0.0, until - time.monotonic())))
        return Confirms(len(self.pending), self.refused, self.returned)


class TransactionalPublisher:
    """A ``BlockingChannel`` in transaction mode (``tx.select``): its publishes and acks apply together at
    :meth:`commit`, or not at all when the connection ends before (see the module's docstring for why
    the trigger needs this and not confirms). Bound a commit with :func:`deadline`."""

    def __init__(self, channel: pika.adapters.blocking_connection.BlockingChannel):
        self.channel = channel
        channel.tx_select()

    def publish(self, exchange: str, key: str, body: bytes, props: pika.BasicProperties = PERSISTENT) -> None:
        self.channel.basic_publish(exchange, key, body, props)

    def ack(self, delivery_tag: int) -> None:
        self.channel.basic_ack(delivery_tag)

    def commit(self) -> None:
        self.channel.tx_commit()


def private_api_problems(channel=None) -> list[str]:
    """What the installed client libraries lack of the private API flownb uses (empty: all there).
    ``channel``: an open aiormq confirm channel, to check the ingress publisher's needs too."""
    problems = []
    if not CoalescingConnection._can_hold:
        problems.append(f"pika {pika.__version__}: SelectConnection lacks _output_marshaled_frames/"
                        f"_adapter_emit_data (step workers fall back to one send per frame)")
    if not _CAN_TERMINATE or not hasattr(pika.BlockingConnection, "_flush_output"):
        problems.append(f"pika {pika.__version__}: Connection lacks _terminate_stream (a trigger's wait for the "
                        f"broker is not bounded)")
    if "_impl" not in pika.adapters.blocking_connection.BlockingChannel.__init__.__code__.co_names:
        problems.append(f"pika {pika.__version__}: BlockingChannel lacks _impl (a quorum trigger confirms each "
                        f"message of a poll in turn)")
    if channel is not None and not supported(channel):
        problems.append(f"aiormq {metadata.version('aiormq')}: the channel lacks the internals FastPublisher needs "
                        f"(the ingress falls back to basic_publish)")
    return problems


_FRAME_END = b"\xce"
_METHOD, _HEADER, _BODY = 1, 2, 3
_BASIC = 60
# property flags of Basic (AMQP 0-9-1 §4.2.6.1: bit 15 = first property)
_CONTENT_TYPE, _HEADERS, _DELIVERY_MODE, _CORRELATION_ID, _REPLY_TO, _MESSAGE_ID = (
    1 << 15, 1 << 13, 1 << 12, 1 << 10, 1 << 9, 1 << 7)


def _shortstr(value: str) -> bytes:
    raw = value.encode()
    if len(raw) > 255:
        raise ValueError(f"an AMQP short string holds at most 255 bytes, got {len(raw)}")
    return bytes((len(raw),)) + raw


def _frame(kind: int, channel: int, payload: bytes) -> bytes:
    return struct.pack(">BHI", kind, channel, len(payload)) + payload + _FRAME_END


def marshal_method(channel: int, exchange: str, routing_key: str, mandatory: bool) -> bytes:
    payload = (struct.pack(">HHH", _BASIC, 40, 0) + _shortstr(exchange) + _shortstr(routing_key)
               + bytes((1 if mandatory else 0,)))
    return _frame(_METHOD, channel, payload)


def marshal_header(channel: int, body_size: int, *, message_id: str, correlation_id: str | None = None,
                   reply_to: str | None = None, content_type: str = "application/json",
                   delivery_mode: int = 2) -> bytes:
    """The content header frame of a publish with these properties (no AMQP headers table)."""
    flags = _CONTENT_TYPE | _DELIVERY_MODE | _MESSAGE_ID
    props = [_shortstr(content_type), bytes((delivery_mode,))]
    if correlation_id:
        flags |= _CORRELATION_ID
        props.append(_shortstr(correlation_id))
    if reply_to:
        flags |= _REPLY_TO
        props.append(_shortstr(reply_to))
    props.append(_shortstr(message_id))
    payload = struct.pack(">HHQH", _BASIC, 0, body_size, flags) + b"".join(props)
    return _frame(_HEADER, channel, payload)


class PublisherChannel(Protocol):
    """What :class:`FastPublisher` uses of an aiormq channel: its public face and the private state
    of aiormq's ``Channel`` (:func:`supported` checks that it is there)."""

    number: int
    publisher_confirms: bool
    delivery_tag: int
    confirmations: dict[int, Any]
    message_id_delivery_tag: dict[str, int]
    write_queue: asyncio.Queue
    max_content_size: int

    @property
    def is_closed(self) -> bool: ...

    def create_future(self) -> asyncio.Future: ...


def supported(channel: aiormq.abc.AbstractChannel) -> TypeGuard[PublisherChannel]:
    """Whether this aiormq channel has the internals the publisher relies on (else use basic_publish)."""
    frame_fields = ({f.name for f in dataclasses.fields(ChannelFrame)} if dataclasses.is_dataclass(ChannelFrame)
                    else set())
    return {"payload", "should_close"} <= frame_fields and all(
        hasattr(channel, a) for a in ("confirmations", "message_id_delivery_tag", "delivery_tag", "write_queue",
                                      "create_future", "max_content_size", "number"))


class FastPublisher:
    """Publishes persistent, confirmed messages to one exchange and routing key on ``channel``,
    which it owns; :meth:`close` stops its writer task (aiormq rejects the pending confirms when the
    channel closes)."""

    def __init__(self, channel: PublisherChannel, exchange: str, routing_key: str, *,
                 mandatory: bool = True):
        if not getattr(channel, "publisher_confirms", False):
            raise ValueError("the channel must be in confirm mode")
        self.channel = channel
        self._number = channel.number
        self._method = marshal_method(channel.number, exchange, routing_key, mandatory)
        self._max_content = channel.max_content_size
        self._buffer: list[bytes] = []
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._flush_loop(), name="flownb-webhook-publish")

    def close(self) -> None:
        self._task.cancel()

    def publish(self, body: bytes, *, message_id: str, correlation_id: str | None = None,
                reply_to: str | None = None, headers: dict | None = None) -> asyncio.Future:
        """Queue one publish; the future resolves with the broker's ack (aiormq semantics)."""
        ch = self.channel
        if ch.is_closed:
            raise aiormq.exceptions.ChannelInvalidStateError(f"{ch!r} closed")
        n = self._number
        if headers:
            props = aiormq_props(message_id=message_id, correlation_id=correlation_id,
                                 reply_to=reply_to, headers=headers)
            header = pamqp_frame.marshal(ContentHeader(0, len(body), props), n)
        else:
            header = marshal_header(n, len(body), message_id=message_id, correlation_id=correlation_id,
                                    reply_to=reply_to)
        parts = [self._method, header]
        step = self._max_content
        if len(body) <= step:
            if body:
                parts.append(_frame(_BODY, n, body))
        else:
            parts.extend(_frame(_BODY, n, body[i:i + step]) for i in range(0, len(body), step))
        # the tag, the future and the bytes are registered together, with no await in between:
        # the broker numbers publishes in the order they reach it, which is the buffer's order
        ch.delivery_tag += 1
        tag = ch.delivery_tag
        confirmation = ch.create_future()
        ch.confirmations[tag] = confirmation
        ch.message_id_delivery_tag[message_id] = tag
        confirmation.add_done_callback(lambda _f: self._forget(message_id, tag))
        self._buffer.append(b"".join(parts))
        self._wake.set()
        return confirmation

    def _forget(self, message_id: str, tag: int) -> None:
        ids = self.channel.message_id_delivery_tag
        if ids.get(message_id) == tag:
            del ids[message_id]

    async def _flush_loop(self) -> None:
        queue = self.channel.write_queue
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._buffer:
                continue
            payload = b"".join(self._buffer)
            self._buffer.clear()
            await queue.put(ChannelFrame(payload=payload, should_close=False))
