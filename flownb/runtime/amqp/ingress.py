"""Ingress of the RabbitMQ runtime: webhook requests (and any other pushed body) published persistent,
with publisher confirms, to the flow's exchange for its first action.

One connection and one confirm-mode channel per server. Concurrent requests publish without
waiting for each other (the frames are written in order, the broker confirms them in batches with
``multiple=true``), and each request answers only once its own confirm arrived:

- ack → 202; nack (the first queue is full: ``x-overflow: reject-publish``) → 429;
- returned as unroutable, connection lost before the confirm, or no connection → 503.

A lost connection is re-opened in the background with back-off; meanwhile requests get 503 at once.
A confirm that does not come within ``publish_timeout`` (a 503) makes the ingress probe the
connection (a passive ``queue.declare`` on a channel of its own); a probe not answered as long ends
the connection, which is then re-opened: a connection gone quiet while it stays open (the broker's
frames lost, the heartbeats it hears still sent) would otherwise answer every request 503, each
after ``publish_timeout``, until aiormq's heartbeat grace of 3 × (heartbeat + 1) s (183 s) ran out.
Sync replies come back on an exclusive, server-named queue whose name travels in the message
header :data:`~flownb.runtime.amqp.names.REPLY_TO_HEADER`; they are matched by trace id.
"""

from __future__ import annotations

import asyncio
import logging

import aiormq
from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic

from ...errors import BrokerError, MessageError
from ...flow import Flow
from ...message import Message
from ..ingress import Accepted, Backpressure, ReplyBook, Unavailable
from . import names
from .publish import FastPublisher, aiormq_props, supported

__all__ = ["AmqpIngest", "declare_topology"]

log = logging.getLogger("flownb.webhook.amqp")
_FAILURES = (BrokerError, aiormq.exceptions.AMQPError, ConnectionError, OSError, asyncio.TimeoutError, RuntimeError)


def _declare_with_runtime(url: str, flow: Flow) -> bool:
    """Declare the whole flow with the AMQP runtime's own (pika) code, so arguments always agree
    with the workers'; False when that module is not installed."""
    try:
        from . import topology
    except ImportError:
        return False
    conn = topology.connect(url, name=f"flownb-webhook-{flow.name}-declare")
    try:
        topology.declare_flow(conn.channel(), flow)
    finally:
        if conn.is_open:
            conn.close()
    return True


async def declare_topology(channel: aiormq.abc.AbstractChannel, flow: Flow, url: str) -> None:
    """Declare (idempotently) the flow's exchange and its first action's queue, bound by step name."""
    if await asyncio.to_thread(_declare_with_runtime, url, flow):
        return
    first = flow.steps[0].name
    await channel.exchange_declare(names.exchange(flow.name), exchange_type="direct", durable=True)
    queue = names.step_queue(flow.name, first)
    if not await _queue_exists(channel.connection, queue):
        # the workers declare it with their arguments (limits, dead-lettering); until they run, a plain
        # durable queue keeps accepted requests
        await channel.queue_declare(queue, durable=True)
    await channel.queue_bind(queue, names.exchange(flow.name), routing_key=first)


async def _queue_exists(connection: aiormq.abc.AbstractConnection, queue: str) -> bool:
    probe = await connection.channel()  # a failed passive declare closes its channel
    try:
        await probe.queue_declare(queue, passive=True)
        return True
    except aiormq.exceptions.ChannelNotFoundEntity:
        return False
    finally:
        if not probe.is_closed:
            await probe.close()


