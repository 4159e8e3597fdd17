"""``flownb worker SPEC --step NAME | --all``: run steps of a flow against RabbitMQ.

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
import os
import signal
import threading
from typing import Protocol

from ...errors import FlownbError, SpecError
from ...flow import Flow
from ...secrets import check_env
from ..core import build_component
from ..health import EXIT_CRASHED, HEALTH, exit_on_failure, start_thread, stop_deadline
from . import names
from .metrics import add_readiness, serve
from .names import broker_url
from .step_worker import StepWorker
from .trigger import TriggerWorker

__all__ = ["worker_cli", "make_worker", "run_workers"]

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


def _where(w: Worker) -> str:
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
        threads = [start_thread(w.run, _where(w), name=f"flownb-worker-{i}") for i, w in enumerate(workers)]
        while not stop.wait(0.2):
            if died.is_set() or not any(t.is_alive() for t in threads):
                break
        for w in workers:
            w.stop()
        for t in threads:
            t.join(timeout=60)
    finally:
        unsubscribe()


def _install_signals(stop_fn) -> None:
    deadline = stop_deadline()

    def handler(signum, frame):
        log.info("signal %d: draining and stopping", signum)
        deadline(signum)
        stop_fn()
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _serve_webhook(flow: Flow, broker: str, args) -> None:
    from ...webhook.server import serve_amqp
    serve_amqp(flow, broker, args.host, args.port or int(os.environ.get("FLOWNB_PORT", "8000")))


def worker_cli(flow: Flow, args) -> int:
    """Entry point of ``flownb worker``; returns the exit code (70 when a thread of it died)."""
    restore = exit_on_failure()
    try:
        _worker_cli(flow, args)
        return EXIT_CRASHED if HEALTH.failed.is_set() else 0
    finally:
        restore()


def _worker_cli(flow: Flow, args) -> None:
    flow = flow.resolved()
    broker = broker_url(args.broker)
    # an unset secret stops the worker before it consumes anything (exit 2 naming step and variable)
    on_error = not args.all and args.step == names.ON_ERROR_WORKER
    if on_error and flow.on_error is None:
        raise SpecError(f"flow '{flow.name}' has no on_error actions: nothing for --step {names.ON_ERROR_WORKER} "
                        f"to run; add 'on_error:' to the spec (docs/errors.md)", field="on_error")
    if args.all:
        check_env(flow)
    else:
        check_env(flow, [s.name for s in flow.error_steps] if on_error else flow.fused_group(flow.step(args.step).name))
    from ..upgrade import check_broker_manifest
    check_broker_manifest(flow, broker, str(args.spec))  # exit 2: a renamed step's messages still wait
    webhook = trigger_kind(flow) == "webhook"
    if args.all:
        # one worker per step, or per ``fuse`` group (named after its first step)
        workers = [make_worker(flow, s.name, broker, prefetch=args.prefetch) for s in flow.actions
                   if flow.fused_group(s.name)[0] == s.name]
        if flow.on_error is not None:
            workers.append(make_worker(flow, names.ON_ERROR_WORKER, broker))
        if not webhook:
            workers.insert(0, make_worker(flow, flow.trigger.name, broker))
        _metrics(args, workers)
        stop = threading.Event()
        if webhook:
            # uvicorn restores the handlers it found and re-raises the signal it stopped on: ours
            # (without them SIGTERM killed the process before the step workers drained, SIGINT exit 130)
            _install_signals(stop.set)
            steps = start_thread(run_workers, "step workers", args=(workers, stop))
            try:
                _serve_webhook(flow, broker, args)  # returns on SIGTERM/SIGINT
            finally:
                stop.set()
                steps.join(60)  # the step workers drain too
            return
        _install_signals(stop.set)
        run_workers(workers, stop)
        return
    name = names.ON_ERROR_WORKER if on_error else flow.step(args.step).name
    if name == flow.trigger.name and webhook:
        _metrics(args, [])
        _install_signals(lambda: None)  # uvicorn re-raises the signal it stopped on: exit 0, not -15/130
        _serve_webhook(flow, broker, args)
        return
    worker = make_worker(flow, name, broker, prefetch=args.prefetch)
    _metrics(args, [worker])
    _install_signals(worker.stop)
    try:
        worker.run()
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - exit 70 (worker_cli) unless it is a configuration problem
        if not HEALTH.failed.is_set():  # (a thread's death is already recorded: run() only reports it)
            if isinstance(exc, FlownbError):
                raise  # a queue with other arguments…: exit 1 with the message
            HEALTH.fail(_where(worker), exc)


def _metrics(args, workers: list[Worker]) -> None:
    if args.metrics_port:
        for w in workers:
            add_readiness(w.consuming.is_set)
        serve(args.metrics_port)
