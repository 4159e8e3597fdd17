"""The flight recorder on RabbitMQ: the step workers' tap, and ``flownb recorder``, which drains it.

Topology (declared with the flow by every worker of a flow whose spec has ``record:``, and by
``flownb recorder``; :func:`declare_recorder`):

- exchange ``flownb.<flow>.recorder`` (fanout, durable): the tap;
- queue ``flownb.<flow>.recorder.tap`` (durable, classic), bound to it: events wait here while no
  recorder runs. It is **bounded**: at most ``FLOWNB_RECORDER_MAX_LENGTH`` events (default 100,000;
  an event is one step batch's sampled rows) and ``FLOWNB_RECORDER_MAX_BYTES`` bytes (default 256
  MiB), with ``x-overflow: drop-head``: when it is full the **oldest** events are dropped, so a
  recorder that is not running can never fill the broker, and a step never waits for it.

The tap (:class:`Tap`) is fire-and-forget: a step worker computes the rows in its processing thread
(:meth:`Tap.stage`, :class:`flownb.recorder.Recorder`: sampled, redacted) and publishes them on the
I/O loop (:meth:`Tap.flush`) as one persistent message per batch on a channel of its own in confirm
mode. The confirms are only counted — they never hold back an input's ack — and nothing is retried:
an event is lost when the connection drops before its confirm, or when the tap's channel is not
open; :attr:`Tap.dropped` counts what was not published, :attr:`Tap.nacked` what the broker refused.

``flownb recorder SPEC --broker URL --db FILE`` (:func:`drain`) consumes the queue into a SQLite file
with the embedded runtime's ``recorder`` table: a batch of events is written in one transaction,
then acknowledged (``multiple``); a recorder killed in between drains those events again (stored
twice; :func:`flownb.recorder.trace_rows` shows each once). Rows older than the spec's ``keep`` are pruned as it runs.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import orjson
import pika
import pika.exceptions

from ... import recorder as rec
from ...errors import BrokerError, SpecError, StateError
from ...flow import Flow
from . import names
from .publish import PERSISTENT, ConfirmedPublisher, Outgoing

__all__ = ["Tap", "declare_recorder", "drain", "recorder_max_length", "recorder_max_bytes",
           "DEFAULT_MAX_LENGTH", "DEFAULT_MAX_BYTES"]

log = logging.getLogger(__name__)
DEFAULT_MAX_LENGTH = 100_000
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
#: events published and not confirmed yet beyond which new events are dropped (a blocked broker)
MAX_UNCONFIRMED = 10_000


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise BrokerError(f"{name}={raw!r} is not a positive integer; set it to a number such as {default}")
    return value


def recorder_max_length() -> int:
    """Events the tap queue holds at most (``FLOWNB_RECORDER_MAX_LENGTH``, default 100,000)."""
    return _env_int("FLOWNB_RECORDER_MAX_LENGTH", DEFAULT_MAX_LENGTH)


def recorder_max_bytes() -> int:
    """Bytes the tap queue holds at most (``FLOWNB_RECORDER_MAX_BYTES``, default 256 MiB)."""
    return _env_int("FLOWNB_RECORDER_MAX_BYTES", DEFAULT_MAX_BYTES)


def declare_recorder(ch: Any, flow: str) -> None:
    """Declare the tap exchange and its bounded, durable queue (idempotent)."""
    from .topology import declare_queue
    ex, q = names.recorder_exchange(flow), names.recorder_queue(flow)
    try:
        ch.exchange_declare(ex, exchange_type="fanout", durable=True)
    except pika.exceptions.ChannelClosedByBroker as exc:
        raise BrokerError(f"declaring exchange '{ex}' failed: {exc.reply_text}") from exc
    declare_queue(ch, q, {"x-max-length": recorder_max_length(), "x-max-length-bytes": recorder_max_bytes(),
                     "x-overflow": "drop-head"})
    ch.queue_bind(q, ex, routing_key="")


# -- the step worker's side ------------------------------------------------------------------------

class Tap:
    """A step worker's publisher of recorder events (see the module docstring)."""

    def __init__(self, flow: Flow, step: str):
        self.recorder = rec.Recorder(flow)
        self.step = step
        self.exchange = names.recorder_exchange(flow.name)
        self._staged: deque[list[tuple]] = deque()
        self._ch: Any = None
        self._out: ConfirmedPublisher | None = None  # on self._ch
        self.published = 0   # events (messages) published
        self.acked = 0
        self.nacked = 0
        self.dropped = 0     # rows not published (no open channel, too many unconfirmed)
        self._warned = 0.0

    @classmethod
    def of(cls, flow: Flow, step: str) -> Tap | None:
        """The tap of a flow that records (``record:`` with a sample above 0), else None."""
        if flow.record is None or flow.record.sample <= 0.0:
            return None
        return cls(flow, step)

    # processing thread
    def stage(self, outcomes: list, step: str | None = None) -> None:
        """Compute the rows of a batch's sampled outcomes (the processing thread: never the I/O loop);
        ``step``: the member of a fused stage that produced them (default: the worker's step)."""
        try:
            rows = self.recorder.rows(step or self.step, outcomes)
        except Exception:  # noqa: BLE001 - the recorder never stops a step
            self.dropped += len(outcomes)
            log.exception("step '%s': flight recorder rows could not be made; dropped", step or self.step)
            return
        if rows:
            self._staged.append(rows)

    # I/O loop
    def open(self, conn: Any) -> None:
        """Open the tap's own confirm channel on the worker's connection."""
        self._ch = self._out = None
        conn.channel(on_open_callback=self._on_channel)

    def _on_channel(self, ch: Any) -> None:
        ch.add_on_close_callback(self._on_closed)
        self._out = ConfirmedPublisher(ch, self._on_confirm, retain=False)  # the tap never sends again
        self._ch = ch

    def _on_closed(self, ch: Any, reason: Any) -> None:
        if self._ch is ch:
            self._ch = None
        if getattr(reason, "reply_code", None) == 200:  # the worker closed its connection
            return
        log.warning("step '%s': the flight recorder's channel closed (%s); events are dropped until the "
                    "worker reconnects", self.step, reason)

    def _on_confirm(self, done: list[Outgoing], ack: bool) -> None:
        if ack:
            self.acked += len(done)
        else:
            self.nacked += len(done)

    def flush(self) -> None:
        """Publish what :meth:`stage` computed, one message per batch (fire-and-forget)."""
        while self._staged:
            rows = self._staged.popleft()
            ch, out = self._ch, self._out
            if ch is None or out is None or not ch.is_open or len(out) >= MAX_UNCONFIRMED:
                self.dropped += len(rows)
                now = time.monotonic()
                if now - self._warned > 60:
                    self._warned = now
                    log.warning("step '%s': flight recorder events dropped (%d rows so far): its channel is "
                                "not open or the broker does not confirm", self.step, self.dropped)
                continue
            body = orjson.dumps({"v": 1, "rows": rows})
            try:
                out.publish(self.exchange, "", body, PERSISTENT)
            except Exception as exc:  # noqa: BLE001 - the tap never stops a step
                self.dropped += len(rows)
                log.debug("step '%s': recorder publish failed: %s", self.step, exc)
                continue
            self.published += 1


