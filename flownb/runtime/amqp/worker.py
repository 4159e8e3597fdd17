"""The processes behind ``flownb worker`` (the command: :mod:`flownb.runtime.amqp.cli`): run steps of
a flow against RabbitMQ.

One process per step in production (one container, ``replicas`` copies); ``--all`` runs every step
in one process, one thread each, for development. SIGTERM/SIGINT drain in-flight work (outputs
confirmed, inputs acked) and exit 0; a drain that does not finish within ``FLOWNB_STOP_GRACE``
seconds (default 45) exits 124, a second signal exits at once. A thread that dies (any exception,
``BaseException`` included) is logged with its step, turns ``/healthz`` to 503 and ends the process
with status 70 within a few seconds (:mod:`flownb.runtime.health`). A webhook trigger is served by
``flownb.webhook.server``.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Protocol

from ...flow import Flow
from ..core import build_component
from ..health import HEALTH, start_thread, stop_deadline
from . import names
from .step_worker import StepWorker
from .trigger import TriggerWorker

__all__ = ["make_worker", "run_workers", "install_signals", "where", "trigger_kind"]

log = logging.getLogger(__name__)


class Worker(Protocol):
    consuming: threading.Event

    def run(self) -> None: ...
    def stop(self) -> None: ...


def trigger_kind(flow: Flow) -> str:
    return build_component(flow, flow.trigger, trigger=True).kind


def make_worker(flow: Flow, step: str, broker_url: str, *, prefetch: int | None = None) -> Worker:
    """The worker for ``step`` of a resolved flow: a TriggerWorker for a polling trigger."""
    if step == flow.trigger.name:
        return TriggerWorker(flow, broker_url)
    if step == names.ON_ERROR_WORKER and flow.on_error is not None:
        from .on_error import ErrorWorker
        return ErrorWorker(flow, broker_url)
    return StepWorker(flow, step, broker_url, prefetch=prefetch)


def where(w: Worker) -> str:
    step = getattr(w, "step", None)
    name = getattr(step, "name", None) or getattr(w, "name", "?")
    if name == names.ON_ERROR_WORKER:
        return "the on_error worker"
    return f"{'trigger' if isinstance(w, TriggerWorker) else 'step'} '{name}'"


def run_workers(workers: list[Worker], stop: threading.Event) -> None:
    """Run each worker in a thread until ``stop`` is set (or a thread of the process died), then stop
    them (draining) and join. A worker whose ``run`` raises is a failure of the process (HEALTH)."""
    died = threading.Event()
    unsubscribe = HEALTH.add_listener(lambda failure: died.set())
    try:
        threads = [start_thread(w.run, where(w), name=f"flownb-worker-{i}") for i, w in enumerate(workers)]
        while not stop.wait(0.2):
            if died.is_set() or not any(t.is_alive() for t in threads):
                break
        for w in workers:
            w.stop()
        for t in threads:
            t.join(timeout=60)
    finally:
        unsubscribe()


def install_signals(stop_fn) -> None:
    """SIGTERM/SIGINT call ``stop_fn`` (drain), bounded by ``FLOWNB_STOP_GRACE``; a second one exits at once."""
    deadline = stop_deadline()

    def handler(signum, frame):
        log.info("signal %d: draining and stopping", signum)
        deadline(signum)
        stop_fn()
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
