"""``redis.stream`` (a polling trigger: a consumer group on a Redis stream), ``redis.xadd`` and
``redis.set`` (actions), on redis-py ≥ 5 (``pip install 'flownb[redis]'``).

Delivery of ``redis.stream`` is **at-least-once**, and an entry is acknowledged (``XACK``) only after
it is durable in the flow's own queue:

* a poll reads with ``XREADGROUP`` as consumer ``consumer`` of group ``group``: first the entries
  already delivered to this consumer and not acknowledged (its pending entries list: a batch whose
  commit failed, or the entries a killed process had read), then — when there are none — entries
  idle longer than ``claim_idle`` in the lists of other consumers (``XAUTOCLAIM``: a replica that
  died), then new entries (``>``);
* the ids of the entries handed out are written into the trigger's state (``{"ids": [...]}``), which
  the runtime commits with the messages in one transaction; the next poll — in this process or a
  restarted one — ``XACK``\\s the ids of the *committed* state before reading. An entry is therefore
  acknowledged only once durable, and one that was committed is not handed out again even when
  the process dies between the commit and the ``XACK`` (its id is in the committed state);
* a process killed before the commit acknowledged nothing: the entries stay pending for the
  consumer, and the restarted trigger hands them out again.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar, Literal, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field

from .._duration import Duration
from ..errors import ConfigError, FatalError, RetryableError
from . import _payload
from ._payload import encoded
from .base import Action, Context, PollConfig, PollingTrigger
from .http import compile_check, fill

__all__ = ["RedisSet", "RedisSetConfig", "RedisStream", "RedisStreamConfig", "RedisXadd", "RedisXaddConfig"]

log = logging.getLogger(__name__)


class _RedisConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    host: str = Field("127.0.0.1", description="Redis host name or address")
    port: int = Field(6379, ge=1, le=65535, description="Redis port")
    db: int = Field(0, ge=0, description="database number")
    username: str | None = Field(None, description="ACL user name (Redis ≥ 6), when the server requires one")
    password_env: str | None = Field(None, description="name of an environment variable holding the password")
    tls: bool = Field(False, description="connect with TLS (rediss), checking the server's certificate")
    timeout: Duration = Field(10.0, description="timeout of connecting and of each command, e.g. 10s")


def _redis():
    try:
        import redis
    except ImportError:  # pragma: no cover - the extra is not installed
        raise ConfigError("the Redis components need redis-py ≥ 5: pip install 'flownb[redis]'") from None
    return redis


def _connect(config: _RedisConfig, ctx: Context, *, read_timeout: float | None = None):
    redis = _redis()
    client = redis.Redis(host=config.host, port=config.port, db=config.db, username=config.username,
                         password=ctx.secret(config.password_env) if config.password_env else None,
                         ssl=config.tls, socket_connect_timeout=config.timeout,
                         socket_timeout=read_timeout or config.timeout, decode_responses=True,
                         client_name=f"flownb-{ctx.flow}-{ctx.step}")
    try:
        client.ping()
    except (redis.exceptions.RedisError, OSError) as exc:
        client.close()
        raise map_redis_error(exc, f"Redis {config.host}:{config.port}") from None
    return client


def map_redis_error(exc: BaseException, where: str) -> Exception:
    """redis-py error → RetryableError (down, timeout, loading, failover) or FatalError (a command the
    server refuses: wrong type, bad arguments, no permission)."""
    redis = _redis()
    e = redis.exceptions
    if isinstance(exc, (e.ConnectionError, e.TimeoutError, e.BusyLoadingError, e.TryAgainError,
                        e.ReadOnlyError, e.ClusterDownError, OSError)):
        if isinstance(exc, e.AuthenticationError):
            return FatalError(f"{where} refused the login ({exc}); check 'username' and 'password_env'")
        return RetryableError(f"{where} is unavailable ({type(exc).__name__}: {exc}); will retry — is the "
                              f"server running and the host/port right?")
    if isinstance(exc, (e.AuthenticationError, e.AuthenticationWrongNumberOfArgsError)):
        return FatalError(f"{where} refused the login ({exc}); check 'username' and 'password_env'")
    if isinstance(exc, e.NoPermissionError):
        return FatalError(f"{where}: not permitted ({exc}); grant the user the stream commands it needs")
    if isinstance(exc, e.ResponseError) and str(exc).startswith(("LOADING", "BUSY", "MASTERDOWN", "TRYAGAIN")):
        return RetryableError(f"{where} is busy ({exc}); will retry")
    if "WRONGTYPE" in str(exc):
        return FatalError(f"{where}: {exc} — the key exists and is not a stream; choose another 'stream' key "
                          f"or remove that key")
    return FatalError(f"{where}: {type(exc).__name__}: {exc}; fix the step's config or the message")


# -- redis.stream -----------------------------------------------------------------------------------

class RedisStreamConfig(PollConfig, _RedisConfig):
    stream: str = Field(description="key of the stream to read, e.g. orders")
    group: str | None = Field(None, description="consumer group (default: flownb-<flow>-<step>); created "
                                                "when missing")
    consumer: str | None = Field(None, description="consumer name within the group (default: flownb); a "
                                                   "restarted trigger with the same name takes up its "
                                                   "pending entries at once")
    start: Literal["new", "all"] = Field("new", description="where a newly created group starts: new "
                                                            "(entries added from now on) or all (the whole stream)")
    field: str | None = Field(None, description="entry field holding a JSON object that becomes the body "
                                                "(default: the entry's fields as a flat object of strings)")
    id_field: str | None = Field(None, description="add the entry's id to the body under this field, e.g. _id")
    batch_size: int = Field(500, ge=1, le=10000, description="entries handed out per poll at most")
    wait: Duration = Field(0.5, description="how long a poll blocks for new entries when none are "
                                            "waiting, e.g. 500ms")
    claim_idle: Duration = Field(60.0, description="take over entries another consumer of the group read "
                                                   "but did not acknowledge for this long (XAUTOCLAIM), "
                                                   "e.g. 1m; 0: never")
    interval: Duration = _payload.idle_interval_field()


class RedisStream(PollingTrigger[RedisStreamConfig]):
    """Entries of a Redis stream, read in a consumer group and acknowledged once durable in the flow."""

    Config = RedisStreamConfig

    def setup(self) -> None:
        self.where = f"Redis {self.config.host}:{self.config.port} stream '{self.config.stream}'"
        self.group = self.config.group or f"flownb-{self.ctx.flow}-{self.ctx.step}"
        self.consumer = self.config.consumer or "flownb"
        self.r = _connect(self.config, self.ctx, read_timeout=max(self.config.timeout, self.config.wait + 5))
        self._more = False
        self._ensure_group()

    def close(self) -> None:
        r = getattr(self, "r", None)
        if r is not None:
            r.close()

    def next_delay(self, state: dict) -> float:
        return 0.0 if getattr(self, "_more", False) else self.interval

    def _ensure_group(self) -> None:
        redis = _redis()
        try:
            self.r.xgroup_create(self.config.stream, self.group, id="$" if self.config.start == "new" else "0",
                                 mkstream=True)
            log.info("%s: created consumer group '%s'", self.where, self.group)
        except redis.exceptions.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise map_redis_error(exc, self.where) from None
        except (redis.exceptions.RedisError, OSError) as exc:
            raise map_redis_error(exc, self.where) from None

    def poll(self, state: dict, ctx: Context) -> list[dict]:
        redis = _redis()
        try:
            return self._poll(state)
        except redis.exceptions.ResponseError as exc:
            if "NOGROUP" in str(exc):  # the stream (and its group) was deleted: start again, new entries
                log.warning("%s: consumer group '%s' is gone; creating it again", self.where, self.group)
                self._ensure_group()
                return self._poll(state)
            raise map_redis_error(exc, self.where) from None
        except redis.exceptions.RedisError as exc:
            raise map_redis_error(exc, self.where) from None
        except OSError as exc:
            raise map_redis_error(exc, self.where) from None

    def _poll(self, state: dict) -> list[dict]:
        cfg, stream = self.config, self.config.stream
        committed = state.get("ids") or []
        if committed:  # durable in the flow: acknowledge (again, after a crash: XACK is idempotent)
            self.r.xack(stream, self.group, *committed)
        # 1. delivered to this consumer, not acknowledged: not committed (or read by a killed process)
        entries = self._read("0")
        if entries:
            log.warning("%s: handing out again %d entr(ies) read but not committed", self.where, len(entries))
        # 2. left by a consumer that stopped acknowledging (a dead replica)
        if not entries and cfg.claim_idle > 0:
            claimed = self.r.xautoclaim(stream, self.group, self.consumer, int(cfg.claim_idle * 1000),
                                        "0-0", count=cfg.batch_size)
            entries = [(i, f) for i, f in claimed[1] if f is not None]
            if entries:
                log.warning("%s: claimed %d entr(ies) idle for more than %gs from other consumers",
                            self.where, len(entries), cfg.claim_idle)
        # 3. new entries
        if not entries:
            entries = self._read(">", block=int(cfg.wait * 1000))
        state["ids"] = [i for i, _ in entries]
        self._more = bool(entries)
        return [self._body(i, f) for i, f in entries]

    def _read(self, from_id: str, block: int | None = None) -> list[tuple[str, dict]]:
        kw: dict[str, Any] = {"count": self.config.batch_size}
        if block:
            kw["block"] = block
        got = self.r.xreadgroup(self.group, self.consumer, {self.config.stream: from_id}, **kw)
        entries = got[0][1] if got else []
        gone = [i for i, f in entries if not f]  # pending, but deleted from the stream (XDEL, trimming)
        if gone:
            self.r.xack(self.config.stream, self.group, *gone)
            log.warning("%s: %d pending entr(ies) were deleted from the stream before being committed: %s",
                        self.where, len(gone), ", ".join(gone[:5]))
        return [(i, f) for i, f in entries if f]

    def _body(self, entry_id: str, fields: dict) -> dict:
        cfg = self.config
        if cfg.field is None:
            body: dict = dict(fields)
        else:
            raw = fields.get(cfg.field)
            try:
                value = orjson.loads(raw) if raw is not None else None
            except orjson.JSONDecodeError as exc:
                value = exc
            if isinstance(value, dict):
                body = value
            elif isinstance(value, Exception) or raw is None:
                body = {"_raw": fields, "_error": f"field '{cfg.field}' is missing or not JSON"
                        + (f" ({value})" if isinstance(value, Exception) else "")
                        + "; leave 'field' empty to take the entry's fields as they are"}
            else:
                body = {"payload": value}
        if cfg.id_field:
            body[cfg.id_field] = entry_id
        return body


# -- redis.xadd and redis.set ----------------------------------------------------------------------


_RedisActionConfigT = TypeVar("_RedisActionConfigT", bound="_RedisConfig")


class _RedisAction(Action[_RedisActionConfigT]):
    """What ``redis.xadd`` and ``redis.set`` share: one connection, a batch queued on one pipeline
    (a message the subclass cannot render fails alone) and sent in one round trip, each reply
    mapped to the message's result or its error."""

    effects: ClassVar[bool] = True

    def setup(self) -> None:
        self.where = f"Redis {self.config.host}:{self.config.port}"
        self.r = _connect(self.config, self.ctx)

    def close(self) -> None:
        r = getattr(self, "r", None)
        if r is not None:
            r.close()

    def _queue(self, pipe: Any, body: dict) -> None:
        """Put this message's command on ``pipe``; raise for a message that cannot be sent."""
        raise NotImplementedError

    def _output(self, body: dict, reply: Any) -> dict:
        """The output body for a message whose command replied ``reply``."""
        raise NotImplementedError

    def process(self, message, ctx: Context):
        out = self.process_batch([message], ctx)[0]
        if isinstance(out, BaseException):
            raise out
        return out

    def process_batch(self, messages, ctx: Context) -> list:
        redis = _redis()
        results: list = []
        pipe = self.r.pipeline(transaction=False)
        queued: list[int] = []
        for n, m in enumerate(messages):
            try:
                self._queue(pipe, m.body)
            except Exception as exc:  # FatalError, or an expression's EvaluationError: this message only
                results.append(exc)
                continue
            queued.append(n)
            results.append(None)
        if not queued:
            return results
        try:
            replies = pipe.execute(raise_on_error=False)
        except (redis.exceptions.RedisError, OSError) as exc:
            err = map_redis_error(exc, self.where)
            for n in queued:
                results[n] = err
            return results
        for n, reply in zip(queued, replies, strict=True):
            results[n] = map_redis_error(reply, self.where) if isinstance(reply, BaseException) \
                else self._output(messages[n].body, reply)
        return results

