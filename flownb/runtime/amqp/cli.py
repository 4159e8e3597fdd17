"""``flownb worker SPEC --step NAME | --all``: the command's arguments; the work is
:func:`flownb.runtime.amqp.worker.worker_cli` (imported when the command runs: pika is not
loaded for other commands)."""

from __future__ import annotations

from typing import Any

from ..._cli import add_broker, add_spec, redacted


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
    from .worker import worker_cli
    return redacted(worker_cli, args)
