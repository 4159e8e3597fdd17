"""``amqp.consume`` (a polling trigger) and ``amqp.publish`` (an action) for your own RabbitMQ (AMQP
0-9-1) queues and exchanges, on pika and aiormq (core dependencies). flownb's own topology (``flownb.*``) is
off limits to them: the runtimes own it.

Delivery of ``amqp.consume`` is **at-least-once**, and nothing is acknowledged before it is durable
in the flow's own queue:

* the trigger consumes the queue with manual acknowledgements and a prefetch of ``batch_size``: a
  message the broker delivered stays unacknowledged (and counted against the prefetch) until the
  trigger acknowledges it, and the broker requeues every unacknowledged message when the
  connection closes — however it closes, a killed process included;
* a poll hands out the messages delivered so far and writes a batch token into the trigger's
  state; the runtime commits the messages with that state in one transaction. The next poll
  receives the *committed* state: when it carries the token, the batch is durable and acknowledged
  (one ``basic.ack`` with ``multiple``); when it does not (the commit failed), the same messages are
  handed out again under a new token;
* delivery tags belong to one channel, so a lost connection forgets them: the broker requeues that
  batch and delivers it again (``redelivered``) — duplicates, never losses.

``amqp.publish`` publishes with publisher confirms, ``mandatory`` by default: the step passes a
message on only once the broker confirmed it, and a message no queue is bound for is returned and
dead-lettered instead of silently dropped. It publishes a whole batch before waiting for the
confirms (aiormq on an event loop of the step's own, as the webhook ingress), so a batch costs one
round trip, not one per message.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from .._duration import Duration
from ..errors import ConfigError, FatalError, RetryableError
from . import _payload
from ._aio import LoopThread
from ._payload import as_body, encoded, shown
from .base import Action, Context, PollConfig, PollingTrigger
from .http import compile_check, fill

__all__ = ["AmqpConsume", "AmqpConsumeConfig", "AmqpPublish", "AmqpPublishConfig"]

log = logging.getLogger(__name__)

#: a poll stops collecting when no further message arrives within this many seconds
_GAP = 0.02
_RESERVED = "flownb."


class _AmqpConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url_env: str | None = Field(None, description="name of an environment variable holding the broker URL, "
                                                  "amqp[s]://user:password@host:port/vhost (instead of the "
                                                  "fields below)")
    host: str = Field("127.0.0.1", description="broker host name or address")
    port: int = Field(5672, ge=1, le=65535, description="broker port (5672; usually 5671 with tls)")
    vhost: str = Field("/", description="virtual host")
    username: str = Field("guest", description="user name")
    password_env: str | None = Field(None, description="name of an environment variable holding the "
                                                       "password (none: 'guest', RabbitMQ's default user, "
                                                       "which it accepts only on loopback)")
    tls: bool = Field(False, description="connect with TLS, checking the broker's certificate")
    heartbeat: int = Field(30, ge=0, le=3600, description="seconds between heartbeats (0: none)")
    timeout: Duration = Field(10.0, description="timeout of connecting and of the confirms of a batch, e.g. 10s")


def _pika():
    import pika
    import pika.exceptions
    return pika


def _params(config: _AmqpConfig, ctx: Context):
    pika = _pika()
    if config.url_env:
        params = pika.URLParameters(ctx.secret(config.url_env))
        params.socket_timeout = params.blocked_connection_timeout = config.timeout
        return params, f"AMQP broker {params.host}:{params.port}{params.virtual_host}"
    password = ctx.secret(config.password_env) if config.password_env else "guest"
    ssl_options = None
    if config.tls:
        import ssl
        ssl_options = pika.SSLOptions(ssl.create_default_context(), config.host)
    params = pika.ConnectionParameters(
        host=config.host, port=config.port, virtual_host=config.vhost,
        credentials=pika.PlainCredentials(config.username, password), heartbeat=config.heartbeat,
        socket_timeout=config.timeout, blocked_connection_timeout=config.timeout, ssl_options=ssl_options,
        client_properties={"connection_name": f"flownb-{ctx.flow}-{ctx.step}"}, connection_attempts=1)
    return params, f"AMQP broker {config.host}:{config.port}{config.vhost if config.vhost != '/' else ''}"


def map_amqp_error(exc: BaseException, where: str) -> Exception:
    """pika error → RetryableError (down, connection lost, timeout) or FatalError (refused login or
    vhost, a queue or exchange that does not exist or is not allowed)."""
    pika = _pika()
    e = pika.exceptions
    if isinstance(exc, (e.ProbableAuthenticationError, e.AuthenticationError, e.ProbableAccessDeniedError)):
        return FatalError(f"{where} refused the login or the virtual host ({type(exc).__name__}: {exc}); check "
                          f"'username', 'password_env', 'vhost' (or the URL in 'url_env')")
    if isinstance(exc, e.ChannelClosedByBroker):
        if exc.reply_code == 404:
            return FatalError(f"{where}: {exc.reply_text}; create it first, or check the name")
        if exc.reply_code == 403:
            return FatalError(f"{where}: access refused ({exc.reply_text}); grant the user the permission")
        if exc.reply_code == 406:
            return FatalError(f"{where}: {exc.reply_text}; the existing queue or exchange was declared "
                              f"differently")
        return RetryableError(f"{where}: the broker closed the channel ({exc.reply_code} {exc.reply_text}); "
                              f"will retry")
    if isinstance(exc, (e.AMQPConnectionError, e.ConnectionClosed, e.StreamLostError, e.ChannelWrongStateError,
                        e.ChannelClosed, OSError, TimeoutError)):
        return RetryableError(f"{where} is unavailable ({type(exc).__name__}: {exc}); will retry — is the "
                              f"broker running and the host/port right?")
    return FatalError(f"{where}: {type(exc).__name__}: {exc}; fix the step's config or the message")


def _aiormq_url(config: _AmqpConfig, ctx: Context) -> str:
    """The broker URL for aiormq (amqp.publish): ``url_env``'s, or one built from the fields."""
    if config.url_env:
        return ctx.secret(config.url_env)
    from yarl import URL
    password = ctx.secret(config.password_env) if config.password_env else "guest"
    vhost = "" if config.vhost == "/" else config.vhost.replace("/", "%2F")
    return str(URL.build(scheme="amqps" if config.tls else "amqp", user=config.username, password=password,
                         host=config.host, port=config.port, path="/" + vhost, encoded=False,
                         query={"heartbeat": str(config.heartbeat)}))


