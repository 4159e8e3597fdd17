"""Publishing to RabbitMQ, in one place: the message properties every publisher uses, and the four
places where flownb relies on a client library's private API, each guarded by a version check
(:func:`private_api_problems`, tested) and falling back to the public API (or, for :func:`deadline`,
to an unbounded wait) when it is missing.

Message properties: every message is ``application/json``; persistent (``delivery_mode=2``) except
a sync reply; dead letters and retries carry the error (``x-flownb-error``) and the step; the trigger's
state message carries the poll time and the cursor version. Builders for pika
(:data:`PERSISTENT`, :data:`TRANSIENT`, :func:`error_props`, :func:`state_props`,
:func:`redelivered_props`) and for aiormq (:func:`aiormq_props`).

pika (step workers): :class:`CoalescingConnection` holds the frames of a batch and writes them with
one ``send`` (``_output_marshaled_frames`` / ``_adapter_emit_data``, pika ≥ 1.0). pika (the trigger):
:func:`deadline` bounds a blocking wait on the broker by ending the connection as pika's own heartbeat
timeout does (``BlockingConnection._impl``, ``Connection._terminate_stream``, pika ≥ 1.0); without
them the wait is unbounded, as before, and :func:`private_api_problems` says so. pika (a quorum
trigger's poll, :func:`async_channel`): the channel under a ``BlockingChannel`` (``_impl``), to
publish a poll at once and count its confirms; without it each publish waits for its confirm.

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
from collections.abc import Iterator
from importlib import metadata
from typing import Any, Protocol, TypeGuard

import orjson
import pika
import pika.adapters.blocking_connection
import pika.channel
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
           "redelivered_props", "aiormq_props", "CoalescingConnection", "FastPublisher", "marshal_header",
           "supported", "private_api_problems", "deadline"]

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


def redelivered_props(props: pika.BasicProperties, headers: dict) -> pika.BasicProperties:
    """A message moved to a step's suspect queue, with ``headers`` replacing its own."""
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