class RedisXaddConfig(_RedisConfig):
    stream: str = Field(description="key of the stream to append to; '{field}' placeholders are filled "
                                    "from the message body, e.g. events:{tenant}")
    field: str | None = Field(None, description="write the whole body as JSON into this one entry field "
                                                "(default: each top-level field of the body as an entry "
                                                "field, non-strings as JSON)")
    maxlen: int | None = Field(None, ge=1, description="trim the stream to about this many entries "
                                                       "(XADD MAXLEN ~)")
    id_field: str | None = Field(None, description="add the new entry's id to the output body under this field")


class RedisXadd(_RedisAction[RedisXaddConfig]):
    """Append each message to a Redis stream (XADD), a batch in one round trip."""

    Config = RedisXaddConfig

    @classmethod
    def check_config(cls, config, step) -> None:
        if not config.stream.strip():
            raise ConfigError("'stream' is empty; give the key of a stream, e.g. events",
                              step=step.name, field="config.stream")

    def _entry(self, body: dict) -> tuple[str, dict[str, str]]:
        stream = fill(self.config.stream, body)
        if self.config.field:
            return stream, {self.config.field: orjson.dumps(body).decode()}
        if not body:
            raise FatalError("the body is empty and a stream entry needs at least one field; set 'field' to "
                             "write bodies as JSON")
        return stream, {k: v if isinstance(v, str) else orjson.dumps(v).decode() for k, v in body.items()}

    def dry_run(self, message, ctx: Context) -> dict:
        stream, fields = self._entry(message.body)
        return {"host": self.config.host, "port": self.config.port, "stream": stream, "fields": fields,
                "maxlen": self.config.maxlen}

    def _queue(self, pipe: Any, body: dict) -> None:
        stream, fields = self._entry(body)
        pipe.xadd(stream, fields, maxlen=self.config.maxlen, approximate=True)

    def _output(self, body: dict, reply: Any) -> dict:
        return {**body, self.config.id_field: reply} if self.config.id_field else body


