"""Engines for the runtime conformance suite, and the test components it runs (registered on import).

An engine runs a flow and reports what came out::

    engine.run(flow, inputs=None | [bodies], polls=1, tmp=tmp_path) -> Result

- ``inputs``: bodies fed as the trigger's output (like webhook requests); ``None``: poll the
  trigger ``polls`` times.
- ``Result.outputs``: bodies emitted by the LAST step (order not significant),
  ``Result.dead_letters``: :class:`flownb.runtime.core.DeadLetter` list, ``Result.trigger_state``:
  the polling trigger's saved cursor.

Add an engine (e.g. ``AmqpEngine``) to :data:`ENGINES`; ``test_conformance.py`` runs every test on
each. Processes that run the flow in another interpreter can ``import runtimes`` to register the
``lt.*`` components below.

Components (``lt.*``):

- ``lt.count`` (poll): emits ``{"n": i}`` for i in [next, next+batch) below ``total``; cursor
  ``{"next": …}``; ids in ``poison`` get ``"poison": true``
- ``lt.double``: ``{**body, "w": n * 2}``; ``lt.even``: keeps bodies with even ``n``
- ``lt.split``: ``parts`` copies of the body, each with ``"part": k``
- ``lt.flaky``: raises a retryable error while ``attempt <= fail_times``, then passes the body on
  with ``"attempts": attempt``
- ``lt.fatal``: FatalError for bodies with ``"poison": true``; ``lt.crash``: ValueError (not retryable)
  for those
- ``lt.poison``: retryable error for ``"poison": true`` until the file ``fix_file`` exists
- ``lt.sink``: idempotent SQLite sink: ``seen(n primary key)`` and ``deliveries(n)`` (every arrival);
  ``sleep_ms`` per message
"""

from __future__ import annotations

import sqlite3
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from pydantic import BaseModel, ConfigDict

import flownb
from flownb.components.base import Action, PollConfig
from flownb.errors import FatalError, RetryableError
from flownb.runtime.core import DeadLetter


class _Cfg(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CountConfig(PollConfig):
    total: int = 10
    batch: int = 1000
    poison: list[int] = []


@flownb.polling_trigger("lt.count", config=CountConfig)
def count(state, ctx):
    start = int(state.get("next", 0))
    end = min(start + ctx.config.batch, ctx.config.total)
    state["next"] = end
    bad = set(ctx.config.poison)
    return [{"n": i, "poison": True} if i in bad else {"n": i} for i in range(start, end)]


@flownb.action("lt.double")
def double(body, ctx):
    return {**body, "w": body["n"] * 2}


@flownb.action("lt.even")
def even(body, ctx):
    return body if body["n"] % 2 == 0 else None


class SplitConfig(_Cfg):
    parts: int = 2


@flownb.action("lt.split", config=SplitConfig)
def split(body, ctx):
    return [{**body, "part": k} for k in range(ctx.config.parts)]


class FlakyConfig(_Cfg):
    fail_times: int = 2


class Flaky(Action):
    """Fails (retryably) on the first ``fail_times`` attempts of every message."""

    Config = FlakyConfig

    def process(self, message, ctx):
        if message.attempt <= self.config.fail_times:
            raise RetryableError(f"flaky: attempt {message.attempt} of message {message.body.get('n')}")
        return {**message.body, "attempts": message.attempt}


flownb.register("lt.flaky", Flaky)


@flownb.action("lt.fatal")
def fatal(body, ctx):
    if body.get("poison"):
        raise FatalError(f"poison message {body['n']}")
    return body


@flownb.action("lt.crash")
def crash(body, ctx):
    if body.get("poison"):
        raise ValueError(f"cannot handle message {body['n']}")
    return body


class PoisonConfig(_Cfg):
    fix_file: str = ""


@flownb.action("lt.poison", config=PoisonConfig)
def poison(body, ctx):
    if body.get("poison") and not (ctx.config.fix_file and Path(ctx.config.fix_file).exists()):
        raise RetryableError(f"poison message {body['n']}")
    return body


class SinkConfig(_Cfg):
    path: str
    sleep_ms: float = 0  # per message, to make a run slow enough to kill half-way


class Sink(Action):
    """Idempotent SQLite sink: one transaction per batch."""

    Config = SinkConfig

    def setup(self):
        self.db = sqlite3.connect(self.config.path, timeout=30, isolation_level=None)
        self.db.execute("pragma journal_mode=wal")
        self.db.execute("create table if not exists seen (n integer primary key, body text)")
        self.db.execute("create table if not exists deliveries (n integer)")

    def close(self):
        self.db.close()

    def process_batch(self, messages, ctx):
        if self.config.sleep_ms:
            time.sleep(self.config.sleep_ms / 1000 * len(messages))
        self.db.execute("begin immediate")
        self.db.executemany("insert or ignore into seen values (?, ?)",
                            [(m.body["n"], orjson.dumps(m.body).decode()) for m in messages])
        self.db.executemany("insert into deliveries values (?)", [(m.body["n"],) for m in messages])
        self.db.execute("commit")
        return [None] * len(messages)


flownb.register("lt.sink", Sink)


def sink_counts(path) -> tuple[int, int]:
    """(distinct rows, all deliveries) in a sink database."""
    if not Path(path).exists():
        return 0, 0
    db = sqlite3.connect(str(path), timeout=30)
    try:
        return (db.execute("select count(*) from seen").fetchone()[0],
                db.execute("select count(*) from deliveries").fetchone()[0])
    except sqlite3.OperationalError:
        return 0, 0
    finally:
        db.close()


# -- engines -------------------------------------------------------------------------------------

@dataclass
class Result:
    outputs: list[dict]
    dead_letters: list[DeadLetter] = field(default_factory=list)
    trigger_state: dict = field(default_factory=dict)


class LocalEngine:
    """The embedded runtime with durable queues in ``tmp`` and the real clock."""

    name = "local"

    def run(self, flow, inputs=None, polls: int = 1, tmp: Path | None = None, timeout: float = 60.0) -> Result:
        from flownb.runtime.local import LocalRuntime
        rt = LocalRuntime(flow, tmp / "state", record=True, retry_wait=timeout)
        try:
            if inputs is None:
                for _ in range(polls):
                    rt.poll_once(raise_errors=True)
            else:
                for body in inputs:
                    rt.submit(body)
            summary = rt.drain()
            rt.notify_errors(force=True)  # as `flownb run --until-idle` ends
            assert not summary.pending, f"still queued after {timeout}s of retries: {summary.pending}"
            # the bodies that left the flow: the last step's (a flow ending with a route: each branch's)
            outputs = rt.final if rt.flow.steps else rt.recorded[flow.trigger.name]
            return Result(outputs=list(outputs), dead_letters=rt.dead_letters(),
                          trigger_state=rt.store.get_state(flow.trigger.name)[0])
        finally:
            rt.close()


def AmqpEngine():
    """The RabbitMQ engine (tests/runtime/amqp/amqp_runtime.py); skips when no broker runs."""
    sys.path.insert(0, str(Path(__file__).parent / "amqp"))
    from amqp_runtime import AmqpEngine as Engine
    return Engine()


ENGINES = {"local": LocalEngine, "amqp": AmqpEngine}