class AmqpIngest:
    """Publishes accepted requests to ``exchange(flow)`` with routing key = the first action's name."""

    def __init__(self, flow: Flow, url: str, *, publish_timeout: float = 10.0,
                 connect_timeout: float = 5.0, max_backoff: float = 5.0):
        if not flow.steps:
            raise MessageError(f"flow '{flow.name}' has no action after its webhook trigger; add a step")
        self.flow = flow.name
        self._spec = flow
        self._spec_hash = flow.spec_hash(short=True)  # meta.spec of every message it publishes
        self.url = url
        self.routing_key = flow.steps[0].name
        self.exchange = names.exchange(flow.name)
        self.publish_timeout = publish_timeout
        self.connect_timeout = connect_timeout
        self.max_backoff = max_backoff
        self._book = ReplyBook()
        self._conn: aiormq.abc.AbstractConnection | None = None
        self._channel: aiormq.abc.AbstractChannel | None = None
        self._reply_queue: str | None = None
        self._publisher: FastPublisher | None = None
        self._task: asyncio.Task | None = None
        self._connected = asyncio.Event()
        self._stopping = False
        self._probing: asyncio.Task | None = None  # checking a connection that let a confirm time out
        self.last_error: str = "not connected yet"

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        self._connected = asyncio.Event()
        self._task = asyncio.create_task(self._keep_connected(), name=f"flownb-webhook-amqp-{self.flow}")
        try:
            await asyncio.wait_for(self._connected.wait(), self.connect_timeout)
        except TimeoutError:
            log.warning("webhook %s: RabbitMQ not reachable yet (%s); answering 503 until it is",
                        self.flow, self.last_error)

    async def close(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._book.cancel_all()
        if self._probing is not None:
            self._probing.cancel()
            await asyncio.gather(self._probing, return_exceptions=True)
        await self._drop()

    def healthy(self) -> bool:
        return self._channel is not None and not self._channel.is_closed

    async def _drop(self) -> None:
        conn, self._conn, self._channel, self._reply_queue = self._conn, None, None, None
        if self._publisher is not None:
            self._publisher.close()
            self._publisher = None
        if conn is not None and not conn.is_closed:
            await asyncio.gather(conn.close(), return_exceptions=True)

    async def _connect(self) -> asyncio.Future:
        from . import topology
        *others, last = topology.broker_urls(self.url)  # the nodes of a cluster, in order
        for one in others:
            try:
                conn = await asyncio.wait_for(aiormq.connect(one), self.connect_timeout)
                break
            except _FAILURES:
                continue
        else:  # the last node's failure is the one reported
            conn = await asyncio.wait_for(aiormq.connect(last), self.connect_timeout)
        try:
            channel = await conn.channel(publisher_confirms=True, on_return_raises=True)
            await declare_topology(channel, self._spec, self.url)
            declared = await channel.queue_declare("", exclusive=True, auto_delete=True)
            reply_queue = declared.queue
            assert reply_queue is not None  # Queue.DeclareOk always names the queue (here server-named)
            await channel.basic_consume(reply_queue, self._on_reply, no_ack=True)
        except BaseException:
            await asyncio.gather(conn.close(), return_exceptions=True)
            raise
        self._conn, self._channel, self._reply_queue = conn, channel, reply_queue
        if supported(channel):
            self._publisher = FastPublisher(channel, self.exchange, self.routing_key, mandatory=True)
        return channel.closing

    async def _keep_connected(self) -> None:
        delay = 0.1
        while not self._stopping:
            try:
                closing = await self._connect()
            except _FAILURES as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("webhook %s: cannot reach RabbitMQ (%s); retrying in %.1fs",
                            self.flow, self.last_error, delay)
                await asyncio.sleep(delay)
                delay = min(self.max_backoff, delay * 2)
                continue
            delay = 0.1
            self._connected.set()
            log.info("webhook %s: connected to RabbitMQ, publishing to %s/%s", self.flow, self.exchange,
                     self.routing_key)
            try:
                await closing
            except BaseException as exc:  # the close reason; CancelledError on shutdown is re-raised
                if isinstance(exc, asyncio.CancelledError) and self._stopping:
                    raise
                self.last_error = f"{type(exc).__name__}: {exc}"
            self._connected.clear()
            log.warning("webhook %s: lost RabbitMQ (%s); reconnecting", self.flow, self.last_error)
            await self._drop()

    # -- publishing -------------------------------------------------------------------------
    async def _on_reply(self, delivered: DeliveredMessage) -> None:
        # async, as aiormq's consumer callbacks are typed (a plain function, which it also accepts,
        # runs in the same task wrapped by aiormq.tools.awaitable)
        try:
            msg = Message.from_json(delivered.body)
        except MessageError as exc:
            log.warning("webhook %s: ignoring an unreadable reply: %s", self.flow, exc)
            return
        props = delivered.header.properties
        self._book.resolve(msg.trace or props.correlation_id or "", msg.body)

    async def submit(self, body: dict, headers: dict[str, str], *, reply: bool) -> Accepted:
        channel, reply_queue = self._channel, self._reply_queue
        if channel is None or channel.is_closed:
            raise Unavailable(f"RabbitMQ is unreachable ({self.last_error})")
        assert reply_queue is not None  # set and cleared together with the channel
        msg_headers = dict(headers)
        if reply:
            msg_headers[names.REPLY_TO_HEADER] = reply_queue
        message = Message(body=body, headers=msg_headers, flow=self.flow, step=self._spec.trigger.name,
                          spec=self._spec_hash)
        payload = message.to_json()
        future = self._book.register(message.trace) if reply else None
        try:
            confirm = await self._publish(channel, payload, message, reply_queue if reply else None)
        except aiormq.exceptions.PublishError as exc:  # returned unroutable (a DeliveryError subclass: first)
            self._abandon(future)
            raise Unavailable(f"no queue is bound for step '{self.routing_key}' on '{self.exchange}'; "
                              f"start the flow's workers so the topology exists") from exc
        except aiormq.exceptions.DeliveryError as exc:
            self._abandon(future)
            raise Backpressure(f"queue '{names.step_queue(self.flow, self.routing_key)}' refused the "
                               f"message (full)") from exc
        except _FAILURES as exc:
            self._abandon(future)
            if isinstance(exc, TimeoutError):
                self._check(channel)
            raise Unavailable(f"RabbitMQ did not confirm the message ({type(exc).__name__}: {exc})") from exc
        if not isinstance(confirm, Basic.Ack):
            self._abandon(future)
            raise Backpressure(f"RabbitMQ answered {type(confirm).__name__} instead of an ack")
        return Accepted(message.id, future)

    async def _publish(self, channel, payload: bytes, message: Message, reply_to: str | None) -> object:
        """Publish persistent, mandatory, and wait for the confirm: with :class:`FastPublisher`, or
        aiormq's ``basic_publish`` when the channel lacks the internals it needs."""
        headers = {names.REPLY_TO_HEADER: reply_to} if reply_to else None
        publisher = self._publisher
        if publisher is None or publisher.channel is not channel:
            props = aiormq_props(message_id=message.id, correlation_id=message.trace, reply_to=reply_to,
                                 headers=headers)
            return await channel.basic_publish(
                payload, exchange=self.exchange, routing_key=self.routing_key, properties=props,
                mandatory=True, timeout=self.publish_timeout, wait=False)
        confirmation = publisher.publish(payload, message_id=message.id, correlation_id=message.trace,
                                         reply_to=reply_to, headers=headers)
        try:
            async with asyncio.timeout(self.publish_timeout):
                return await confirmation
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # this request is being cancelled
            # the channel closed and aiormq cancelled the confirmation: the message may be lost
            raise ConnectionError("the channel closed before the broker confirmed the message") from None
        except (aiormq.exceptions.DeliveryError, *_FAILURES):
            raise  # mapped by submit()
        except Exception as exc:  # whatever else a closing channel rejected the confirmation with
            raise ConnectionError(f"no confirm from the broker ({type(exc).__name__}: {exc})") from exc

    def _check(self, channel) -> None:
        """A confirm on ``channel`` timed out: probe its connection once (in the background)."""
        conn = self._conn
        if self._probing is not None or conn is None or channel is not self._channel or self._stopping:
            return
        self._probing = asyncio.get_running_loop().create_task(self._probe(conn),
                                                               name=f"flownb-webhook-probe-{self.flow}")

    async def _probe(self, conn: aiormq.abc.AbstractConnection) -> None:
        """End ``conn`` unless it answers a passive declare of the first queue within ``publish_timeout``."""
        try:
            try:
                async with asyncio.timeout(self.publish_timeout):
                    probe = await conn.channel()
                    try:
                        await probe.queue_declare(names.step_queue(self.flow, self.routing_key), passive=True)
                    finally:
                        await probe.close()
                return  # it answers: the broker is slow, not gone (the next confirms may come)
            except TimeoutError:
                pass
            except _FAILURES:
                return  # the connection failed by itself: _keep_connected sees it
            if conn is self._conn and not conn.is_closed:
                self.last_error = (f"no confirm and no answer to a probe from RabbitMQ within "
                                   f"{self.publish_timeout:g} s (the connection went quiet)")
                log.warning("webhook %s: %s; reconnecting", self.flow, self.last_error)
                await asyncio.gather(conn.close(ConnectionError(self.last_error)), return_exceptions=True)
        finally:
            self._probing = None

    @staticmethod
    def _abandon(future: asyncio.Future | None) -> None:
        if future is not None and not future.done():
            future.cancel()
