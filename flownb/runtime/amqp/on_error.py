"""The error flow on RabbitMQ (flownb.runtime.on_error says what it delivers and when).

Failure events travel in the queue ``flownb.<flow>.errors``: a step worker publishes a dead letter's
event in the same confirmed batch as the dead letter itself (so the input is acked only once both
are confirmed), the trigger worker publishes a failed poll's event in its own transaction and a
record's dead letter with the cursor, and a step whose ``setup()`` fails reports it on a connection
of its own. ``flownb worker SPEC --step on_error`` (part of ``--all``; one replica is enough: more
split the events between them) consumes the queue, holds the events of a window unacked, runs the
on_error actions on one delivery and acks them (``multiple``) only once the delivery went through;
a failed delivery keeps them unacked for the next window, and a crash gives them back to the queue
for the next worker. The queue is bounded (``FLOWNB_MAX_ERRORS``, default 100,000, the oldest drop
first), so a flow that fails for days with no on_error worker running cannot fill the broker.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable

from ...errors import ErrorFlowFailed
from ...flow import Flow
from ...message import Message
from ..on_error import ErrorFlow, delivery, event_from_exception, event_payload
from . import names
from .publish import PERSISTENT
from .topology import AMQP_ERRORS, connect, declare_errors, run_sessions

__all__ = ["ErrorWorker", "report_setup_failure"]

log = logging.getLogger("flownb.on_error")
#: the most events one window holds unacked (more wait in the queue for the next window)
PREFETCH = 5000


def report_setup_failure(flow: Flow, broker_url: str, step: str, exc: Exception) -> None:
    """Publish a ``setup_failed`` event (confirmed) on a short connection: called from the step's
    processing thread, which has no channel of its own. Best effort: an unreachable broker is logged."""
    ev = event_from_exception("setup_failed", flow.name, step, exc)
    try:
        conn = connect(broker_url, name=f"flownb {step} on_error")
        try:
            ch = conn.channel()
            declare_errors(ch, flow)  # the step's own queues are declared only once it is set up
            ch.confirm_delivery()
            ch.basic_publish("", names.errors_queue(flow.name), event_payload(flow.name, ev), PERSISTENT)
        finally:
            if conn.is_open:
                conn.close()
    except AMQP_ERRORS as err:
        log.error("step '%s': could not report its setup() failure to on_error: %s", step, err)


class ErrorWorker:
    """Consumes ``flownb.<flow>.errors`` and delivers windows of events to the on_error actions."""

    name = names.ON_ERROR_WORKER

    def __init__(self, flow: Flow, broker_url: str, *, clock: Callable[[], float] = time.time):
        self.flow = flow
        self.url = broker_url
        self.errors = ErrorFlow(flow)
        self.queue = names.errors_queue(flow.name)
        self.clock = clock
        self.consuming = threading.Event()
        self.delivered = 0            # events delivered by this worker
        self.failed_deliveries = 0
        self._stopping = False
        self._wake = threading.Event()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    def run(self) -> None:
        try:
            run_sessions(self._session, stopping=lambda: self._stopping, wake=self._wake,
                         what=f"on_error worker of flow '{self.flow.name}'", after=self.consuming.clear)
        finally:
            self.errors.close()

    def _session(self) -> None:
        conn = connect(self.url, name=f"flownb {self.flow.name} on_error", heartbeat=60)
        pending: list[tuple[int, dict]] = []
        try:
            ch = conn.channel()
            declare_errors(ch, self.flow)
            ch.basic_qos(prefetch_count=PREFETCH)
            self.consuming.set()
            for method, _props, body in ch.consume(self.queue, inactivity_timeout=0.2):
                if method is not None:
                    pending.append((method.delivery_tag, _event(body)))
                # a due window waits for a quiet moment (nothing more ready at once) or a full batch,
                # so a burst is one delivery, not its first event alone
                settled = method is None or len(pending) >= self.errors.batch
                if pending and (self._stopping or (settled and self.errors.window.due(self.clock()))):
                    if self._deliver(ch, pending):
                        pending = []
                if self._stopping and (not pending or method is None):
                    break
            if pending:
                log.error("on_error worker of flow '%s': %d failure(s) not delivered go back to %s",
                          self.flow.name, len(pending), self.queue)
        finally:
            if conn.is_open:
                try:
                    conn.close()  # unacked events go back to the queue
                except AMQP_ERRORS:
                    pass

    def _deliver(self, ch, pending: list[tuple[int, dict]]) -> bool:
        events = [ev for _tag, ev in pending]
        counts = Counter((ev["kind"], ev["step"]) for ev in events)
        body = delivery(self.flow.name, events[: self.errors.batch], len(events), dict(counts))
        self.errors.window.sent(self.clock())
        try:
            self.errors.send(body)
        except ErrorFlowFailed as exc:
            self.failed_deliveries += 1
            log.error("%s", exc)
            return False
        ch.basic_ack(pending[-1][0], multiple=True)
        self.delivered += len(events)
        log.info("on_error: %d failure(s) of flow '%s' delivered", len(events), self.flow.name)
        return True


def _event(body: bytes) -> dict:
    try:
        return Message.from_json(body).body
    except Exception:  # not ours: still a failure someone should hear of
        text = bytes(body[:500]).decode("utf-8", "replace")
        return {"kind": "dead_letter", "flow": "?", "step": "?", "error_type": "UndecodableEvent",
                "error": f"an event in the errors queue is not a flownb message: {text!r}", "attempt": None,
                "trace": None, "message_id": None, "at": None}