def map_aiormq_error(exc: BaseException, where: str) -> Exception:
    """aiormq error (amqp.publish) → the same RetryableError / FatalError as map_amqp_error."""
    from aiormq import exceptions as e
    if isinstance(exc, (e.AuthenticationError, e.ProbableAuthenticationError, e.ConnectionNotAllowed)):
        return FatalError(f"{where} refused the login or the virtual host ({type(exc).__name__}: {exc}); check "
                          f"'username', 'password_env', 'vhost' (or the URL in 'url_env')")
    if isinstance(exc, e.ChannelNotFoundEntity):
        return FatalError(f"{where}: {exc}; create it first, or check the name")
    if isinstance(exc, e.ChannelAccessRefused):
        return FatalError(f"{where}: access refused ({exc}); grant the user the permission")
    if isinstance(exc, e.ChannelPreconditionFailed):
        return FatalError(f"{where}: {exc}; the existing queue or exchange was declared differently")
    if isinstance(exc, (e.AMQPConnectionError, e.AMQPChannelError, e.ChannelInvalidStateError, OSError,
                        TimeoutError, asyncio.TimeoutError, asyncio.CancelledError)):
        return RetryableError(f"{where} is unavailable or did not confirm in time ({type(exc).__name__}: {exc}); "
                              f"will retry — is the broker running and the host/port right?")
    return FatalError(f"{where}: {type(exc).__name__}: {exc}; fix the step's config or the message")


def _check_name(name: str, what: str, step, field: str) -> None:
    if name.startswith(_RESERVED) or name.startswith("amq."):
        raise ConfigError(f"{what} {name!r} belongs to {'flownb' if name.startswith(_RESERVED) else 'RabbitMQ'}'s "
                          f"own topology; use a {what} of your own (names starting 'flownb.' or 'amq.' are "
                          f"reserved)", step=step.name, field=field)


