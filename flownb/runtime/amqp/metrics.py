"""Prometheus metrics of a worker (labels ``flow`` and ``step``), served on ``--metrics-port``
together with the worker's health:

- ``GET /livez``: 200 while every thread of the process is alive; 503 (with the failures) once one
  died (:mod:`flownb.runtime.health`) — the liveness probe;
- ``GET /healthz``: 200 when alive and every step can work; 503 once a thread died or while a step is
  not ready (its component's ``setup()`` fails: database down, bad credentials), with the reasons;
- ``GET /readyz``: as ``/healthz``, and every worker of the process is consuming (503 while the
  broker is unreachable) — the readiness probe;
- ``GET /metrics`` (and any other path): the Prometheus exposition.

- ``flownb_messages_processed_total``: inputs whose outcome was committed (outputs confirmed, acked)
- ``flownb_messages_retried_total``: inputs sent to a delay queue
- ``flownb_messages_dead_lettered_total``: inputs sent to the dead-letter queue
- ``flownb_messages_failed_total``: processing attempts that raised (retried or dead-lettered)
- ``flownb_publish_nacked_total``: publishes the broker refused (a full queue); retried later
- ``flownb_step_latency_seconds``: processing time per message (one sample per batch: its mean)
- ``flownb_messages_routed_total`` (labels ``flow``, ``step``, ``branch``): a route step's messages
  per branch taken; ``branch="unmatched"`` counts those no branch matched (filtered)
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest

from ..health import HEALTH

__all__ = ["StepMetrics", "serve", "add_readiness"]

log = logging.getLogger(__name__)
_LABELS = ("flow", "step")
PROCESSED = Counter("flownb_messages_processed", "inputs fully handled (outputs confirmed, input acked)", _LABELS)
RETRIED = Counter("flownb_messages_retried", "inputs sent back for a later attempt", _LABELS)
DEAD = Counter("flownb_messages_dead_lettered", "inputs sent to the dead-letter queue", _LABELS)
FAILED = Counter("flownb_messages_failed", "processing attempts that raised an error", _LABELS)
NACKED = Counter("flownb_publish_nacked", "publishes refused by the broker (queue full), retried", _LABELS)
ROUTED = Counter("flownb_messages_routed", "a route step's messages per branch taken (unmatched: none)",
                 (*_LABELS, "branch"))
LATENCY = Histogram("flownb_step_latency_seconds", "processing time per message", _LABELS,
                    buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))

_served: set[int] = set()
_lock = threading.Lock()


class StepMetrics:
    """The metric children of one step (cheap to call in the hot path)."""

    def __init__(self, flow: str, step: str):
        self.processed = PROCESSED.labels(flow, step)
        self.retried = RETRIED.labels(flow, step)
        self.dead = DEAD.labels(flow, step)
        self.failed = FAILED.labels(flow, step)
        self.nacked = NACKED.labels(flow, step)
        self.latency = LATENCY.labels(flow, step)
        self._flow = flow

    def routed(self, step: str, branches: list[str]) -> None:
        """Count a route step's message: the branches it took (none: ``unmatched``)."""
        for b in branches or ["unmatched"]:
            ROUTED.labels(self._flow, step, b).inc()


_ready: list[Callable[[], bool]] = []


def add_readiness(check: Callable[[], bool]) -> None:
    """``/readyz`` answers 200 only while every registered check returns True."""
    _ready.append(check)


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        path = self.path.split("?", 1)[0]
        if path in ("/livez", "/healthz", "/readyz"):
            body = HEALTH.report()
            ok = HEALTH.ok if path == "/livez" else HEALTH.ready
            if path == "/readyz":
                ready = all(check() for check in list(_ready))
                body["ready"] = ready
                ok = ok and ready
            self._send(200 if ok else 503, json.dumps(body).encode(), "application/json")
            return
        self._send(200, generate_latest(), CONTENT_TYPE_LATEST)

    do_HEAD = do_GET

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - quiet: probes every few seconds
        pass


def serve(port: int, host: str = "0.0.0.0") -> None:
    """Serve ``/metrics``, ``/livez``, ``/healthz`` and ``/readyz`` on ``port`` once per process."""
    with _lock:
        if port in _served:
            return
        server = ThreadingHTTPServer((host, port), _Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, name="flownb-metrics", daemon=True).start()
        _served.add(port)
    log.info("metrics on http://%s:%d/metrics, health on /livez, /healthz and /readyz", host, port)
