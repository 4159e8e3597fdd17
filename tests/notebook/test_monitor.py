"""Monitor against the real RabbitMQ broker: queues declared and filled here, under a unique flow name."""

from __future__ import annotations

import re
import time
import uuid

import orjson
import pika
import pytest

import flownb
from flownb.message import Message
from flownb.notebook.monitor import Monitor, management_snapshot, throughput_svg
from flownb.runtime.amqp import names
from flownb.runtime.amqp.topology import ERROR_HEADER, declare_flow
from flownb.runtime.core import ErrorInfo

BROKER = "amqp://guest:guest@127.0.0.1:5672/"


@pytest.fixture
def deployed():
    flow = flownb.Flow(name=f"mon-{uuid.uuid4().hex[:10]}", trigger=flownb.step("in", "webhook", token_env="T"),
                       steps=[flownb.step("first", "log"), flownb.step("second", "log")])
    conn = pika.BlockingConnection(pika.URLParameters(BROKER))
    ch = conn.channel()
    declare_flow(ch, flow)
    yield flow, ch
    for s in flow.steps:
        for q in (names.step_queue(flow.name, s.name), names.dead_letter_queue(flow.name, s.name),
                  names.retry_ready_queue(flow.name, s.name)):
            ch.queue_delete(q)
        for lvl in (1000, 2000, 4000, 8000):
            ch.queue_delete(names.retry_queue(flow.name, s.name, lvl))
    ch.queue_delete(names.state_queue(flow.name, flow.trigger.name))
    ch.exchange_delete(names.exchange(flow.name))
    conn.close()


def _fill(flow, ch, ready: int, dead: int) -> None:
    for i in range(ready):
        ch.basic_publish(names.exchange(flow.name), "first", Message(body={"i": i}).to_json())
    for i in range(dead):
        m = Message(body={"bad": i}, flow=flow.name, step="second")
        info = ErrorInfo(type="FatalError", message="boom", step="second", attempt=1, retryable=False)
        ch.basic_publish("", names.dead_letter_queue(flow.name, "second"), m.to_json(),
                         pika.BasicProperties(headers={ERROR_HEADER: orjson.dumps(info.to_dict()).decode()},
                                              delivery_mode=2))


def _wait(fn, timeout: float = 30.0):
    """Management figures lag the broker by its statistics interval (5 s): poll until they agree."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.5)


@pytest.mark.integration
@pytest.mark.rabbitmq
def test_depths_and_replay_with_passive_declares(deployed):
    flow, ch = deployed
    _fill(flow, ch, ready=3, dead=2)
    mon = Monitor(flow, BROKER, management_url=None, autostart=False)
    snap = mon.snapshot
    assert snap.source == "amqp"
    assert snap.steps["first"]["ready"] == 3
    assert snap.steps["second"]["dead"] == 2 and snap.steps["second"]["ready"] == 0
    assert "flownb-monitor-table" in mon.table._dom_classes
    assert ">3<" in mon.table.value and ">2<" in mon.table.value
    assert [d.message.body for d in mon.dead_letters("second")] == [{"bad": 0}, {"bad": 1}]
    mon.replay_button.click()
    assert "replayed 2 dead letters" in mon.status.value
    assert mon.snapshot.steps["second"] == {**mon.snapshot.steps["second"], "dead": 0, "ready": 2}


@pytest.mark.integration
@pytest.mark.rabbitmq
def test_management_figures_rates_and_plot(deployed):
    flow, ch = deployed
    _fill(flow, ch, ready=5, dead=1)
    snap = _wait(lambda: (s := management_snapshot(flow, BROKER)).steps["first"]["ready"] == 5
                 and s.steps["second"]["dead"] == 1 and s)
    assert snap, "the management API never reported 5 ready and 1 dead"
    assert snap.source == "management" and snap.steps["first"]["consumers"] == 0
    assert snap.steps["first"]["in_rate"] is not None
    mon = Monitor(flow, BROKER, interval=0.2)
    try:
        assert _wait(lambda: len(mon.history) >= 3, timeout=20)
    finally:
        mon.stop()
    assert mon._thread is None
    assert "<polyline" in mon.plot.value and "processed msg/s" in mon.plot.value
    assert "from management" in mon.status.value


@pytest.mark.integration
@pytest.mark.rabbitmq
def test_unreachable_broker_is_a_message_not_a_traceback(deployed):
    flow, _ = deployed
    mon = Monitor(flow, "amqp://guest:guest@127.0.0.1:1/", management_url="http://127.0.0.1:1",
                  autostart=False)
    assert mon.snapshot is None
    assert "cannot read the broker" in mon.status.value
    mon.replay_button.click()
    assert "replay failed" in mon.status.value


def test_plot_needs_two_points():
    assert "after two refreshes" in throughput_svg([])


def test_plot_label_is_a_plain_number_even_when_nothing_waits():
    from flownb.notebook.monitor import Snapshot
    idle = [Snapshot(at=100.0 + i, source="amqp", steps={"a": {"ready": 0}}) for i in range(3)]
    svg = throughput_svg(idle)
    assert "messages waiting (max 0) over 2s" in svg  # not "max 1e-09"
    assert not re.search(r"\de[-+]\d", svg)  # no scientific notation anywhere
    busy = [Snapshot(at=100.0 + i, source="management", steps={"a": {"out_rate": r}}) for i, r in
            enumerate((0.0, 1234.56))]
    assert "processed msg/s (max 1,234.6) over 1s" in throughput_svg(busy)
