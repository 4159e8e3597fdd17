"""The worker of one action step: consume, run :class:`~flownb.runtime.core.StepRunner`, hand off.

Hand-off rule (at-least-once, nothing lost): every output, retry or dead letter is published
persistent by a :class:`~flownb.runtime.amqp.publish.ConfirmedPublisher` (confirm mode); an input is
acked (``multiple=True``, in delivery order) only once everything it produced is confirmed.
Messages are processed in batches: whatever one socket read delivered (at most ``prefetch``) goes to
``StepRunner.run_batch`` at once, and confirms are batched by the broker. A publish the broker nacks
(the next queue is full: ``reject-publish``) is published again after a back-off, its input still
unacked, so back-pressure travels upstream through the prefetch window. Steps run in a processing
thread, so a slow step (an HTTP call that times out) never stalls the I/O loop: heartbeats and
confirms keep flowing. A lost connection drops all in-flight state; the broker redelivers the
unacked inputs to the new connection (duplicates are possible only within that window).

Poison messages, on both queue types: a message redelivered from the step or retry-ready queue
(quorum queues count it in ``x-delivery-count``; classic queues set the ``redelivered`` flag) was
held by a worker that died (or lost its connection) - but so was the rest of that worker's prefetch
window, so the redelivery alone does not say which message killed it. Such a message is therefore not run in a
batch: it is moved (published, confirmed, then acked) to the step's suspect queue, carrying the
death in ``x-flownb-deliveries`` (one, however often it was redelivered: it may never have been
reached, as in a batch of the embedded runtime). The suspect queue is consumed with prefetch 1 and
each suspect runs alone, so a death while it runs counts against it only. Its deliveries (carried +
the suspect queue's own count) go to ``StepRunner.run_payloads(deliveries=...)``, which dead-letters it as
``PoisonMessage`` at ``FLOWNB_MAX_DELIVERIES`` (default 3). A classic queue counts nothing, so a
suspect delivered again (``redelivered``: the worker died while holding it) is first published back
to the suspect queue with its deaths + 1 (confirmed, then acked) and runs from that copy: the count
is written before it runs again, as the embedded runtime's claim counts it.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass

import pika

from ...errors import RuntimeFailure
from ...flow import Flow
from ..core import Route, StageRun, StageRunner, StepRunner
from ..health import HEALTH, start_thread, step_timeout
from ..on_error import event_from_dead, event_payload
from . import names
from .metrics import StepMetrics
from .publish import (
    PERSISTENT,
    TRANSIENT,
    CoalescingConnection,
    ConfirmedPublisher,
    Outgoing,
    error_props,
    redelivered_props,
)
from .recorder import Tap
from .topology import (
    DELIVERIES_HEADER,
    TopologyError,
    broker_timeout,
    connect,
    declare_flow,
    last_good_parameters,
    pick_level,
    queue_type,
    retry_levels,
    suspect_queue,
)
from .topology import max_deliveries as env_max_deliveries

__all__ = ["StepWorker", "DEFAULT_PREFETCH", "PERSISTENT"]

log = logging.getLogger(__name__)
DEFAULT_PREFETCH = 200
_MAX_BACKOFF = 15.0
_COUNT_HEADER = "x-delivery-count"  # set by quorum queues: earlier deliveries of this message
_WATCH_EVERY = 2.0  # seconds between two looks of the watchdog (confirms, a stalled consumer)


@dataclass(slots=True)
class _Input:
    tag: int
    pending: int = 0       # publishes not yet confirmed
    done: bool = False     # its outcome has been published (processing finished)
    kind: str = "processed"  # processed | retried | dead | moved (to the suspect queue)


class StepWorker:
    """Runs one action step against RabbitMQ until :meth:`stop` (thread-safe) is called."""

    _drain_deadline: float  # set when a draining stop begins

    def __init__(self, flow: Flow, step_name: str, broker_url: str, *, prefetch: int | None = None,
                 heartbeat: int = 120, max_deliveries: int | None = None, timeout: float | None = None):
        self.flow = flow
        self.url = broker_url
        group = flow.fused_group(step_name)
        if group[0] != step_name:
            raise RuntimeFailure(f"step '{step_name}' runs in the worker of step '{group[0]}' (fuse: "
                                 f"{group}); start that one: flownb worker SPEC --step {group[0]}")
        #: the steps this worker runs: one, or a ``fuse`` group run as one stage (StageRunner)
        self.runners = [StepRunner(flow, n) for n in group]
        self.stage = StageRunner(self.runners)
        self.runner = self.runners[0]
        self.step = self.runner.step
        nxt = flow.next_step(group[-1])
        self.next_key = nxt.name if nxt else None
        self.exchange = names.exchange(flow.name)
        self.prefetch = prefetch or self.step.prefetch or DEFAULT_PREFETCH
        self.levels = [retry_levels(r.step.retry_policy) for r in self.runners]
        self.metrics = StepMetrics(flow.name, step_name)
        self.heartbeat = heartbeat
        #: how long a confirm, a probe's answer or the delivery of a ready message may take before the
        #: worker starts over on a new connection (FLOWNB_BROKER_TIMEOUT): never a silent wait
        self.timeout = timeout or broker_timeout()
        #: the longest the processing thread may spend on one batch (FLOWNB_STEP_TIMEOUT; None: no bound)
        self.step_timeout = step_timeout()
        self._busy_since: float | None = None  # when the processing thread took its current batch
        self._busy_size = 0
        # poison detection: quorum queues count deliveries; on classic queues the worker counts them
        self.quorum = queue_type(flow) == "quorum"
        self.max_deliveries = max_deliveries or env_max_deliveries()
        self.suspect_qs = [suspect_queue(flow.name, r.step.name) for r in self.runners]
        self.errors_q = names.errors_queue(flow.name) if flow.on_error is not None else None
        if self.errors_q is not None:  # a setup() failure of a member reaches the on_error actions
            from .on_error import report_setup_failure
            for r in self.runners:
                r.on_setup_failure = functools.partial(report_setup_failure, flow, broker_url, r.step.name)
        self.tap = Tap.of(flow, step_name)   # the flight recorder (the spec's record:), or None
        self.consuming = threading.Event()   # set while consumers are registered (tests, start-up timing)
        self._stopping = False
        self._fatal: BaseException | None = None
        self._hung = False  # the processing thread outlived FLOWNB_STEP_TIMEOUT on one batch
        self._ready = threading.Event()      # the component's setup() succeeded
        self._halt = threading.Event()       # set by stop()/abort: ends setup retries
        self._wake = threading.Event()
        self._conn: CoalescingConnection | None = None
        self._work: queue.SimpleQueue = queue.SimpleQueue()
        self._gen = 0
        self._reset()

    # -- lifecycle --------------------------------------------------------------------------
    def run(self) -> None:
        """Connect, consume, reconnect with back-off on loss; return after a drained stop."""
        backoff = 0.5
        processor = start_thread(self._processor_main, f"step '{self.step.name}' (processing thread)",
                                 name=f"flownb-{self.step.name}-process")
        try:
            # consume only once the component is set up: while its setup() fails (database down) the
            # messages stay in the queue and the worker is not ready (/readyz, /healthz 503)
            while not self._stopping and not self._ready.wait(0.2):
                pass
            while not self._stopping:
                started = time.monotonic()
                try:
                    self._declare()
                    self._conn = CoalescingConnection(
                        last_good_parameters(self.url, heartbeat=self.heartbeat, name=f"flownb {self.step.name}"),
                        on_open_callback=self._on_open, on_open_error_callback=self._on_open_error,
                        on_close_callback=self._on_closed)
                    self._conn.add_on_connection_blocked_callback(self._on_blocked)
                    self._conn.add_on_connection_unblocked_callback(self._on_unblocked)
                    self._conn.ioloop.start()
                    self._conn.ioloop.close()
                except TopologyError:
                    raise  # a configuration problem: retrying cannot fix it
                except Exception as exc:  # broker down at declare time: log and retry
                    log.warning("step '%s': broker unavailable (%s); retrying in %.1fs", self.step.name,
                                exc, backoff)
                self.consuming.clear()
                self._reset()
                if self._stopping:
                    break
                backoff = 0.5 if time.monotonic() - started > 10 else min(backoff * 2, _MAX_BACKOFF)
                self._wake.wait(backoff)
        finally:
            self._work.put(None)
            if self._fatal is None:
                processor.join(60)
        if self._hung and self._fatal is not None:
            raise self._fatal  # the processing thread hangs (_stuck): recorded as this failure already
        if self._fatal is not None:
            raise RuntimeFailure(f"step '{self.step.name}': its processing thread died "
                                 f"({type(self._fatal).__name__}: {self._fatal}); unacknowledged messages "
                                 f"return to the queue") from self._fatal

    def stop(self) -> None:
        """Stop consuming, finish in-flight messages (outputs confirmed, inputs acked), disconnect."""
        self._stopping = True
        self._wake.set()
        self._halt.set()
        conn = self._conn
        if conn is not None:
            try:
                conn.ioloop.add_callback_threadsafe(self._begin_stop)
            except Exception:  # the loop is already gone: run() returns by itself
                log.debug("stop: ioloop already closed")

    @property
    def _loop_conn(self) -> CoalescingConnection:
        """The connection whose I/O loop runs the callbacks that use this (set before the loop
        starts, never unset)."""
        assert self._conn is not None
        return self._conn

    @property
    def idle(self) -> bool:
        """Nothing delivered and unfinished right now (read from another thread: a snapshot)."""
        return not (self._buffer or self._inputs or self._unconfirmed or self._nacked or self._in_process)

    @property
    def _unconfirmed(self) -> int:
        return len(self._out) if self._out is not None else 0

    def _declare(self) -> None:
        conn = connect(self.url, name=f"flownb {self.step.name} declare")
        try:
            declare_flow(conn.channel(), self.flow)
        finally:
            conn.close()

    def _reset(self) -> None:
        self._gen += 1  # outcomes still being computed for the old connection are dropped
        self._in_process = 0
        self._ch: pika.channel.Channel | None = None
        self._buffer: list[tuple[int, pika.BasicProperties, bytes]] = []
        self._buffer_member = 0   # the member whose queue the buffered deliveries came from
        self._inputs: deque[_Input] = deque()
        self._out: ConfirmedPublisher | None = None  # on self._ch, once it is open
        self._nacked: list[Outgoing] = []
        self._flush_scheduled = False
        self._consumers: set[str] = set()
        #: consumer tag -> (index of the member whose queue it consumes, a suspect queue?)
        self._member: dict[str, tuple[int, bool]] = {}
        self._nack_backoff = 0.2
        self._probe_ch: pika.channel.Channel | None = None
        self._probe_sent: float | None = None  # a probe round under way: when it started
        self._probed_at = 0.0                  # when the last round started
        self._probe_waiting: set[str] = set()  # the queues of that round not answered yet
        self._probe_ready: dict[str, int] = {}  # that round's answers with ready messages
        self._stall_since: float | None = None  # ready messages seen while idle, none delivered since
        self._last_delivery = time.monotonic()
        self._blocked = False  # connection.blocked (a resource alarm): pika's blocked_connection_timeout rules

    # -- connection callbacks ---------------------------------------------------------------
    def _on_open(self, conn) -> None:
        conn.channel(on_open_callback=self._on_channel)

    def _on_open_error(self, conn, err) -> None:
        log.warning("step '%s': cannot connect to the broker: %s", self.step.name, err)
        conn.ioloop.stop()

    def _on_closed(self, conn, reason) -> None:
        if not self._stopping:
            log.warning("step '%s': connection lost (%s); reconnecting", self.step.name, reason)
        conn.ioloop.stop()

    def _on_channel_closed(self, ch, reason) -> None:
        if not self._stopping:
            log.error("step '%s': channel closed by the broker (%s); reconnecting", self.step.name, reason)
        if self._conn is not None and not (self._conn.is_closing or self._conn.is_closed):
            self._conn.close()

    def _on_broker_cancel(self, frame) -> None:
        """The broker cancelled one of our consumers (its queue was deleted, or the node holding it
        went down): nothing more would arrive from that queue, silently. Start over on a new
        connection: the topology is declared again, the unacked inputs are redelivered and the
        consumers register with the queues as they are now."""
        if self._stopping:
            return
        tag = getattr(frame.method, "consumer_tag", "?")
        log.warning("step '%s': the broker cancelled consumer %s (its queue was deleted or its node went "
                    "down); reconnecting", self.step.name, tag)
        if self._conn is not None and not (self._conn.is_closing or self._conn.is_closed):
            self._conn.close()

    def _on_channel(self, ch) -> None:
        self._ch = ch
        ch.add_on_close_callback(self._on_channel_closed)
        ch.add_on_cancel_callback(self._on_broker_cancel)
        self._out = ConfirmedPublisher(ch, self._on_confirm)
        if self.tap is not None:
            self.tap.open(self._loop_conn)
        # per-consumer prefetch (basic.qos applies to the consumers created after it): one suspect
        # at a time, so a death while it runs is its own
        ch.basic_qos(prefetch_count=1)
        for j, sq in enumerate(self.suspect_qs):
            tag = ch.basic_consume(sq, self._on_message, auto_ack=False)
            self._consumers.add(tag)
            self._member[tag] = (j, True)
        ch.basic_qos(prefetch_count=self.prefetch)
        # a fused worker also consumes its later members' queues: their retries and replayed dead
        # letters resume at that member
        for j, r in enumerate(self.runners):
            for q in (names.step_queue(self.flow.name, r.step.name),
                      names.retry_ready_queue(self.flow.name, r.step.name)):
                tag = ch.basic_consume(q, self._on_message, auto_ack=False)
                self._consumers.add(tag)
                self._member[tag] = (j, False)
        if self._stopping:
            self._begin_stop()
        else:
            self._last_delivery = time.monotonic()
            self._loop_conn.channel(on_open_callback=functools.partial(self._on_probe_channel, self._gen))
            self._loop_conn.ioloop.call_later(_WATCH_EVERY, functools.partial(self._watch, self._gen))
            self.consuming.set()
            log.info("step '%s': consuming (prefetch %d)", self.step.name, self.prefetch)

    # -- consuming ------------------------------------------------------------------------
    def _on_message(self, ch, method, props, body) -> None:
        self._last_delivery = time.monotonic()
        headers = props.headers or {}
        count = int(headers.get(_COUNT_HEADER) or 0)  # a quorum queue's count of earlier deliveries
        member, suspect = self._member.get(method.consumer_tag, (0, False))
        if suspect:
            # a suspect runs alone (through its own step only): deliveries = those carried from the
            # step queue + in this one
            self._flush()  # keep delivery order (acks are cumulative)
            carried = int(headers.get(DELIVERIES_HEADER) or 0)
            if not self.quorum and method.redelivered:
                # a classic queue counts nothing: write this death down before it runs again
                self._move(method.delivery_tag, props, body, carried + 1, member)
                return
            deaths = carried + (count if self.quorum else 0)
            self._submit([(method.delivery_tag, props, body)], [deaths], member, member + 1)
            return
        if count > 0 or method.redelivered:  # its worker died holding it, maybe because of it
            self._flush()
            self._move(method.delivery_tag, props, body, 1, member)
            return
        if self._buffer and member != self._buffer_member:
            self._flush()  # a batch starts at one member; delivery order is kept (cumulative acks)
        self._buffer_member = member
        self._buffer.append((method.delivery_tag, props, body))
        if len(self._buffer) >= self.prefetch:
            self._flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop_conn.ioloop.call_later(0, self._flush)

    def _flush(self) -> None:
        """Hand what has arrived to the processing thread (the I/O loop never runs a step)."""
        self._flush_scheduled = False
        batch, self._buffer = self._buffer, []
        self._submit(batch, None, self._buffer_member, len(self.runners))

    def _submit(self, batch, deaths: list[int] | None, start: int = 0, stop: int = 1) -> None:
        if not batch or self._ch is None or not self._ch.is_open:
            return
        recs = [_Input(tag) for tag, _, _ in batch]
        self._inputs.extend(recs)
        self._in_process += 1
        self._work.put((self._gen, self._conn, recs, batch, deaths, start, stop))

    def _move(self, tag: int, props, body: bytes, deaths: int, member: int = 0) -> None:
        """Publish a redelivered input to the suspect queue with the deaths it counts, ack it once
        confirmed; it is run from there, alone. From a step queue that is one death, however often
        it was redelivered: the window it sat in died (maybe before reaching it), as a batch claimed
        by the embedded runtime counts once."""
        if self._ch is None or not self._ch.is_open:
            return
        headers = {k: v for k, v in (props.headers or {}).items() if k != _COUNT_HEADER}
        headers[DELIVERIES_HEADER] = deaths
        moved = redelivered_props(props, headers)
        rec = _Input(tag, done=True, kind="moved")
        self._inputs.append(rec)
        suspect_q = self.suspect_qs[member]
        log.info("step '%s': a redelivered message (deaths so far: %d) goes to '%s' to be processed alone",
                 self.runners[member].step.name, deaths, suspect_q)
        self._publish(rec, "", suspect_q, body, moved)

    def _abort(self) -> None:
        """Stop at once without draining (the processing thread is gone): close the connection, so
        the broker requeues every unacknowledged input."""
        self._stopping = True
        self._wake.set()
        self._halt.set()
        conn = self._conn
        if conn is None:
            return

        def close() -> None:
            self.consuming.clear()
            if not (conn.is_closing or conn.is_closed):
                conn.close()
        try:
            conn.ioloop.add_callback_threadsafe(close)
        except Exception:  # the loop is already gone: run() returns by itself
            log.debug("abort: ioloop already closed")

    # -- the processing thread --------------------------------------------------------------
    def _processor_main(self) -> None:
        try:
            if self._open_runner():
                self._processor()
        except BaseException as exc:  # noqa: BLE001 - recorded first (run() must see a failed process)
            self._fatal = exc
            HEALTH.fail(f"step '{self.step.name}' (processing thread)", exc)  # the guard will not repeat it
            self._abort()
            raise

    def _open_runner(self) -> bool:
        """Set the component up in this thread (components may hold thread-bound resources), retrying
        with the StepRunner's back-off until it works or the worker stops."""
        while not self._halt.is_set():
            now = time.time()
            opened = [r.ensure_open(now) for r in self.runners]  # every member tried each round
            if all(opened):
                self._ready.set()
                return True
            self._halt.wait(max(min(r.setup_retry_at for r in self.runners if not r.is_open) - time.time(),
                                0.05))
        return False

    def _processor(self) -> None:
        """Run batches through the StepRunner; post the outcomes back to the I/O loop."""
        try:
            while True:
                item = self._work.get()
                if item is None:
                    return
                gen, conn, recs, batch, deaths, start, stop = item
                self._busy_size, self._busy_since = len(batch), time.monotonic()
                results = self._compute(batch, deaths, start, stop)
                self._busy_since = None
                try:
                    apply = functools.partial(self._apply, gen, recs, batch, results)
                    conn.ioloop.add_callback_threadsafe(apply)
                except Exception:  # that connection is gone: its inputs are redelivered
                    log.debug("step '%s': outcome of an old connection dropped", self.step.name)
        finally:
            for r in self.runners:
                r.close()  # in this thread: components may hold thread-bound resources

    def _compute(self, batch, deaths: list[int] | None = None, start: int = 0, stop: int = 1) -> StageRun:
        """The outcomes of members ``start`` … ``stop - 1`` (one Outcome per delivery at ``start``),
        decoded, run and routed by the StageRunner (``deaths``: the deliveries of each, counted by the
        broker, for poison detection)."""
        t0 = time.perf_counter()
        run = self.stage.run_payloads(start, stop, [body for _tag, _props, body in batch], deliveries=deaths,
                                      max_deliveries=self.max_deliveries)
        self.metrics.latency.observe((time.perf_counter() - t0) / len(batch))  # one sample per batch
        if self.tap is not None:  # sampled rows of each member, computed here; published by _apply
            for name, outcomes, _t in run.steps:
                self.tap.stage(outcomes, name)
        return run

    # -- back on the I/O loop -----------------------------------------------------------------
    def _apply(self, gen: int, recs: list[_Input], batch, run: StageRun) -> None:
        """Map each outcome's route to publishes (confirmed before the input is acked). A later
        member's retry or dead letter goes to that member's queues, held by the input it came from."""
        if gen != self._gen or self._ch is None or not self._ch.is_open:
            return  # from before a reconnect: those inputs are redelivered, never acked here
        self._in_process -= 1
        self._loop_conn.hold()
        try:
            for rec in recs:
                rec.done = True
            first = self.stage.names.index(run.steps[0][0])
            last = len(run.steps) - 1
            for k, ((name, outcomes, _t), origin) in enumerate(zip(run.steps, run.origins, strict=True)):
                member = first + k
                for res, i in zip(outcomes, origin, strict=True):
                    rec, props = recs[i], batch[i][1]
                    route = res.route
                    if route is Route.FORWARD or route is Route.FILTERED:
                        if res.branches is not None:  # a route step: counted per branch
                            self.metrics.routed(name, res.branches)
                        if k == last and member + 1 < len(self.runners):  # a suspect ran alone
                            for payload in res.payloads:
                                self._publish(rec, self.exchange, self.stage.names[member + 1], payload,
                                              PERSISTENT)
                        elif k == last:
                            self._deliver(rec, props, res)
                    elif route is Route.DEAD:
                        if k == 0:
                            rec.kind = "dead"
                        self.metrics.failed.inc()
                        self._publish(rec, "", names.dead_letter_queue(self.flow.name, name), res.dead_payload(),
                                      error_props(res.error, name))
                        if self.errors_q is not None:  # the flow's on_error actions hear of it
                            assert res.error is not None
                            ev = event_from_dead(self.flow.name, res.message, res.error)
                            self._publish(rec, "", self.errors_q, event_payload(self.flow.name, ev), PERSISTENT)
                    else:
                        if k == 0:
                            rec.kind = "retried"
                        self.metrics.failed.inc()
                        level = pick_level(self.levels[member], res.retry_after or 0.0)
                        self._publish(rec, "", names.retry_queue(self.flow.name, name, level),
                                      res.retry_payload(), error_props(res.error, name))
            self._settle()
            if self.tap is not None:
                self.tap.flush()
        finally:
            self._loop_conn.release()

    def _deliver(self, rec: _Input, props, out) -> None:
        """The outputs to the next step's queue; a route step's each to the first step of its branch
        (:attr:`Outcome.targets`); at the end of the flow to the reply queue, when there is one."""
        if out.targets is not None:
            ends = []
            for to, payload in zip(out.targets, out.payloads, strict=True):
                if to is None:
                    ends.append(payload)
                else:
                    self._publish(rec, self.exchange, to, payload, PERSISTENT)
            self._reply(rec, props, out, ends)
            return
        if self.next_key is not None:
            for payload in out.payloads:
                self._publish(rec, self.exchange, self.next_key, payload, PERSISTENT)
            return
        self._reply(rec, props, out, out.payloads)

    def _reply(self, rec: _Input, props, out, payloads: list[bytes]) -> None:
        if not payloads:
            return
        reply_to = out.message.headers.get(names.REPLY_TO_HEADER) or \
            (props.headers or {}).get(names.REPLY_TO_HEADER)
        if reply_to:
            for payload in payloads:
                self._publish(rec, "", str(reply_to), payload, TRANSIENT)

    # -- publishing with confirms -----------------------------------------------------------
    # not mandatory: the step queues are declared before the worker consumes, and a sync reply whose
    # requester has gone (its exclusive queue with it) is dropped by design
    def _publish(self, rec: _Input, exchange: str, key: str, body: bytes, props) -> None:
        rec.pending += 1
        assert self._out is not None  # the callers checked that the channel is open
        self._out.publish(exchange, key, body, props, rec)

    def _on_confirm(self, done: list[Outgoing], ack: bool) -> None:
        for pub in done:
            if ack:
                pub.ref.pending -= 1
            else:
                self._nacked.append(pub)
        if not ack and done:
            self.metrics.nacked.inc(len(done))
            log.warning("step '%s': broker refused %d publish(es) (queue '%s' full?); retrying in %.1fs",
                        self.step.name, len(done), done[0].key, self._nack_backoff)
            self._loop_conn.ioloop.call_later(self._nack_backoff, self._republish)
            self._nack_backoff = min(self._nack_backoff * 2, 5.0)
        elif ack:
            self._nack_backoff = 0.2
        self._settle()

    def _republish(self) -> None:
        pubs, self._nacked = self._nacked, []
        if self._ch is None or not self._ch.is_open or self._out is None:
            return
        for pub in pubs:
            self._out.send(pub)

    def _settle(self) -> None:
        """Ack, in delivery order, every input whose outputs are all confirmed."""
        last = None
        counts = {"processed": 0, "retried": 0, "dead": 0, "moved": 0}
        while self._inputs and self._inputs[0].done and self._inputs[0].pending == 0:
            rec = self._inputs.popleft()
            last = rec.tag
            counts[rec.kind] += 1
        if last is None:
            return
        if self._ch is not None and self._ch.is_open:
            self._ch.basic_ack(last, multiple=True)
        m = self.metrics
        for kind, counter in (("processed", m.processed), ("retried", m.retried), ("dead", m.dead)):
            if counts[kind]:
                counter.inc(counts[kind])

    # -- the watchdog: no silent wait on the broker ------------------------------------------
    # A broker can stop answering one channel while the connection stays healthy (heartbeats flow):
    # a quorum queue whose leader died mid-publish may never confirm, and a consumer may be left
    # registered where nothing is delivered to it. Either way the worker would wait forever with its
    # inputs unacked (a full prefetch window: nothing more arrives) or with nothing at all. Every few
    # seconds it looks; past ``timeout`` it says so (WARNING) and starts over on a new connection,
    # so the broker requeues what it held and the consumers register again.
    def _consumed_queues(self) -> list[str]:
        qs = list(self.suspect_qs)
        for r in self.runners:
            qs += [names.step_queue(self.flow.name, r.step.name), names.retry_ready_queue(self.flow.name, r.step.name)]
        return qs

    def _on_probe_channel(self, gen: int, ch) -> None:
        if gen != self._gen:
            ch.close()
            return
        self._probe_ch = ch
        ch.add_on_close_callback(functools.partial(self._on_probe_closed, gen))

    def _on_probe_closed(self, gen: int, ch, reason) -> None:
        self._probe_ch = None
        conn = self._conn
        if gen != self._gen or self._stopping or conn is None or conn.is_closing or conn.is_closed:
            return  # closed with its connection
        log.warning("step '%s': the broker closed the channel probing its queues (%s); reconnecting",
                    self.step.name, reason)
        self._restart()

    def _on_blocked(self, conn, frame) -> None:
        self._blocked = True
        log.warning("step '%s': the broker blocks this connection's publishes (%s: a memory or disk alarm)",
                    self.step.name, getattr(frame.method, "reason", "?"))

    def _on_unblocked(self, conn, frame) -> None:
        self._blocked = False
        now = time.monotonic()
        for pub in (self._out.pending.values() if self._out is not None else ()):  # their wait starts now
            pub.sent = max(pub.sent, now)
        log.info("step '%s': the broker unblocked this connection", self.step.name)

    def _restart(self) -> None:
        conn = self._conn
        if conn is not None and not (conn.is_closing or conn.is_closed):
            conn.close()

    def _watch(self, gen: int) -> None:
        if gen != self._gen or self._stopping or self._ch is None or not self._ch.is_open:
            return
        if self._stuck(time.monotonic()):
            return
        problem = self._stalled(time.monotonic())
        if problem:
            log.warning("step '%s': %s; reconnecting", self.step.name, problem)
            self._restart()
            return
        self._loop_conn.ioloop.call_later(_WATCH_EVERY, functools.partial(self._watch, gen))

    def _stuck(self, now: float) -> bool:
        """The processing thread has spent longer than ``step_timeout`` on one batch: a component that
        hangs. No thread can be stopped from outside, so the worker fails as if that thread had died
        (``/healthz`` 503, ``flownb worker`` exits 70 and its restart brings the messages back; the
        one that hangs every time is dead-lettered as poison)."""
        since = self._busy_since
        if self.step_timeout is None or since is None or now - since <= self.step_timeout:
            return False
        exc = RuntimeFailure(
            f"step '{self.step.name}': one batch of {self._busy_size} message(s) has run for {now - since:.0f} s, "
            f"longer than FLOWNB_STEP_TIMEOUT ({self.step_timeout:g} s): the component hangs (a call without a "
            f"timeout?); its messages return to the queue, and one that hangs the step every time is "
            f"dead-lettered as poison after FLOWNB_MAX_DELIVERIES")
        self._fatal, self._hung = exc, True  # run() raises it instead of waiting for the processing thread
        HEALTH.fail(f"step '{self.step.name}' (processing thread)", exc)
        self._abort()
        return True

    def _stalled(self, now: float) -> str | None:
        """What the broker has kept this worker waiting for longer than ``timeout``, or None."""
        oldest = self._out.oldest() if self._out is not None else None
        if oldest is not None and not self._blocked and now - oldest.sent > self.timeout:
            return (f"no confirm from the broker for {now - oldest.sent:.0f} s ({self._unconfirmed} publish(es) "
                    f"unconfirmed, the oldest to '{oldest.key}')")
        if self._probe_sent is not None:
            if now - self._probe_sent > self.timeout:
                return (f"the broker has not answered queue.declare for {now - self._probe_sent:.0f} s "
                        f"({', '.join(sorted(self._probe_waiting))})")
            return None
        if not self.idle:
            self._stall_since = None
            return None
        if self._stall_since is not None and self._last_delivery < self._stall_since:
            if now - self._stall_since > self.timeout:
                ready = ", ".join(f"'{q}' {n}" for q, n in sorted(self._probe_ready.items()))
                return (f"nothing delivered for {now - self._stall_since:.0f} s while its queues hold ready "
                        f"messages ({ready}) and it holds none")
        else:
            self._stall_since = None
        self._probe(now)
        return None

    def _probe(self, now: float) -> None:
        """Ask for the ready messages of the consumed queues (passive queue.declare)."""
        ch = self._probe_ch
        if ch is None or not ch.is_open or now - self._probed_at < max(_WATCH_EVERY, self.timeout / 6):
            return
        self._probe_sent = self._probed_at = now
        self._probe_waiting = set(self._consumed_queues())
        self._probe_ready = {}
        for q in sorted(self._probe_waiting):
            ch.queue_declare(q, passive=True, callback=functools.partial(self._on_probe, self._gen, q))

    def _on_probe(self, gen: int, q: str, frame) -> None:
        if gen != self._gen or self._probe_sent is None:
            return
        self._probe_waiting.discard(q)
        if frame.method.message_count:
            self._probe_ready[q] = frame.method.message_count
        if self._probe_waiting:
            return
        sent, self._probe_sent = self._probe_sent, None
        if self._probe_ready and self.idle and self._last_delivery < sent:
            if self._stall_since is None:
                self._stall_since = sent  # ready messages and a free window, yet nothing arrives
        else:
            self._stall_since = None

    # -- draining stop ----------------------------------------------------------------------
    def _begin_stop(self) -> None:
        self._stopping = True
        ch = self._ch
        if ch is None or not ch.is_open:
            if self._conn is not None and not (self._conn.is_closing or self._conn.is_closed):
                self._conn.close()
            return
        for tag in list(self._consumers):
            ch.basic_cancel(tag, callback=lambda frame, t=tag: self._consumers.discard(t))
        self._drain_deadline = time.monotonic() + 30.0
        self._check_drained()

    def _check_drained(self) -> None:
        busy = (self._consumers or self._buffer or self._inputs or self._unconfirmed or self._nacked
                or self._in_process)
        if busy and time.monotonic() < self._drain_deadline:
            self._loop_conn.ioloop.call_later(0.02, self._check_drained)
            return
        if busy:
            log.warning("step '%s': drain timed out; unacked messages return to the queue", self.step.name)
        self.consuming.clear()
        conn = self._loop_conn
        if not (conn.is_closing or conn.is_closed):
            conn.close()
