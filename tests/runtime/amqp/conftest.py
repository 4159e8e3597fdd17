"""Fixtures for the RabbitMQ runtime tests: a throw-away vhost per test, workers in threads."""

from __future__ import annotations

import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pika
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import amqp_components  # noqa: E402,F401  (registers amqptest.*)

from flownb.runtime.amqp.worker import make_worker, run_workers  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq]


def _ctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


def _broker_up() -> bool:
    try:
        pika.BlockingConnection(pika.URLParameters("amqp://guest:guest@127.0.0.1:5672/")).close()
        return True
    except pika.exceptions.AMQPError:
        return False


@pytest.fixture
def broker():
    """URL of a fresh vhost, deleted afterwards."""
    if not _broker_up():
        pytest.skip("RabbitMQ is not running on 127.0.0.1:5672")
    vhost = f"flownb-test-{uuid.uuid4().hex[:10]}"
    _ctl("add_vhost", vhost)
    _ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    yield f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    _ctl("delete_vhost", vhost)


class Running:
    """Workers of some steps running in threads of this process."""

    def __init__(self, flow, steps, broker, prefetch=None):
        self.workers = [make_worker(flow, s, broker, prefetch=prefetch) for s in steps]
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=run_workers, args=(self.workers, self.stop_event), daemon=True)

    def __enter__(self):
        self.thread.start()
        for w in self.workers:
            assert w.consuming.wait(15), "worker did not start consuming"
        return self

    def stop(self):
        self.stop_event.set()
        self.thread.join(60)
        assert not self.thread.is_alive(), "workers did not stop"

    def __exit__(self, *exc):
        self.stop()


@pytest.fixture
def running():
    started = []

    def start(flow, steps, broker, prefetch=None):
        r = Running(flow.resolved(), steps, broker, prefetch).__enter__()
        started.append(r)
        return r
    yield start
    for r in started:
        if r.thread.is_alive():
            r.stop()
