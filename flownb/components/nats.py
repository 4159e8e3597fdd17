"""``nats.subscribe`` (a polling trigger) and ``nats.publish`` (an action), on nats-py ≥ 2.6
(``pip install 'flownb[nats]'``).

Two modes, chosen with ``mode``:

* ``jetstream`` (the default) — **at-least-once**. The trigger reads through a durable pull
  consumer of a JetStream stream (created when missing, explicit acks). A poll fetches up to
  ``batch_size`` messages and writes their ack subjects (each message's reply subject, which any
  connection may use to acknowledge it) into the trigger's state; the runtime commits the messages
  with that state in one transaction, and the next poll — in this process or a restarted one —
  acknowledges the ack subjects of the *committed* state before fetching. When the committed state
  does not show the last batch (its commit failed), that batch is handed out again. A process
  killed before the commit acknowledged nothing: the server redelivers the messages after
  ``ack_wait``. ``nats.publish`` waits for JetStream's acknowledgement of each message (the stream
  stored it) and sets ``Nats-Msg-Id`` to the flownb message id, so a retry after a lost
  acknowledgement is dropped by the stream's duplicate window instead of stored twice.
* ``core`` — plain NATS subjects, **at-most-once**: the server keeps nothing for a subscriber that
  is not connected, and a message received but not yet committed when the process dies is lost.
  Use it only for data that may be lost (telemetry, cache invalidations).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import ssl
import time
import uuid
from collections.abc import Coroutine
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .._duration import Duration
from ..errors import ConfigError, FatalError, RetryableError
from . import _payload
from ._aio import LoopThread
from ._payload import as_body, encoded, shown
from .base import Action, Context, PollConfig, PollingTrigger
from .http import compile_check, fill

__all__ = ["NatsPublish", "NatsPublishConfig", "NatsSubscribe", "NatsSubscribeConfig"]

log = logging.getLogger(__name__)
T = TypeVar("T")

#: a core-mode poll stops collecting when no further message arrives within this many seconds
_GAP = 0.02


class _NatsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    host: str = Field("127.0.0.1", description="NATS server host name or address")
    port: int = Field(4222, ge=1, le=65535, description="NATS server port")
    username: str | None = Field(None, description="user name, when the server requires a login")
    password_env: str | None = Field(None, description="name of an environment variable holding the "
                                                       "password (needs 'username')")
    token_env: str | None = Field(None, description="name of an environment variable holding an "
                                                    "authentication token (instead of a user)")
    tls: bool = Field(False, description="connect with TLS, checking the server's certificate against the "
                                         "system's CAs")
    mode: Literal["jetstream", "core"] = Field(
        "jetstream", description="jetstream: at-least-once through a JetStream stream; core: plain "
        "subjects, at-most-once (nothing is kept while the flow is down)")
    timeout: Duration = Field(10.0, description="timeout of connecting and of each request, e.g. 10s")

    @model_validator(mode="after")
    def _password_needs_user(self):
        if self.password_env and not self.username:
            raise ValueError("'password_env' needs 'username'")
        if self.token_env and self.username:
            raise ValueError("give either 'token_env' or 'username' (with 'password_env'), not both")
        return self


def _nats():
    try:
        import nats
        import nats.errors
        import nats.js.errors
    except ImportError:  # pragma: no cover - the extra is not installed
        raise ConfigError("the NATS components need nats-py ≥ 2.6: pip install 'flownb[nats]'") from None
    return nats


def map_nats_error(exc: BaseException, where: str) -> Exception:
    """nats-py error → RetryableError (down, timeout, reconnecting) or FatalError (refused login, a
    stream or subject JetStream does not have, a bad request)."""
    nats = _nats()
    e, js = nats.errors, nats.js.errors
    if isinstance(exc, (e.AuthorizationError, e.InvalidUserCredentialsError)) or \
            "authorization" in str(exc).lower():
        return FatalError(f"{where} refused the login ({exc}); check 'username', 'password_env' and 'token_env'")
    if isinstance(exc, js.ServiceUnavailableError):
        return FatalError(f"{where} has no JetStream ({exc}); start nats-server with -js, or set mode: core "
                          f"(at-most-once)")
    if isinstance(exc, (e.NoRespondersError, js.NoStreamResponseError)):
        return FatalError(f"{where}: no JetStream stream stores this subject (no responders); create a "
                          f"stream for it (nats stream add), or set mode: core (at-most-once)")
    if isinstance(exc, js.NotFoundError):
        return FatalError(f"{where}: {exc.description or exc}; create the stream (nats stream add), or "
                          f"check 'stream' and 'subject'")
    if isinstance(exc, js.APIError):
        if exc.code is not None and exc.code >= 500:
            return RetryableError(f"{where}: JetStream error {exc.code} ({exc.description}); will retry")
        return FatalError(f"{where}: JetStream refused the request ({exc.description or exc}); fix the step's "
                          f"config")
    if isinstance(exc, (e.TimeoutError, asyncio.TimeoutError, TimeoutError, e.NoServersError,
                        e.ConnectionClosedError, e.ConnectionReconnectingError, e.StaleConnectionError,
                        e.ConnectionDrainingError, e.OutboundBufferLimitError, OSError)):
        return RetryableError(f"{where} is unavailable ({type(exc).__name__}: {exc}); will retry — is the "
                              f"server running and the host/port right?")
    if isinstance(exc, e.MaxPayloadError):
        return FatalError(f"{where}: the message is larger than the server's max_payload ({exc})")
    return FatalError(f"{where}: {type(exc).__name__}: {exc}; fix the step's config or the message")


class _Client:
    """A nats-py connection on an event loop of its own thread; ``call`` runs a coroutine there and
    waits for it."""

    def __init__(self, config: _NatsConfig, ctx: Context):
        nats = _nats()
        self.config = config
        self.where = f"NATS {config.host}:{config.port}"
        self._closing = False
        self._io = LoopThread(f"flownb-nats-{ctx.step}")
        kw: dict[str, Any] = {"servers": [f"{'tls' if config.tls else 'nats'}://{config.host}:{config.port}"],
                              "name": f"flownb-{ctx.flow}-{ctx.step}", "connect_timeout": config.timeout,
                              "allow_reconnect": True, "max_reconnect_attempts": -1, "reconnect_time_wait": 1,
                              "error_cb": self._on_error, "disconnected_cb": self._on_disconnect}
        if config.username:
            kw["user"] = config.username
            kw["password"] = ctx.secret(config.password_env) if config.password_env else None
        if config.token_env:
            kw["token"] = ctx.secret(config.token_env)
        if config.tls:
            kw["tls"] = ssl.create_default_context()
        self._refused: Exception | None = None
        fut = self._io.submit(nats.connect(**kw))
        try:
            deadline = time.monotonic() + config.timeout + 5
            while True:
                try:
                    self.nc = fut.result(0.05)
                    break
                except TimeoutError:
                    if self._refused is not None:  # a refused login is retried by nats-py: stop it here
                        raise self._refused from None
                    if time.monotonic() >= deadline:
                        raise
        except BaseException as exc:
            fut.cancel()
            self._stop_loop()
            if isinstance(exc, Exception):
                raise map_nats_error(exc, self.where) from None
            raise
        self.js = self.nc.jetstream(timeout=config.timeout)

    async def _on_error(self, exc: Exception) -> None:
        nats = _nats()
        if isinstance(exc, (nats.errors.AuthorizationError, nats.errors.InvalidUserCredentialsError)) or \
                "authorization" in str(exc).lower():
            self._refused = exc
        log.warning("%s: %s: %s", self.where, type(exc).__name__, exc)

    async def _on_disconnect(self) -> None:
        if not self._closing:
            log.warning("%s: disconnected; reconnecting", self.where)

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return self._io.call(coro, timeout if timeout is not None else self.config.timeout + 5)

    @property
    def connected(self) -> bool:
        return bool(self.nc.is_connected)

    def close(self) -> None:
        self._closing = True
        try:
            if not self.nc.is_closed:
                self.call(self.nc.close(), 10)
        except Exception as exc:  # closing a broken connection: nothing left to release but the loop
            log.debug("%s: close: %s", self.where, exc)
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._io.stop()


def _body(data: bytes, subject: str, headers: dict | None, fmt: str, envelope: bool) -> dict:
    def wrap(payload: Any) -> dict:
        return {"subject": subject, "payload": payload, "headers": dict(headers or {})}
    return as_body(data, fmt, ("_subject", subject), "subjects", wrap if envelope else None)


def _check_subject(subject: str, step, field: str, *, wildcards: bool) -> None:
    tokens = subject.split(".")
    bad = not subject or any(c in subject for c in " \t\r\n\0") or any(not t for t in tokens)
    if not bad and wildcards:
        bad = any(("*" in t and t != "*") or (">" in t and (t != ">" or i != len(tokens) - 1))
                  for i, t in enumerate(tokens))
    elif not bad:
        bad = any(t in ("*", ">") for t in tokens)
    if bad:
        what = "a subject filter ('*' a whole token, '>' the whole last token), e.g. orders.*.created" \
            if wildcards else "a subject without wildcards ('*', '>'), e.g. orders.created"
        raise ConfigError(f"{subject!r} is not {what}", step=step.name, field=f"config.{field}")


# -- nats.subscribe -------------------------------------------------------------------------------

class NatsSubscribeConfig(PollConfig, _NatsConfig):
    subject: str = Field(description="subject to read; '*' and '>' are wildcards, e.g. orders.>")
    stream: str | None = Field(None, description="jetstream: the stream holding the subject (default: the "
                                                 "stream whose subjects cover it)")
    durable: str | None = Field(None, description="jetstream: name of the durable consumer (default: "
                                                  "flownb-<flow>-<step>); created when missing")
    start: Literal["new", "all"] = Field("new", description="jetstream: where a newly created consumer "
                                                            "starts: new (messages from now on) or all")
    ack_wait: Duration = Field(30.0, description="jetstream: a newly created consumer redelivers a message "
                                                 "not acknowledged within this long (a killed process's "
                                                 "batch), e.g. 30s; keep it above a poll and its commit")
    queue_group: str | None = Field(None, description="core: a queue group, so replicas share the subject's "
                                                      "messages instead of each getting all")
    format: _payload.PayloadFormat = _payload.format_field()
    envelope: bool = Field(False, description="emit {subject, payload, headers} instead of the payload alone")
    batch_size: int = Field(256, ge=1, le=10000, description="messages handed out per poll at most")
    wait: Duration = _payload.wait_field()
    interval: Duration = _payload.idle_interval_field()


class NatsSubscribe(PollingTrigger[NatsSubscribeConfig]):
    """Messages of a NATS subject: JetStream acknowledged once durable in the flow, or core at-most-once."""

    Config = NatsSubscribeConfig

    @classmethod
    def check_config(cls, config, step) -> None:
        _check_subject(config.subject, step, "subject", wildcards=True)
        if config.mode == "core" and (config.stream or config.durable):
            raise ConfigError("'stream' and 'durable' are JetStream settings; remove them or set mode: jetstream",
                              step=step.name, field="config.mode")

    def setup(self) -> None:
        nats = _nats()
        cfg = self.config
        self.where = f"NATS {cfg.host}:{cfg.port} subject '{cfg.subject}'"
        self._more = False
        #: the last poll's batch, not yet known durable: (ack subjects, messages)
        self._pending: tuple[list[str], list] | None = None
        self.client = _Client(cfg, self.ctx)
        try:
            if cfg.mode == "core":
                self._inbox: queue.SimpleQueue = queue.SimpleQueue()

                async def on_msg(msg) -> None:
                    self._inbox.put(msg)
                self.sub = self.client.call(self.client.nc.subscribe(cfg.subject, queue=cfg.queue_group or "",
                                                                     cb=on_msg))
                self.client.call(self.client.nc.flush(cfg.timeout))
                log.warning("nats.subscribe '%s': core mode is at-most-once: messages published while the "
                            "flow is down, or received and not yet committed when it dies, are lost",
                            self.ctx.step)
            else:
                from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
                durable = cfg.durable or f"flownb-{self.ctx.flow}-{self.ctx.step}"
                self.durable = "".join(c if c.isalnum() or c in "-_" else "_" for c in durable)
                consumer = ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=cfg.ack_wait,
                                          max_ack_pending=max(1000, 2 * cfg.batch_size),
                                          deliver_policy=DeliverPolicy.NEW if cfg.start == "new" else DeliverPolicy.ALL)
                self.sub = self.client.call(self.client.js.pull_subscribe(
                    cfg.subject, durable=self.durable, stream=cfg.stream, config=consumer))
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            self.client.close()
            raise map_nats_error(exc, self.where) from None
        except BaseException:
            self.client.close()
            raise

    def close(self) -> None:
        client = getattr(self, "client", None)
        if client is not None:
            client.close()  # unacknowledged JetStream messages are redelivered after ack_wait

    def next_delay(self, state: dict) -> float:
        return 0.0 if getattr(self, "_more", False) else self.interval

    def poll(self, state: dict, ctx: Context) -> list[dict]:
        nats = _nats()
        try:
            if self.config.mode == "core":
                return self._poll_core()
            return self._poll_jetstream(state)
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            raise map_nats_error(exc, self.where) from None

    def _poll_core(self) -> list[dict]:
        cfg = self.config
        taken: list = []
        deadline = time.monotonic() + cfg.wait
        while len(taken) < cfg.batch_size:
            try:
                timeout = max(0.0, deadline - time.monotonic()) if not taken else _GAP
                taken.append(self._inbox.get(timeout=timeout))
            except queue.Empty:
                break
        self._more = bool(taken)
        return [_body(m.data, m.subject, m.headers, cfg.format, cfg.envelope) for m in taken]

    def _poll_jetstream(self, state: dict) -> list[dict]:
        nats = _nats()
        cfg, client = self.config, self.client
        committed = list(state.get("acks") or [])
        pending, self._pending = self._pending, None
        if pending is not None and pending[0] != committed:  # the last batch was not committed: again
            msgs = pending[1]
            log.warning("nats.subscribe '%s': the last %d message(s) were not committed; handing them out "
                        "again", self.ctx.step, len(msgs))
        else:
            if committed:  # durable in the flow: acknowledge (again after a restart: harmless)
                async def ack_all() -> None:
                    for subject in committed:
                        await client.nc.publish(subject, b"+ACK")
                    await client.nc.flush(cfg.timeout)
                client.call(ack_all())
            if not client.connected:
                raise RetryableError(f"{self.where}: not connected (reconnecting); will retry")

            async def fetch() -> list:
                try:
                    return await self.sub.fetch(cfg.batch_size, timeout=cfg.wait)
                except (TimeoutError, nats.errors.TimeoutError):  # nothing arrived within `wait`
                    return []
            msgs = client.call(fetch(), cfg.wait + cfg.timeout)
        acks = [m.reply for m in msgs]
        state["acks"] = acks
        self._more = bool(msgs)
        if msgs:
            self._pending = (acks, msgs)
        return [_body(m.data, m.subject, m.headers, cfg.format, cfg.envelope) for m in msgs]


# -- nats.publish ---------------------------------------------------------------------------------

class NatsPublishConfig(_NatsConfig):
    subject: str = Field(description="subject to publish to; '{field}' placeholders are filled from the "
                                     "message body, e.g. orders.{region}.created")
    payload: str | None = Field(None, description="JSONata expression for the payload; default: the "
                                                  "message body")
    format: Literal["json", "text"] = Field("json", description="json: the payload as JSON; text: a "
                                                                "string payload as it is (other values as JSON)")
    dedup: bool = Field(True, description="jetstream: send the message id as Nats-Msg-Id, so the stream "
                                          "drops a retried duplicate within its duplicate window")
    ack_field: str | None = Field(None, description="jetstream: add {stream, seq, duplicate} of the "
                                                    "acknowledgement to the output body under this field")


class NatsPublish(Action[NatsPublishConfig]):
    """Publish each message to a NATS subject (JetStream: stored by the stream before passing on)."""

    Config = NatsPublishConfig
    effects: ClassVar[bool] = True

    @classmethod
    def check_config(cls, config, step) -> None:
        if "{" not in config.subject:
            _check_subject(config.subject, step, "subject", wildcards=False)
        compile_check(config.payload, step, "payload")

    def setup(self) -> None:
        self._compile()
        self.client = _Client(self.config, self.ctx)
        self.where = self.client.where

    def close(self) -> None:
        client = getattr(self, "client", None)
        if client is not None:
            client.close()

    def _compile(self) -> None:
        self._payload = _payload.payload_expr(self.config.payload, self.ctx.step, "config.payload")

    def _render(self, body: dict) -> tuple[str, bytes]:
        subject = fill(self.config.subject, body)
        tokens = subject.split(".")
        if any(not t or t in ("*", ">") for t in tokens) or any(c in subject for c in " \t\r\n\0"):
            raise FatalError(f"subject {subject!r} (from {self.config.subject!r}) is not a NATS subject "
                             f"(empty token, wildcard or space); fix the field it was filled from")
        value = self._payload(body) if self._payload is not None else body
        return subject, encoded(value, self.config.format)

    def dry_run(self, message, ctx: Context) -> dict:
        """What it would publish, rendered and checked as a live publish is (no connection)."""
        if not hasattr(self, "_payload"):
            self._compile()
        subject, payload = self._render(message.body)
        value = shown(payload, self.config.format)
        return {"host": self.config.host, "port": self.config.port, "mode": self.config.mode,
                "subject": subject, "payload": value}

    def process(self, message, ctx: Context):
        out = self.process_batch([message], ctx)[0]
        if isinstance(out, BaseException):
            raise out
        return out

    def process_batch(self, messages, ctx: Context) -> list:
        nats = _nats()
        cfg, client = self.config, self.client
        results: list = []
        rendered: list[tuple[int, str, bytes, str]] = []
        for n, m in enumerate(messages):
            try:
                subject, payload = self._render(m.body)
            except Exception as exc:  # FatalError, or the expression's EvaluationError: this message only
                results.append(exc)
                continue
            rendered.append((n, subject, payload, m.id or uuid.uuid4().hex))
            results.append(None)
        if not rendered:
            return results

        async def send_core() -> None:
            for _n, subject, payload, _id in rendered:
                await client.nc.publish(subject, payload)
            await client.nc.flush(cfg.timeout)

        async def send_js() -> list:
            return await asyncio.gather(*(client.js.publish(subject, payload, timeout=cfg.timeout,
                                                            headers={"Nats-Msg-Id": mid} if cfg.dedup else None)
                                          for _n, subject, payload, mid in rendered), return_exceptions=True)
        try:
            if cfg.mode == "core":
                client.call(send_core())
                replies: list = [None] * len(rendered)
            else:
                replies = client.call(send_js(), cfg.timeout + 5)
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            err = map_nats_error(exc, self.where)
            for n, *_ in rendered:
                results[n] = err
            return results
        for (n, subject, _p, _id), reply in zip(rendered, replies, strict=True):
            if isinstance(reply, BaseException):
                results[n] = map_nats_error(reply, f"{self.where} subject '{subject}'")
                continue
            body = messages[n].body
            if cfg.ack_field and reply is not None:
                body = {**body, cfg.ack_field: {"stream": reply.stream, "seq": reply.seq,
                                                "duplicate": bool(reply.duplicate)}}
            results[n] = body
        return results