def _body(data: bytes, props, routing_key: str, redelivered: bool, fmt: str, envelope: bool) -> dict:
    def wrap(payload: Any) -> dict:
        return {"routing_key": routing_key, "payload": payload, "headers": dict(props.headers or {}),
                "message_id": props.message_id, "redelivered": redelivered}
    return as_body(data, fmt, ("_routing_key", routing_key), "messages", wrap if envelope else None)


# -- amqp.consume ---------------------------------------------------------------------------------

class AmqpConsumeConfig(PollConfig, _AmqpConfig):
    queue: str = Field(description="your queue to consume (not one of flownb's own)")
    declare: bool = Field(False, description="declare the queue (durable) when it does not exist; default: "
                                             "it must exist")
    format: _payload.PayloadFormat = _payload.format_field()
    envelope: bool = Field(False, description="emit {routing_key, payload, headers, message_id, redelivered} "
                                              "instead of the payload alone")
    batch_size: int = Field(500, ge=1, le=10000, description="messages handed out per poll at most (also "
                                                             "the consumer's prefetch)")
    wait: Duration = _payload.wait_field()
    interval: Duration = _payload.idle_interval_field()


class AmqpConsume(PollingTrigger[AmqpConsumeConfig]):
    """Messages of your own RabbitMQ queue, acknowledged once they are durable in the flow."""

    Config = AmqpConsumeConfig

    @classmethod
    def check_config(cls, config, step) -> None:
        if not config.queue.strip():
            raise ConfigError("'queue' is empty; name your queue", step=step.name, field="config.queue")
        _check_name(config.queue, "queue", step, "config.queue")

    def setup(self) -> None:
        self.params, where = _params(self.config, self.ctx)
        self.where = f"{where} queue '{self.config.queue}'"
        self._session = uuid.uuid4().hex[:12]
        self._seq = 0
        self._more = False
        self._inbox: list = []
        #: the batch handed out by the last poll and not yet known durable: (token, channel, deliveries)
        self._pending: tuple[str, Any, list] | None = None
        self.conn: Any = None
        self.channel: Any = None
        self._open()

    def _open(self) -> None:
        pika = _pika()
        self._inbox = []
        try:
            self.conn = pika.BlockingConnection(self.params)
            ch = self.conn.channel()
            if self.config.declare:
                ch.queue_declare(self.config.queue, durable=True)
            else:
                ch.queue_declare(self.config.queue, passive=True)
            ch.basic_qos(prefetch_count=self.config.batch_size)
            ch.basic_consume(self.config.queue, self._on_message, auto_ack=False)
            self.channel = ch
        except Exception as exc:
            self._drop()
            raise map_amqp_error(exc, self.where) from None

    def _on_message(self, ch, method, props, body: bytes) -> None:
        self._inbox.append((method, props, body))

    def _drop(self) -> None:
        conn, self.conn, self.channel = self.conn, None, None
        if conn is not None and conn.is_open:
            try:
                conn.close()  # unacknowledged messages return to the queue
            except Exception as exc:
                log.debug("%s: close: %s", self.where, exc)

    def close(self) -> None:
        if getattr(self, "conn", None) is not None:
            self._drop()

    def next_delay(self, state: dict) -> float:
        return 0.0 if getattr(self, "_more", False) else self.interval

    def poll(self, state: dict, ctx: Context) -> list[dict]:
        try:
            return self._poll(state)
        except (RetryableError, FatalError):
            raise
        except Exception as exc:
            self._pending = None
            self._drop()  # the broker requeues what this connection had not acknowledged
            raise map_amqp_error(exc, self.where) from None

    def _poll(self, state: dict) -> list[dict]:
        if self.channel is None or not self.channel.is_open:
            self._pending = None  # its delivery tags died with the channel: the broker requeued them
            self._drop()
            self._open()
        ch, conn, cfg = self.channel, self.conn, self.config
        assert ch is not None and conn is not None
        carry: list = []
        pending, self._pending = self._pending, None
        if pending is not None and pending[1] is ch:
            token, _ch, deliveries = pending
            if state.get("batch") == token:  # durable in the flow: acknowledge the whole batch at once
                ch.basic_ack(deliveries[-1][0].delivery_tag, multiple=True)
            else:
                log.warning("amqp.consume '%s': the last %d message(s) were not committed; handing them out "
                            "again", self.ctx.step, len(deliveries))
                carry = deliveries
        deadline = time.monotonic() + cfg.wait
        taken = list(carry)
        while len(taken) < cfg.batch_size:
            if self._inbox:
                room = cfg.batch_size - len(taken)
                taken += self._inbox[:room]
                del self._inbox[:room]
            elif taken:  # more while they keep coming (a gap of 20 ms ends the batch)
                conn.process_data_events(time_limit=_GAP)
                if not self._inbox:
                    break
            else:  # the first message: up to `wait`
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                conn.process_data_events(time_limit=remaining)
        self._more = bool(taken)
        if not taken:
            return []
        self._seq += 1
        token = f"{self._session}:{self._seq}"
        state["batch"] = token
        self._pending = (token, ch, taken)
        return [_body(body, props, method.routing_key, method.redelivered, cfg.format, cfg.envelope)
                for method, props, body in taken]


