"""Prometheus metrics of a worker (labels ``flow`` and ``step``), served on ``--metrics-port``.

- ``flownb_messages_processed_total``: inputs whose outcome was committed (outputs confirmed, acked)
- ``flownb_messages_retried_total``: inputs sent to a delay queue
- ``flownb_messages_dead_lettered_total``: inputs sent to the dead-letter queue
- ``flownb_messages_failed_total``: processing attempts that raised (retried or dead-lettered)
- ``flownb_publish_nacked_total``: publishes the broker refused (a full queue); retried later
- ``flownb_step_latency_seconds``: processing time per message (one sample per batch: its mean)
"""

from __future__ import annotations

import logging
import threading

from prometheus_client import Counter, Histogram, start_http_server

__all__ = ["StepMetrics", "serve"]

log = logging.getLogger(__name__)
_LABELS = ("flow", "step")
PROCESSED = Counter("flownb_messages_processed", "inputs fully handled (outputs confirmed, input acked)", _LABELS)
RETRIED = Counter("flownb_messages_retried", "inputs sent back for a later attempt", _LABELS)
DEAD = Counter("flownb_messages_dead_lettered", "inputs sent to the dead-letter queue", _LABELS)
FAILED = Counter("flownb_messages_failed", "processing attempts that raised an error", _LABELS)
NACKED = Counter("flownb_publish_nacked", "publishes refused by the broker (queue full), retried", _LABELS)
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


def serve(port: int, host: str = "0.0.0.0") -> None:
    """Serve ``/metrics`` on ``port`` once per process."""
    with _lock:
        if port in _served:
            return
        start_http_server(port, addr=host)
        _served.add(port)
    log.info("metrics on http://%s:%d/metrics", host, port)
