"""Serving webhook triggers with uvicorn (uvloop + httptools), on the local runtime or RabbitMQ.

- ``flownb run SPEC --port P`` → :func:`serve_local` (the embedded SQLite runtime processes its queues
  in a thread next to the server);
- ``flownb worker SPEC --step <trigger> --port P`` → :func:`serve_amqp`.

Both bind 127.0.0.1 unless told otherwise, stop on SIGINT/SIGTERM, and serve ``/healthz``.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from ..flow import Flow
from ..runtime.ingress import Ingest
from .app import Hook, create_app
from .pipeline import webhook_config

__all__ = ["webhook_config", "hook_for", "serve_local", "serve_amqp", "uvicorn_config"]

log = logging.getLogger("flownb.webhook")


def hook_for(flow: Flow, ingest: Ingest) -> Hook:
    """A :class:`Hook` for ``flow`` whose token and secret are read from the environment now."""
    return Hook.from_env(flow.name, webhook_config(flow), ingest, step=flow.trigger.name)


def uvicorn_config(app: Any, host: str, port: int, **kw: Any):
    import uvicorn
    return uvicorn.Config(app, host=host, port=port, loop="uvloop", http="httptools", lifespan="on",
                          access_log=False, proxy_headers=False, log_level=kw.pop("log_level", "warning"),
                          timeout_graceful_shutdown=kw.pop("timeout_graceful_shutdown", 10), **kw)


def _serve(app: Any, host: str, port: int) -> None:
    import uvicorn
    server = uvicorn.Server(uvicorn_config(app, host, port))
    log.info("serving webhooks on http://%s:%d/hooks/<flow>/<token>", host, port)
    server.run()


def serve_local(runtime: Any, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve ``runtime.flow``'s webhook and keep ``runtime`` processing its queues until stopped.

    ``runtime`` is a ``flownb.runtime.local.LocalRuntime``: ``submit(body, headers)`` queues durably,
    ``add_final_listener(cb)`` reports the last step's outputs, ``run(stop_event=…)`` processes."""
    from ..runtime.local.ingress import LocalIngest
    hook = hook_for(runtime.flow, LocalIngest(runtime))
    stop = threading.Event()
    worker = threading.Thread(target=runtime.run, kwargs={"stop_event": stop},
                              name="flownb-local-runtime", daemon=True)
    worker.start()
    try:
        _serve(create_app([hook]), host, port)
    finally:
        stop.set()
        worker.join(timeout=30)


def serve_amqp(flow: Flow, broker_url: str, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve ``flow``'s webhook, publishing each accepted request to RabbitMQ with a confirm."""
    from ..runtime.amqp.ingress import AmqpIngest
    hook = hook_for(flow, AmqpIngest(flow.resolved(), broker_url))
    _serve(create_app([hook]), host, port)
