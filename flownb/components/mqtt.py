"""``mqtt.subscribe`` (a polling trigger) and ``mqtt.publish`` (an action), on paho-mqtt ≥ 2
(``pip install 'flownb[mqtt]'``).

Delivery of ``mqtt.subscribe`` is **at-least-once**, and nothing is acknowledged to the broker before
it is durable in the flow's own queue:

* the client keeps a persistent session (MQTT 3.1.1 ``clean_session=False`` with a fixed client id),
  subscribes with QoS 1 and acknowledges by hand (paho ``manual_ack=True``): a message the broker
  delivered stays unacknowledged, and the broker sends it again to the next connection of that
  client id, until a PUBACK is sent;
* a poll hands out the messages received so far and writes a batch token (``{"batch": "…"}``) into
  the trigger's state; the runtime commits the messages and that state in one transaction (SQLite,
  or one AMQP transaction on RabbitMQ). The next poll receives the *committed* state: when it
  carries the token, the previous batch is durable and its messages are acknowledged (PUBACK, in
  the order received); when it does not (the commit failed, e.g. on a full disk, or back-pressure
  skipped it), the same messages are handed out again under a new token;
* a process killed before the commit acknowledged nothing: the broker redelivers the messages to
  the restarted trigger. A process killed after the commit but before the next poll's PUBACKs gets
  them again too (duplicates, never losses); so does a connection lost in that window (the broker
  resends unacknowledged messages on reconnect, marked DUP).

Limits: the broker queues messages for the session only after the subscription exists (the first
start subscribes; messages published earlier are not kept), and only as long as the broker keeps
the session (Mosquitto: ``persistence true`` to survive its restart, ``persistent_client_expiration``
to drop abandoned sessions), and only up to its queue limit (Mosquitto drops what exceeds
``max_queued_messages``, default 1000). A broker sends at most ``max_inflight_messages`` (Mosquitto: 20)
unacknowledged messages per client, so one poll hands out at most that many; a poll that emitted
messages is followed at once by the next, which acknowledges them and frees the window.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .._duration import Duration
from ..errors import ConfigError, FatalError, RetryableError
from . import _payload
from ._payload import as_body, encoded, shown
from .base import Action, Context, PollConfig, PollingTrigger
from .http import compile_check, fill

__all__ = ["MqttPublish", "MqttPublishConfig", "MqttSubscribe", "MqttSubscribeConfig"]

log = logging.getLogger(__name__)

#: a poll stops collecting when no further message arrives within this many seconds
_GAP = 0.02


class _MqttConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    host: str = Field("127.0.0.1", description="broker host name or address")
    port: int = Field(1883, ge=1, le=65535, description="broker port (1883; usually 8883 with tls)")
    username: str | None = Field(None, description="user name, when the broker requires a login")
    password_env: str | None = Field(None, description="name of an environment variable holding the "
                                                       "password (needs 'username')")
    tls: bool = Field(False, description="connect with TLS, checking the broker's certificate against "
                                         "the system's CAs")
    keepalive: int = Field(60, ge=5, le=65535, description="seconds between keep-alive pings")
    connect_timeout: Duration = Field(10.0, description="how long to wait for the broker to accept the "
                                                        "connection, e.g. 10s")

    @model_validator(mode="after")
    def _password_needs_user(self):
        if self.password_env and not self.username:
            raise ValueError("'password_env' needs 'username' (MQTT sends a password only with a user name)")
        return self


def _paho():
    try:
        import paho.mqtt.client as mqtt
    except ImportError:  # pragma: no cover - the extra is not installed
        raise ConfigError("the MQTT components need paho-mqtt ≥ 2: pip install 'flownb[mqtt]'") from None
    return mqtt


class _Connection:
    """A paho client with its network thread (``loop_start``): connects, waits for CONNACK (and the
    SUBACKs of ``topics``), reconnects by itself after a lost connection."""

    def __init__(self, config: _MqttConfig, ctx: Context, *, client_id: str, persistent: bool,
                 topics: Sequence[tuple[str, int]] = (), on_message=None):
        mqtt = _paho()
        self.config, self.topics, self.where = config, list(topics), f"MQTT broker {config.host}:{config.port}"
        self.generation = 0  # +1 per accepted connection: message ids of older ones are stale
        self._ready = threading.Event()
        self._failure: str | None = None
        self._lock = threading.Lock()
        self._pending_subs: set[int] = set()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=not persistent,
                        protocol=mqtt.MQTTv311, manual_ack=persistent)
        if config.username:
            c.username_pw_set(config.username, ctx.secret(config.password_env) if config.password_env else None)
        if config.tls:
            c.tls_set()
        c.reconnect_delay_set(1, 30)
        c.on_connect = self._on_connect
        c.on_subscribe = self._on_subscribe
        c.on_disconnect = self._on_disconnect
        if on_message is not None:
            c.on_message = lambda _c, _u, msg: on_message(self.generation, msg)
        self.client = c
        try:
            c.connect(config.host, config.port, config.keepalive)
        except OSError as exc:
            raise RetryableError(f"cannot connect to the {self.where} ({exc}); will retry — is the broker "
                                 f"running and the host/port right?") from None
        c.loop_start()
        try:
            self.wait_ready(config.connect_timeout)
        except BaseException:
            self.close()  # no network thread left behind by a failed setup()
            raise

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self._ready.wait(min(0.05, max(0.0, deadline - time.monotonic()))):
            if self._failure:  # refused (login, subscription): waiting longer will not change that
                raise FatalError(f"the {self.where} refused the connection: {self._failure}")
            if time.monotonic() >= deadline:
                break
        else:
            return
        raise RetryableError(f"the {self.where} did not accept the connection within {timeout:g}s; will "
                             f"retry — is it overloaded, or is this port not MQTT?")

    @property
    def connected(self) -> bool:
        return self._ready.is_set() and self.client.is_connected()

    def _on_connect(self, client, _userdata, flags, reason_code, _properties) -> None:
        if reason_code.is_failure:
            hint = "; check 'username' and 'password_env'" if reason_code.value in (4, 5, 134, 135) else ""
            self._failure = f"{reason_code}{hint}"
            log.error("%s refused the connection: %s", self.where, self._failure)
            return
        self._failure = None
        with self._lock:
            self.generation += 1
        if not self.topics:
            self._ready.set()
            return
        if getattr(flags, "session_present", False):
            log.info("%s: resumed the persistent session", self.where)
        _rc, mid = client.subscribe(self.topics)
        with self._lock:
            self._pending_subs = {mid}

    def _on_subscribe(self, _client, _userdata, mid, reason_codes, _properties) -> None:
        failed = [str(rc) for rc in reason_codes if rc.is_failure]
        if failed:
            self._failure = f"subscription refused ({', '.join(failed)}); check the topic filters and the " \
                            f"broker's ACLs"
            log.error("%s: %s", self.where, self._failure)
            return
        with self._lock:
            self._pending_subs.discard(mid)
            done = not self._pending_subs
        if done:
            self._ready.set()

    def _on_disconnect(self, _client, _userdata, _flags, reason_code, _properties) -> None:
        self._ready.clear()
        if reason_code.value != 0:
            log.warning("%s: connection lost (%s); reconnecting", self.where, reason_code)

    def close(self) -> None:
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()


# -- mqtt.subscribe -------------------------------------------------------------------------------

class MqttSubscribeConfig(PollConfig, _MqttConfig):
    topics: list[str] = Field(min_length=1, description="topic filters to subscribe to; + and # are "
                                                        "wildcards, e.g. sensors/+/temperature")
    client_id: str | None = Field(None, description="client id of the persistent session (default: "
                                                    "flownb-<flow>-<step>); the broker keeps messages for "
                                                    "it while the flow is down")
    qos: Literal[0, 1] = Field(1, description="1: at-least-once, acknowledged after the hand-off is "
                                              "durable; 0: at-most-once, nothing kept while the flow is down")
    format: _payload.PayloadFormat = _payload.format_field()
    envelope: bool = Field(False, description="emit {topic, payload, qos, retain, dup} instead of the "
                                              "payload alone")
    batch_size: int = Field(1000, ge=1, description="messages handed out per poll at most (the broker's "
                                                    "in-flight window may allow fewer)")
    wait: Duration = _payload.wait_field()
    interval: Duration = _payload.idle_interval_field()


class MqttSubscribe(PollingTrigger[MqttSubscribeConfig]):
    """Messages of MQTT topics, acknowledged to the broker once they are durable in the flow."""

    Config = MqttSubscribeConfig

    @classmethod
    def check_config(cls, config, step) -> None:
        for t in config.topics:
            if not t or "\0" in t or any(("#" in p and (p != "#" or i != len(t.split("/")) - 1))
                                         or ("+" in p and p != "+") for i, p in enumerate(t.split("/"))):
                raise ConfigError(f"{t!r} is not an MQTT topic filter: '+' must be a whole level and '#' the "
                                  f"whole last level, e.g. sensors/+/temperature or sensors/#",
                                  step=step.name, field="config.topics")

    def setup(self) -> None:
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._session = uuid.uuid4().hex[:12]
        self._seq = 0
        #: the batch handed out by the last poll and not yet known durable: (token, generation, messages)
        self._pending: tuple[str, int, list] | None = None
        self._more = False
        cid = self.config.client_id or f"flownb-{self.ctx.flow}-{self.ctx.step}"
        self.conn = _Connection(self.config, self.ctx, client_id=cid, persistent=self.config.qos > 0,
                                topics=[(t, self.config.qos) for t in self.config.topics],
                                on_message=lambda gen, msg: self._inbox.put((gen, msg)))

    def close(self) -> None:
        conn = getattr(self, "conn", None)
        if conn is not None:
            conn.close()  # unacknowledged messages stay with the broker's session

    def next_delay(self, state: dict) -> float:
        return 0.0 if getattr(self, "_more", False) else self.interval

    def poll(self, state: dict, ctx: Context) -> list[dict]:
        conn = self.conn
        if not conn.connected:
            conn.wait_ready(self.config.connect_timeout)
        generation = conn.generation
        carry = self._settle(state, generation)
        taken = list(carry)
        deadline = time.monotonic() + (0 if carry else self.config.wait)
        while len(taken) < self.config.batch_size:
            try:  # the first message: up to `wait`; then while more keep coming (a gap of 20 ms ends it)
                timeout = max(0.0, deadline - time.monotonic()) if not taken else _GAP
                gen, msg = self._inbox.get(timeout=timeout)
            except queue.Empty:
                break
            if gen == generation:  # older: received on a lost connection; the broker resends it
                taken.append(msg)
        self._more = bool(taken)
        if not taken:
            return []
        self._seq += 1
        token = f"{self._session}:{self._seq}"
        state["batch"] = token
        self._pending = (token, generation, taken)
        log.info("mqtt.subscribe '%s': received %d message(s); acknowledged once committed",
                 ctx.step, len(taken))
        return [self._body(m) for m in taken]

    def _settle(self, state: dict, generation: int) -> list:
        """Acknowledge the last poll's messages if the committed ``state`` shows they are durable;
        else return them to be handed out again."""
        pending, self._pending = self._pending, None
        if pending is None:
            return []
        token, gen, msgs = pending
        if gen != generation:
            return []  # the connection was lost since: the broker resends them (DUP)
        if state.get("batch") != token:
            log.warning("mqtt.subscribe '%s': the last %d message(s) were not committed; handing them out "
                        "again", self.ctx.step, len(msgs))
            return msgs
        for m in msgs:
            if m.qos > 0:
                self.conn.client.ack(m.mid, m.qos)
        return []

    def _body(self, msg) -> dict:
        def wrap(payload: Any) -> dict:
            return {"topic": msg.topic, "payload": payload, "qos": msg.qos, "retain": bool(msg.retain),
                    "dup": bool(msg.dup)}
        return as_body(msg.payload, self.config.format, ("_topic", msg.topic), "topics",
                       wrap if self.config.envelope else None)


# -- mqtt.publish ---------------------------------------------------------------------------------

class MqttPublishConfig(_MqttConfig):
    topic: str = Field(description="topic to publish to; '{field}' placeholders are filled from the "
                                   "message body, e.g. devices/{device_id}/commands")
    payload: str | None = Field(None, description="JSONata expression for the payload; default: the "
                                                  "message body")
    format: Literal["json", "text"] = Field("json", description="json: the payload as JSON; text: a "
                                                                "string payload as it is (other values as JSON)")
    qos: Literal[0, 1] = Field(1, description="1: wait for the broker's acknowledgement (retried when it "
                                              "does not come); 0: fire and forget")
    retain: bool = Field(False, description="ask the broker to keep the message as the topic's last value")
    client_id: str | None = Field(None, description="client id (default: a random one per process)")
    timeout: Duration = Field(10.0, description="how long to wait for the broker's acknowledgement of a "
                                                "batch before retrying it, e.g. 10s")


class MqttPublish(Action[MqttPublishConfig]):
    """Publish each message to an MQTT topic (QoS 1: acknowledged by the broker before passing on)."""

    Config = MqttPublishConfig
    effects: ClassVar[bool] = True

    @classmethod
    def check_config(cls, config, step) -> None:
        if "+" in config.topic or "#" in config.topic or not config.topic.strip("/"):
            raise ConfigError(f"{config.topic!r} cannot be published to: a topic has no wildcards (+, #)",
                              step=step.name, field="config.topic")
        compile_check(config.payload, step, "payload")

    def setup(self) -> None:
        self._compile()
        cid = self.config.client_id or f"flownb-{self.ctx.flow}-{self.ctx.step}-{uuid.uuid4().hex[:8]}"
        self.conn = _Connection(self.config, self.ctx, client_id=cid, persistent=False)

    def close(self) -> None:
        conn = getattr(self, "conn", None)
        if conn is not None:
            conn.close()

    def _compile(self) -> None:
        self._payload = _payload.payload_expr(self.config.payload, self.ctx.step, "config.payload")

    def _render(self, body: dict) -> tuple[str, bytes]:
        topic = fill(self.config.topic, body)
        if "+" in topic or "#" in topic or "\0" in topic:
            raise FatalError(f"topic {topic!r} (from {self.config.topic!r}) contains a wildcard; fix the "
                             f"field it was filled from")
        value = self._payload(body) if self._payload is not None else body
        return topic, encoded(value, self.config.format)

    def dry_run(self, message, ctx: Context) -> dict:
        """What it would publish, rendered and checked as a live publish is (no connection)."""
        if not hasattr(self, "_payload"):
            self._compile()
        topic, payload = self._render(message.body)
        value = shown(payload, self.config.format)
        return {"host": self.config.host, "port": self.config.port, "topic": topic, "payload": value,
                "qos": self.config.qos, "retain": self.config.retain}

    def process(self, message, ctx: Context):
        out = self.process_batch([message], ctx)[0]
        if isinstance(out, BaseException):
            raise out
        return out

    def process_batch(self, messages, ctx: Context) -> list:
        if not self.conn.connected:
            try:
                self.conn.wait_ready(min(self.config.connect_timeout, 2.0))
            except (RetryableError, FatalError) as exc:  # not the messages' fault: retried, even a refusal
                return [RetryableError(f"not connected to the {self.conn.where}: {exc}; will retry")
                        for _ in messages]
        mqtt = _paho()
        results: list = []
        infos: list = []
        for m in messages:
            try:
                topic, payload = self._render(m.body)
            except FatalError as exc:
                results.append(exc)
                infos.append(None)
                continue
            info = self.conn.client.publish(topic, payload, qos=self.config.qos, retain=self.config.retain)
            results.append(m.body)
            infos.append(info)
        deadline = time.monotonic() + self.config.timeout
        for i, info in enumerate(infos):
            if info is None:
                continue
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                results[i] = RetryableError(f"publish to the {self.conn.where} failed ({mqtt.error_string(info.rc)}); "
                                            f"will retry")
                continue
            if self.config.qos == 0:
                continue
            try:
                info.wait_for_publish(max(0.01, deadline - time.monotonic()))
            except (RuntimeError, ValueError) as exc:  # the connection dropped while waiting
                results[i] = RetryableError(f"publish to the {self.conn.where} failed ({exc}); will retry")
                continue
            if not info.is_published():
                results[i] = RetryableError(f"the {self.conn.where} did not acknowledge the message within "
                                            f"{self.config.timeout:g}s; will retry")
        return results