# -- amqp.publish ---------------------------------------------------------------------------------

class AmqpPublishConfig(_AmqpConfig):
    exchange: str = Field("", description="your exchange to publish to (default: the default exchange, "
                                          "which routes to the queue named by the routing key)")
    routing_key: str = Field(description="routing key; '{field}' placeholders are filled from the message "
                                         "body, e.g. orders.{region}")
    payload: str | None = Field(None, description="JSONata expression for the payload; default: the "
                                                  "message body")
    format: Literal["json", "text"] = Field("json", description="json: the payload as JSON (content type "
                                                                "application/json); text: a string payload as "
                                                                "it is (text/plain)")
    persistent: bool = Field(True, description="delivery mode 2: the broker writes the message to disk in a "
                                               "durable queue")
    mandatory: bool = Field(True, description="a message no queue is bound for is returned by the broker and "
                                              "dead-lettered (false: the broker drops it)")


class AmqpPublish(Action[AmqpPublishConfig]):
    """Publish each message to your own RabbitMQ exchange or queue, confirmed by the broker."""

    Config = AmqpPublishConfig
    effects: ClassVar[bool] = True

    @classmethod
    def check_config(cls, config, step) -> None:
        if config.exchange:
            _check_name(config.exchange, "exchange", step, "config.exchange")
        elif "{" not in config.routing_key:  # the default exchange: the routing key is a queue name
            _check_name(config.routing_key, "queue", step, "config.routing_key")
        compile_check(config.payload, step, "payload")

    def setup(self) -> None:
        self._compile()
        self.where = _params(self.config, self.ctx)[1]
        self._url = _aiormq_url(self.config, self.ctx)
        self.conn: Any = None
        self.channel: Any = None
        self._io = LoopThread(f"flownb-amqp-{self.ctx.step}")
        try:
            self._io.call(self._open(), self.config.timeout + 5)
        except BaseException as exc:
            self._io.stop()
            if isinstance(exc, Exception):
                raise self._error(exc) from None
            raise

    async def _open(self) -> None:
        """A connection and a channel in confirm mode (returned messages raise); the exchange must
        exist."""
        import aiormq
        await self._drop()
        conn = await asyncio.wait_for(
            aiormq.connect(self._url, client_properties={"connection_name": f"flownb-{self.ctx.flow}-{self.ctx.step}"}),
            self.config.timeout)
        try:
            ch = await conn.channel(publisher_confirms=True, on_return_raises=True)
            if self.config.exchange:
                await ch.exchange_declare(self.config.exchange, passive=True)
        except BaseException:
            await asyncio.gather(conn.close(), return_exceptions=True)
            raise
        self.conn, self.channel = conn, ch

    async def _drop(self) -> None:
        conn, self.conn, self.channel = self.conn, None, None
        if conn is not None and not conn.is_closed:
            await asyncio.gather(conn.close(), return_exceptions=True)

    def _forget(self) -> None:
        """Drop the connection (the next batch opens a new one); closing a broken connection may
        fail or not answer: nothing is left to release then, so that is not an error."""
        try:
            self._io.call(self._drop(), 10)
        except Exception as exc:
            log.debug("%s: close: %s", self.where, exc)

    def close(self) -> None:
        if getattr(self, "_io", None) is None:
            return
        try:
            self._forget()
        finally:
            self._io.stop()

    def _error(self, exc: BaseException) -> Exception:
        what = f"{self.where} exchange '{self.config.exchange}'" if self.config.exchange else self.where
        return map_aiormq_error(exc, what)

    def _compile(self) -> None:
        self._payload = _payload.payload_expr(self.config.payload, self.ctx.step, "config.payload")

    def _render(self, body: dict) -> tuple[str, bytes, str]:
        key = fill(self.config.routing_key, body)
        if not self.config.exchange and key.startswith((_RESERVED, "amq.")):
            raise FatalError(f"routing key {key!r} names a reserved queue (flownb.* or amq.*); fix the field "
                             f"it was filled from")
        if len(key.encode()) > 255:
            raise FatalError(f"routing key {key[:60]!r}… is longer than 255 bytes")
        value = self._payload(body) if self._payload is not None else body
        text = self.config.format == "text" and isinstance(value, str)
        return key, encoded(value, self.config.format), "text/plain" if text else "application/json"

    def dry_run(self, message, ctx: Context) -> dict:
        """What it would publish, rendered and checked as a live publish is (no connection)."""
        if not hasattr(self, "_payload"):
            self._compile()
        key, payload, _ctype = self._render(message.body)
        value = shown(payload, self.config.format)
        return {"exchange": self.config.exchange, "routing_key": key, "payload": value,
                "persistent": self.config.persistent}

    def process(self, message, ctx: Context):
        out = self.process_batch([message], ctx)[0]
        if isinstance(out, BaseException):
            raise out
        return out

    def process_batch(self, messages, ctx: Context) -> list:
        """Render every message, publish the batch at once and wait for the broker's confirms of
        all of it (one round trip, not one per message): a confirmed message passes on, a returned
        one (no queue bound) is dead-lettered alone, a refused one (``basic.nack``) is retried; a
        lost connection or no confirm within ``timeout`` retries the rest of the batch."""
        results: list = [None] * len(messages)
        items: list[tuple[int, str, bytes, str]] = []
        for n, m in enumerate(messages):
            try:
                key, payload, ctype = self._render(m.body)
            except Exception as exc:  # FatalError, or the expression's EvaluationError: this message only
                results[n] = exc
                continue
            items.append((n, key, payload, ctype))
        if not items:
            return results
        try:
            outs = self._io.call(self._publish(messages, items), self.config.timeout + 5)
        except Exception as exc:  # no connection, or no confirm in time: the batch again later
            err = self._error(exc)
            self._forget()
            outs = [err] * len(items)
        for (n, *_sent), out in zip(items, outs, strict=True):
            results[n] = messages[n].body if out is None else out
        return results

    async def _publish(self, messages: list, items: list[tuple[int, str, bytes, str]]) -> list:
        """Each item's error (None: confirmed)."""
        from aiormq import spec
        from aiormq.exceptions import DeliveryError, PublishError
        if self.channel is None or self.channel.is_closed:
            await self._open()
        ch, cfg = self.channel, self.config
        mode = 2 if cfg.persistent else 1
        sends = [ch.basic_publish(payload, exchange=cfg.exchange, routing_key=key, mandatory=cfg.mandatory,
                                  properties=spec.Basic.Properties(content_type=ctype, delivery_mode=mode,
                                                                   message_id=messages[n].id))
                 for n, key, payload, ctype in items]
        done = await asyncio.wait_for(asyncio.gather(*sends, return_exceptions=True), cfg.timeout)
        out: list = []
        for (_n, key, *_sent), r in zip(items, done, strict=True):
            if isinstance(r, PublishError):
                out.append(FatalError(f"{self.where}: no queue is bound for routing key {key!r} on exchange "
                                      f"{cfg.exchange or '(default)'!r}; the broker returned the message — "
                                      f"bind a queue, or set mandatory: false to let it drop"))
            elif isinstance(r, DeliveryError):
                out.append(RetryableError(f"{self.where} refused the message (basic.nack); will retry"))
            elif isinstance(r, BaseException):
                out.append(self._error(r))
            else:
                out.append(None)
        if any(isinstance(e, RetryableError) and not isinstance(r, DeliveryError)
               for e, r in zip(out, done, strict=True)):
            await self._drop()  # the channel or connection broke: a new one for the next batch
        return out
