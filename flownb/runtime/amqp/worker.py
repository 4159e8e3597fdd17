"""``flownb worker SPEC --step NAME | --all``: run steps of a flow against RabbitMQ.

One process per step in production (one container, ``replicas`` copies); ``--all`` runs every step
in one process, one thread each, for development. SIGTERM/SIGINT drain in-flight work (outputs
confirmed, inputs acked) and exit 0. A webhook trigger is served by ``flownb.webhook.server``.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Protocol

from ...flow import Flow
from ..core import build_component
from .consumer import StepWorker
from .metrics import serve
from .trigger import TriggerWorker

__all__ = ["worker_cli", "make_worker", "run_workers", "DEFAULT_BROKER"]

log = logging.getLogger(__name__)
DEFAULT_BROKER = "amqp://guest:guest@127.0.0.1:5672/"


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
    return StepWorker(flow, step, broker_url, prefetch=prefetch)


def run_workers(workers: list[Worker], stop: threading.Event) -> None:
    """Run each worker in a thread until ``stop`` is set, then stop them (draining) and join."""
    threads = [threading.Thread(target=w.run, name=f"flownb-worker-{i}", daemon=True)
               for i, w in enumerate(workers)]
    for t in threads:
        t.start()
    while not stop.wait(0.5):
        if not any(t.is_alive() for t in threads):
            break
    for w in workers:
        w.stop()
    for t in threads:
        t.join(timeout=60)


def _install_signals(stop_fn) -> None:
    def handler(signum, frame):
        log.info("signal %d: draining and stopping", signum)
        stop_fn()
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _serve_webhook(flow: Flow, broker: str, args) -> int:
    from ...webhook.server import serve_amqp
    serve_amqp(flow, broker, args.host, args.port or int(os.environ.get("FLOWNB_PORT", "8000")))
    return 0


def worker_cli(flow: Flow, args) -> int:
    """Entry point of ``flownb worker``; returns the exit code."""
    flow = flow.resolved()
    broker = args.broker or os.environ.get("FLOWNB_BROKER_URL") or DEFAULT_BROKER
    if args.metrics_port:
        serve(args.metrics_port)
    webhook = trigger_kind(flow) == "webhook"
    if args.all:
        workers = [make_worker(flow, s.name, broker, prefetch=args.prefetch) for s in flow.steps]
        if not webhook:
            workers.insert(0, make_worker(flow, flow.trigger.name, broker))
        stop = threading.Event()
        if webhook:
            steps = threading.Thread(target=run_workers, args=(workers, stop), daemon=True)
            steps.start()
            try:
                return _serve_webhook(flow, broker, args)  # returns on SIGTERM/SIGINT
            finally:
                stop.set()
                steps.join(60)  # the step workers drain too
        _install_signals(stop.set)
        run_workers(workers, stop)
        return 0
    name = flow.step(args.step).name
    if name == flow.trigger.name and webhook:
        return _serve_webhook(flow, broker, args)
    worker = make_worker(flow, name, broker, prefetch=args.prefetch)
    _install_signals(worker.stop)
    worker.run()
    return 0
