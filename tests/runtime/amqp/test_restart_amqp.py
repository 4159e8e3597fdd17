"""SIGKILL-and-restart of a real ``flownb worker SPEC --all`` on RabbitMQ with each built-in polling
trigger and both JSONata engines: once the restarted worker is the active poller it resumes from the
cursor in the broker, every row arrives at an idempotent sink, and the worker stays healthy
(scenario: ``tests/runtime/restart_kit.py``). The tests share one vhost of their own, deleted with
every queue in it at the end of the module (a vhost per test costs ~10 s of rabbitmqctl under load);
each test's flow has a unique name, so its queues are its own."""

from __future__ import annotations

import subprocess
import uuid

import pika
import pytest
import restart_kit as kit

from flownb import load
from flownb.runtime.amqp.topology import queue_depths

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq, pytest.mark.slow, pytest.mark.timeout(300)]

SOURCES = ["csv", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres), "http", "python"]
#: a crash or SIGKILL duplicates at most the unacked window (≤ prefetch, 200) of each step
#: (docs/rabbitmq.md); shape, slow and log may each have published outputs of unacked inputs
AMQP_DUPLICATES = 3 * 200

ENGINES = ["compiled", "jsonatapy"]


def _ctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def broker():
    """URL of a vhost for this module's tests, deleted (queues and all) afterwards."""
    try:
        pika.BlockingConnection(pika.URLParameters("amqp://guest:guest@127.0.0.1:5672/")).close()
    except pika.exceptions.AMQPError:
        pytest.skip("RabbitMQ is not running on 127.0.0.1:5672")
    vhost = f"flownb-test-restart-{uuid.uuid4().hex[:10]}"
    _ctl("add_vhost", vhost)
    try:
        _ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    finally:
        _ctl("delete_vhost", vhost)


def _run(tmp_path, broker):
    return {"command": ["worker", "{spec}", "--all", "--metrics-port", "{port}"], "env": {"FLOWNB_BROKER_URL": broker}}


def _queues_empty(tmp_path, broker):
    flow = load(tmp_path / "flow.yaml").resolved()
    depths = queue_depths(flow, broker)
    assert all(d == {"ready": 0, "dead": 0, "retry": 0} for d in depths.values()), depths


def _pending(flow, broker):
    """Messages ready or waiting for a retry in the flow's queues (a message in a worker's hand is
    unacked, not ready: the kit asks again after the worker stopped, when the broker has it back)."""
    resolved = flow.resolved()
    return lambda: sum(d["ready"] + d["retry"] for d in queue_depths(resolved, broker).values())


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("kind", SOURCES)
def test_kill_9_and_restart_worker_delivers_every_row(kind, engine, tmp_path, broker):
    if kind == "postgres" and (why := kit.pg_available()):
        pytest.skip(why)
    source = kit.make_source(kind, tmp_path)
    try:
        flow = kit.build_flow(kit.unique_name(f"rs-{kind}-{engine}"), source.trigger(), engine, tmp_path)
        figures = kit.run_kill_restart(source=source, flow=flow, tmp=tmp_path, dup_bound=AMQP_DUPLICATES,
                                       pending=_pending(flow, broker), **_run(tmp_path, broker))
        print(kind, engine, figures)
        _queues_empty(tmp_path, broker)
    finally:
        source.close()


@pytest.mark.parametrize(("engine", "catchup"), [("compiled", True), ("jsonatapy", True), ("compiled", False)])
def test_kill_9_and_restart_worker_schedule_fires(engine, catchup, tmp_path, broker):
    flow = kit.schedule_flow(kit.unique_name(f"rs-schedule-{engine}"), engine, tmp_path, catchup=catchup)
    figures = kit.run_schedule_kill_restart(flow=flow, tmp=tmp_path, catchup=catchup, **_run(tmp_path, broker))
    print("schedule", engine, catchup, figures)
    _queues_empty(tmp_path, broker)