class RedisSetConfig(_RedisConfig):
    key: str = Field(description="key to set; '{field}' placeholders are filled from the message body, "
                                 "e.g. customer:{id}")
    value: str | None = Field(None, description="JSONata expression for the value; default: the message body")
    format: Literal["json", "text"] = Field("json", description="json: the value as JSON; text: a string "
                                                                "value as it is (other values as JSON)")
    ttl: Duration = Field(0.0, description="expire the key after this long (SET PX), e.g. 1h; 0: never")
    only: Literal["always", "absent", "present"] = Field(
        "always", description="always; absent: only when the key does not exist (NX); present: only "
        "when it exists (XX)")
    result_field: str | None = Field(None, description="add true/false to the output body under this "
                                                       "field: whether the key was set (false only with "
                                                       "'only')")


class RedisSet(_RedisAction[RedisSetConfig]):
    """Set a Redis key per message (SET, optionally with a TTL), a batch in one round trip."""

    Config = RedisSetConfig

    @classmethod
    def check_config(cls, config, step) -> None:
        if not config.key.strip():
            raise ConfigError("'key' is empty; give a key, e.g. customer:{id}", step=step.name, field="config.key")
        compile_check(config.value, step, "value")

    def setup(self) -> None:
        self._compile()
        self._set_args = self._args()
        super().setup()

    def _compile(self) -> None:
        self._value = _payload.payload_expr(self.config.value, self.ctx.step, "config.value")

    def _render(self, body: dict) -> tuple[str, str]:
        key = fill(self.config.key, body)
        if not key:
            raise FatalError(f"key {self.config.key!r} is empty for this message; fix the field it is "
                             f"filled from")
        value = self._value(body) if self._value is not None else body
        if value is None:
            raise FatalError(f"the value expression {self.config.value!r} gave nothing for this message; "
                             f"Redis cannot store 'no value' — filter such messages out first, or give "
                             f"a default in the expression")
        return key, encoded(value, self.config.format, "value").decode("utf-8")

    def _args(self) -> dict[str, Any]:
        ttl = self.config.ttl
        return {"px": max(1, round(ttl * 1000)) if ttl else None, "nx": self.config.only == "absent",
                "xx": self.config.only == "present"}

    def dry_run(self, message, ctx: Context) -> dict:
        """The key and value it would set, rendered and checked as a live SET is (no connection)."""
        if not hasattr(self, "_value"):
            self._compile()
        key, value = self._render(message.body)
        return {"host": self.config.host, "port": self.config.port, "key": key, "value": value,
                "ttl": self.config.ttl, "only": self.config.only}

    def _queue(self, pipe: Any, body: dict) -> None:
        key, value = self._render(body)
        pipe.set(key, value, **self._set_args)

    def _output(self, body: dict, reply: Any) -> dict:
        rf = self.config.result_field
        return {**body, rf: bool(reply)} if rf else body