# -- flownb recorder -------------------------------------------------------------------------------

def _rows(body: bytes) -> list[tuple]:
    event = orjson.loads(body)
    if not isinstance(event, dict) or event.get("v") != 1 or not isinstance(event.get("rows"), list):
        raise ValueError("not a flownb recorder event (v 1)")
    out = []
    for r in event["rows"]:
        if not isinstance(r, list) or len(r) != len(rec.COLUMNS):
            raise ValueError("a row with the wrong number of columns")
        out.append(tuple(r))
    return out


def drain(flow: Flow, broker: str, db: str | Path, *, until_idle: bool = False,
          stop: threading.Event | None = None, batch: int = 500, idle: float = 0.5) -> dict:
    """Consume the flow's tap queue into the SQLite file ``db`` until ``stop`` is set (or, with
    ``until_idle``, until the queue is empty). Returns counts: ``events``, ``rows``, ``bad``, ``pruned``."""
    if flow.record is None:
        raise SpecError(f"flow '{flow.name}' records nothing: its spec has no 'record:' section; add one, e.g. "
                        f"record: {{sample: 0.01, keep: 7d}}, and start the workers with it", field="record")
    from .topology import connect
    stop = stop or threading.Event()
    sql = rec.open_db(db)
    conn = connect(broker, name="flownb recorder")
    counts = {"events": 0, "rows": 0, "bad": 0, "pruned": 0}
    queue = names.recorder_queue(flow.name)
    keep = flow.record.keep
    next_prune = 0.0
    try:
        ch = conn.channel()
        declare_recorder(ch, flow.name)
        ch.basic_qos(prefetch_count=batch)
        rows: list[tuple] = []
        last_tag, taken = None, 0
        log.info("flownb recorder: draining '%s' into %s", queue, db)
        for method, _props, body in ch.consume(queue, inactivity_timeout=idle):
            if method is not None:
                try:
                    rows.extend(_rows(body))
                    counts["events"] += 1
                except (ValueError, orjson.JSONDecodeError) as exc:
                    counts["bad"] += 1
                    log.warning("flownb recorder: an event on '%s' is not readable (%s); skipped", queue, exc)
                last_tag, taken = method.delivery_tag, taken + 1
                if taken < batch:
                    continue
            now = time.time()
            prune_before = None
            if now >= next_prune:
                next_prune, prune_before = now + rec.PRUNE_EVERY, now - keep
            if last_tag is not None or prune_before is not None:
                sql.execute("BEGIN IMMEDIATE")
                try:
                    counts["pruned"] += rec.insert(sql, rec.RecordBatch(rows, prune_before))
                    sql.execute("COMMIT")
                except BaseException:
                    sql.execute("ROLLBACK")
                    raise
                counts["rows"] += len(rows)
                if last_tag is not None:
                    ch.basic_ack(last_tag, multiple=True)  # after the commit: a crash drains them again
                rows, last_tag, taken = [], None, 0
            if stop.is_set():
                break
            if method is None and until_idle:
                depth = ch.queue_declare(queue, passive=True).method.message_count
                if depth == 0:
                    break
        ch.cancel()
    except pika.exceptions.AMQPError as exc:
        raise BrokerError(f"flownb recorder: the broker connection failed ({type(exc).__name__}: {exc}); "
                          f"events not yet written stay in '{queue}'; start it again") from exc
    except sqlite3.Error as exc:
        raise StateError(f"flownb recorder: cannot write '{db}' ({exc}); events not yet written stay in "
                         f"'{queue}': free space or pass another --db, then start it again") from exc
    finally:
        try:
            if conn.is_open:
                conn.close()
        except pika.exceptions.AMQPError:
            pass
        sql.close()
    return counts
