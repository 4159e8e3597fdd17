"""Test components for the RabbitMQ runtime tests (registered on import).

- ``amqptest.count`` (poll): emits ``{"n": i}`` for i in [0, total), ``batch`` per poll; cursor ``next``
- ``amqptest.work``: adds ``"w": n * 2``; sleeps ``sleep_ms``; a body with ``"poison": true`` raises a
  retryable error until the file ``fix_file`` exists
- ``amqptest.triple``: adds ``"v": n * 3``
- ``amqptest.hang``: returns the body; the message with ``"n": on`` hangs (an hour)
- ``amqptest.http``: POSTs the body to ``url``; 5xx → retryable; returns the body
- ``amqptest.sink``: idempotent SQLite sink: ``seen(n primary key)`` plus ``deliveries(n)`` counting
  every arrival (duplicates visible), one transaction per batch
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import httpx
from pydantic import BaseModel, ConfigDict

import flownb
from flownb.components.base import Action, PollConfig
from flownb.errors import RetryableError


class CountConfig(PollConfig):
    total: int = 100
    batch: int = 1000
    poison: list[int] = []
    #: with ``gate``: the numbers from ``hold_from`` on are emitted only once the file ``gate`` exists
    gate: str = ""
    hold_from: int = 0
    #: a second gate, further on: the numbers from ``hold_from2`` on only once the file ``gate2`` exists
    gate2: str = ""
    hold_from2: int = 0


@flownb.polling_trigger("amqptest.count", config=CountConfig)
def count(state, ctx):
    start = int(state.get("next", 0))
    total = ctx.config.total
    if ctx.config.gate and not Path(ctx.config.gate).exists():
        total = min(total, ctx.config.hold_from)
    if ctx.config.gate2 and not Path(ctx.config.gate2).exists():
        total = min(total, ctx.config.hold_from2)
    end = min(start + ctx.config.batch, total)
    state["next"] = end
    bad = set(ctx.config.poison)
    return [{"n": i, "poison": True} if i in bad else {"n": i} for i in range(start, end)]


class WorkConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sleep_ms: float = 0
    fix_file: str = ""


@flownb.action("amqptest.work", config=WorkConfig)
def work(body, ctx):
    if ctx.config.sleep_ms:
        time.sleep(ctx.config.sleep_ms / 1000)
    if body.get("poison") and not (ctx.config.fix_file and Path(ctx.config.fix_file).exists()):
        raise RetryableError(f"poison message {body.get('n')}")
    return {**body, "w": body["n"] * 2}


@flownb.action("amqptest.triple")
def triple(body, ctx):
    return {**body, "v": body["n"] * 3}


class HangConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    on: int = 1  # the n whose message hangs the step (an hour: a call without a timeout)


@flownb.action("amqptest.hang", config=HangConfig)
def hang(body, ctx):
    if body.get("n") == ctx.config.on:
        time.sleep(3600)
    return body


class HttpConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str


@flownb.action("amqptest.http", config=HttpConfig)
def http_post(body, ctx):
    try:
        r = httpx.post(ctx.config.url, json=body, timeout=5)
    except httpx.TransportError as exc:
        raise RetryableError(f"target unreachable: {exc}") from exc
    if r.status_code >= 500:
        raise RetryableError(f"target answered {r.status_code}")
    return body


class SinkConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str
    sleep_ms: float = 0


class Sink(Action):
    """Idempotent SQLite sink."""

    Config = SinkConfig

    def setup(self):
        self.db = sqlite3.connect(self.config.path, timeout=30, isolation_level=None)
        self.db.execute("pragma journal_mode=wal")
        self.db.execute("create table if not exists seen (n integer primary key, body text)")
        self.db.execute("create table if not exists deliveries (n integer)")

    def close(self):
        self.db.close()

    def process_batch(self, messages, ctx):
        import orjson
        if self.config.sleep_ms:
            time.sleep(self.config.sleep_ms / 1000 * len(messages))
        self.db.execute("begin immediate")
        self.db.executemany("insert or ignore into seen values (?, ?)",
                            [(m.body["n"], orjson.dumps(m.body).decode()) for m in messages])
        self.db.executemany("insert into deliveries values (?)", [(m.body["n"],) for m in messages])
        self.db.execute("commit")
        return [None] * len(messages)


flownb.register("amqptest.sink", Sink)


def sink_counts(path) -> tuple[int, int]:
    """(distinct messages, all deliveries) in a sink database."""
    if not Path(path).exists():
        return 0, 0
    db = sqlite3.connect(str(path), timeout=30)
    try:
        try:
            seen = db.execute("select count(*) from seen").fetchone()[0]
            total = db.execute("select count(*) from deliveries").fetchone()[0]
        except sqlite3.OperationalError:
            return 0, 0
        return seen, total
    finally:
        db.close()


def wait_for(cond, timeout=60.0, every=0.1, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def publish_to_step(broker: str, flow: flownb.Flow, step: str, ids: range) -> None:
    """Publish ``{"n": i}`` for each of ``ids`` to ``step``'s queue of ``flow``, confirmed."""
    from flownb.message import Message
    from flownb.runtime.amqp import names
    from flownb.runtime.amqp.publish import PERSISTENT
    from flownb.runtime.amqp.topology import connect
    conn = connect(broker)
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        for i in ids:
            ch.basic_publish(names.exchange(flow.name), step,
                             Message(body={"n": i}, flow=flow.name, step="src").to_json(), PERSISTENT)
    finally:
        conn.close()


def drain_queue(broker: str, queue: str) -> list[tuple[dict, object]]:
    """Every message of ``queue`` in its order, consumed: (the decoded wire message, its AMQP
    properties) each — the ground truth at the end of a test."""
    import orjson

    from flownb.runtime.amqp.topology import connect
    conn = connect(broker)
    try:
        ch, out = conn.channel(), []
        while (got := ch.basic_get(queue, auto_ack=True))[0] is not None:
            out.append((orjson.loads(got[2]), got[1]))
        return out
    finally:
        conn.close()
