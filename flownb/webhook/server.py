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

import orjson

from ..flow import Flow
from ..runtime.ingress import Ingest
from .app import Hook, create_app
from .pipeline import webhook_config

__all__ = ["LimitedHttpTools", "hook_for", "serve_amqp", "serve_local", "uvicorn_config", "webhook_config"]

log = logging.getLogger("flownb.webhook")


def hook_for(flow: Flow, ingest: Ingest) -> Hook:
    """A :class:`Hook` for ``flow`` whose token and secret are read from the environment now."""
    return Hook.from_env(flow.name, webhook_config(flow), ingest, step=flow.trigger.name)


def _limited_httptools() -> type:
    """uvicorn's httptools protocol with a bound on the request head: httptools (llhttp) buffers a
    header of any size, so a 16 MB header would be read, kept and handed to the app. Bytes received
    while a request head is incomplete are counted; past :data:`~flownb.webhook.pipeline.MAX_HEAD_BYTES`
    the answer is 431 and the connection is closed (the pipeline's own, lower limit on the headers
    answers first for anything smaller)."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    from .pipeline import MAX_HEAD_BYTES, MAX_HEADER_BYTES

    body = orjson.dumps({"error": f"request head over {MAX_HEAD_BYTES} bytes; send smaller headers "
                                  f"(at most {MAX_HEADER_BYTES} bytes in total; data goes in the body)",
                         "status": 431})
    reply = (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
             b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body)

    class LimitedHttpTools(HttpToolsProtocol):
        limit = MAX_HEAD_BYTES

        def connection_made(self, transport: Any) -> None:
            self._head_bytes = 0
            self._in_head = self._began = False
            self._refused = False
            super().connection_made(transport)

        def on_message_begin(self) -> None:
            self._in_head = True
            self._began = True
            self._head_bytes = 0
            super().on_message_begin()

        def on_headers_complete(self) -> None:
            self._in_head = False
            super().on_headers_complete()

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            self._began = False
            super().data_received(data)
            if not self._in_head or self.transport.is_closing():
                return
            if self._began:  # the head began within this chunk (after a pipelined request, maybe):
                # what the parser has handed over of it so far (its unfinished line is at most this chunk)
                self._head_bytes = len(self.url) + sum(len(k) + len(v) + 4 for k, v in self.headers)
            else:  # a head still incomplete: all of this chunk is part of it
                self._head_bytes += len(data)
            if self._head_bytes > self.limit:
                self._refused = True
                log.info("webhook: refused a request head of more than %d bytes (431)", self.limit)
                self.transport.write(reply)
                self.transport.close()

    return LimitedHttpTools


LimitedHttpTools: Any = None


def uvicorn_config(app: Any, host: str, port: int, **kw: Any):
    import uvicorn
    global LimitedHttpTools
    if LimitedHttpTools is None:
        LimitedHttpTools = _limited_httptools()
    return uvicorn.Config(app, host=host, port=port, loop="uvloop", http=LimitedHttpTools, lifespan="on",
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
