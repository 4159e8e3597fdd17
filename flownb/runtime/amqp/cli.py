"""``flownb worker SPEC --step NAME | --all``: the command's arguments and its handler, which picks the
workers of the spec and runs them with :mod:`flownb.runtime.amqp.worker` (the processes: threads,
signals, draining). pika is imported when the command runs, not for other commands."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..._cli import add_broker, add_spec, redacted

if TYPE_CHECKING:
    from ...flow import Flow
    from .worker import Worker

__all__ = ["add_parser", "worker_cli"]


def add_parser(sub: Any) -> None:
    p = sub.add_parser("worker", help="run one step (or --all) against RabbitMQ")
    add_spec(p)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--step", help="the step this worker runs (on_error: the flow's on_error actions)")
    g.add_argument("--all", action="store_true", help="every step in one process (development)")
    add_broker(p, "RabbitMQ URL (default: $FLOWNB_BROKER_URL, else the local broker)")
    p.add_argument("--prefetch", type=int, default=None)
    p.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus metrics on this port")
    p.add_argument("--port", type=int, default=None, help="serve a webhook trigger on this port")
    p.add_argument("--host", default="127.0.0.1")
    p.set_defaults(handler=_worker)


def _worker(args) -> int:
    return redacted(worker_cli, args)


def _serve_webhook(flow: Flow, broker: str, args) -> None:
    import os

    from ...webhook.server import serve_amqp
    serve_amqp(flow, broker, args.host, args.port or int(os.environ.get("FLOWNB_PORT", "8000")))


def worker_cli(flow: Flow, args) -> int:
    """Entry point of ``flownb worker``; returns the exit code (70 when a thread of it died)."""
    from ..health import EXIT_CRASHED, HEALTH, exit_on_failure
    restore = exit_on_failure()
    try:
        _worker_cli(flow, args)
        return EXIT_CRASHED if HEALTH.failed.is_set() else 0
    finally:
        restore()


def _worker_cli(flow: Flow, args) -> None:
    import threading

    from ...errors import FlownbError, SpecError
    from ...secrets import check_env
    from ..health import HEALTH, start_thread
    from ..upgrade import check_broker_manifest
    from . import names
    from .names import broker_url
    from .worker import install_signals, make_worker, run_workers, trigger_kind, where
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
            install_signals(stop.set)
            steps = start_thread(run_workers, "step workers", args=(workers, stop))
            try:
                _serve_webhook(flow, broker, args)  # returns on SIGTERM/SIGINT
            finally:
                stop.set()
                steps.join(60)  # the step workers drain too
            return
        install_signals(stop.set)
        run_workers(workers, stop)
        return
    name = names.ON_ERROR_WORKER if on_error else flow.step(args.step).name
    if name == flow.trigger.name and webhook:
        _metrics(args, [])
        install_signals(lambda: None)  # uvicorn re-raises the signal it stopped on: exit 0, not -15/130
        _serve_webhook(flow, broker, args)
        return
    worker = make_worker(flow, name, broker, prefetch=args.prefetch)
    _metrics(args, [worker])
    install_signals(worker.stop)
    try:
        worker.run()
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - exit 70 (worker_cli) unless it is a configuration problem
        if not HEALTH.failed.is_set():  # (a thread's death is already recorded: run() only reports it)
            if isinstance(exc, FlownbError):
                raise  # a queue with other arguments…: exit 1 with the message
            HEALTH.fail(where(worker), exc)


def _metrics(args, workers: list[Worker]) -> None:
    if args.metrics_port:
        from .metrics import add_readiness, serve
        for w in workers:
            add_readiness(w.consuming.is_set)
        serve(args.metrics_port)
