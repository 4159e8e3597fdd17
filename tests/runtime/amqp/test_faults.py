"""Faults survived: killed workers, SIGTERM drains, a restarted broker, a target answering 503.

The broker restart happens on a private node (``private_broker``, scripts/rabbit-node): the broker
on 127.0.0.1:5672 is shared with other people's test runs and is never stopped or reconfigured."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pika
import pytest
from amqp_components import sink_counts, wait_for

import flownb
from flownb.runtime.amqp.dlq import AmqpDeadLetters
from flownb.runtime.amqp.metrics import RETRIED
from flownb.runtime.amqp.topology import queue_depths
from flownb.runtime.amqp.trigger import read_state
from flownb.testing import HttpTarget

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq]
RUN_WORKER = Path(__file__).parent / "run_worker.py"
PREFETCH = 200


def three_steps(name, db, total, batch=500):
    return flownb.Flow(name=name, trigger=flownb.step("src", "amqptest.count", total=total, batch=batch,
                                                       interval="20ms"),
                       steps=[flownb.step("work", "amqptest.work"),
                              flownb.step("sink", "amqptest.sink", path=str(db))])


class Spawned:
    """A ``flownb worker`` subprocess; start() returns once it logs that it is consuming."""

    def __init__(self, spec, step, broker, *extra):
        self.proc = subprocess.Popen([sys.executable, str(RUN_WORKER), "worker", str(spec), "--step", step,
                                      "--broker", broker, "--prefetch", str(PREFETCH), *extra],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        assert self.ready.wait(20), "worker did not start consuming: " + "".join(self.lines)[-2000:]

    def _read(self):
        for line in self.proc.stderr:
            self.lines.append(line)
            if "consuming" in line:
                self.ready.set()

    def signal(self, sig):
        self.proc.send_signal(sig)
        return self.proc.wait(30)

    @property
    def log(self):
        return "".join(self.lines)[-3000:]


def spawn(spec, step, broker, *extra):
    return Spawned(spec, step, broker, *extra)


@pytest.mark.slow
def test_sigkilled_worker_loses_nothing(broker, running, tmp_path):
    db = tmp_path / "sink.db"
    total, kills = 20_000, 4
    flow = three_steps("kill", db, total)
    spec = flow.save(tmp_path / "flow.yaml")
    running(flow, ["src", "sink"], broker)
    proc = spawn(spec, "work", broker)
    try:
        for k in range(kills):
            wait_for(lambda k=k: sink_counts(db)[0] >= (k + 1) * total // (kills + 2), timeout=120,
                     what=f"progress before kill {k + 1}")
            assert proc.signal(signal.SIGKILL) == -signal.SIGKILL
            proc = spawn(spec, "work", broker)
        wait_for(lambda: sink_counts(db)[0] == total, timeout=180, every=0.25, what="all 20,000 at the sink")
        # the windows each kill returned run one at a time from the suspect queue (poison detection):
        # the flow is at rest once they are done (they are repeats: the sink already has them)
        wait_for(lambda: queue_depths(flow, broker)["work"] == {"ready": 0, "dead": 0, "retry": 0}, timeout=180,
                 every=0.5, what="the step's queues empty (suspects processed)")
    finally:
        assert proc.signal(signal.SIGTERM) == 0, proc.log
    seen, deliveries = sink_counts(db)
    print(f"kills={kills} duplicates={deliveries - seen}")
    assert seen == total                                 # every message reached the (idempotent) sink
    assert deliveries - seen <= kills * PREFETCH         # duplicates only within the unacked window
    assert queue_depths(flow, broker)["work"] == {"ready": 0, "dead": 0, "retry": 0}


def test_sigterm_drains_in_flight_work_and_exits_0(broker, running, tmp_path):
    db = tmp_path / "sink.db"
    total = 5000
    flow = three_steps("term", db, total, batch=250)
    flow = flow.model_copy(update={"steps": [flownb.step("work", "amqptest.work", sleep_ms=1),
                                             flow.steps[1]]})
    spec = flow.save(tmp_path / "flow.yaml")
    running(flow, ["src", "sink"], broker)
    for _ in range(3):  # stop it mid-flow three times; every stop must be clean
        proc = spawn(spec, "work", broker)
        wait_for(lambda: queue_depths(flow, broker)["sink"]["ready"] > 0 or sink_counts(db)[0] > 0,
                 timeout=30, what="work flowing")
        time.sleep(0.3)
        assert proc.signal(signal.SIGTERM) == 0, proc.log
        assert "draining" in proc.log
    proc = spawn(spec, "work", broker)
    try:
        wait_for(lambda: sink_counts(db)[0] == total, timeout=120, what="all messages")
    finally:
        assert proc.signal(signal.SIGTERM) == 0, proc.log
    assert sink_counts(db) == (total, total)  # drained stops: not a single duplicate


@pytest.mark.slow
def test_workers_reconnect_after_a_broker_restart(private_broker, running, tmp_path, caplog):
    broker = private_broker.new_vhost()  # a node of this process's own: the one on 5672 is shared
    db = tmp_path / "sink.db"
    total = 10_000
    flow = three_steps("restart", db, total, batch=200)
    r = running(flow, ["src", "work", "sink"], broker, prefetch=PREFETCH)
    wait_for(lambda: sink_counts(db)[0] >= 2000, timeout=60, what="progress before the restart")
    before = sink_counts(db)[0]
    private_broker.restart()  # stop_app, start_app: every connection is dropped
    print(f"at the sink: {before} before the restart, {sink_counts(db)[0]} once it was back")
    wait_for(lambda: sink_counts(db)[0] == total, timeout=180, every=0.25, what="all messages after restart")
    r.stop()
    seen, deliveries = sink_counts(db)
    assert seen == total
    assert deliveries - seen <= 3 * PREFETCH
    assert read_state(flow, broker) == {"next": total}
    assert "connection lost" in caplog.text  # the workers did lose the broker, and came back


@pytest.mark.slow
def test_target_answering_503_for_20s_is_retried_until_it_recovers(broker, running, tmp_path):
    target = HttpTarget(outage=20.0, status=503).start()
    db = tmp_path / "sink.db"
    url = f"{target.url}/orders"
    flow = flownb.Flow(
        name="outage", trigger=flownb.step("src", "amqptest.count", total=100, batch=100, interval="50ms"),
        steps=[flownb.step("push", "http.request", method="POST", url=url, output="input",
                           retry={"max_attempts": 10, "initial": "500ms", "max": "4s"}),
               flownb.step("sink", "amqptest.sink", path=str(db))])
    before = RETRIED.labels("outage", "push")._value.get()
    r = running(flow, ["src", "push", "sink"], broker)
    wait_for(lambda: sink_counts(db)[0] == 100, timeout=90, every=0.25, what="delivery after the outage")
    r.stop()
    target.stop()
    assert sorted({r.json["n"] for r in target.received}) == list(range(100))
    assert target.refused >= 100                     # every message met the outage at least once
    assert RETRIED.labels("outage", "push")._value.get() - before >= 100
    assert AmqpDeadLetters(flow, broker).list() == []
    assert sink_counts(db) == (100, 100)


@pytest.mark.slow
def test_a_step_slower_than_the_heartbeat_keeps_its_connection(broker, running, tmp_path, caplog):
    from flownb.runtime.amqp.step_worker import StepWorker
    from flownb.runtime.amqp.worker import run_workers
    db = tmp_path / "sink.db"
    flow = flownb.Flow(name="hb", trigger=flownb.step("src", "amqptest.count", total=2, batch=2),
                       steps=[flownb.step("work", "amqptest.work", sleep_ms=8000),
                              flownb.step("sink", "amqptest.sink", path=str(db))]).resolved()
    r = running(flow, ["src", "sink"], broker)
    # a heartbeat of 2 s: the broker drops a silent peer after ~4-6 s, well inside each 8 s step (a
    # 1 s heartbeat against a 4 s step left a busy machine ~2 s of scheduling slack)
    slow = StepWorker(flow, "work", broker, heartbeat=2)
    stop = threading.Event()
    t = threading.Thread(target=run_workers, args=([slow], stop), daemon=True)
    t.start()
    try:
        wait_for(lambda: sink_counts(db)[0] == 2, timeout=120, what="both messages")
    finally:
        stop.set()
        t.join(60)
    r.stop()
    # judged at rest: every worker stopped (drained) and nothing left in any queue of the flow, so no
    # redelivery can still come
    assert not t.is_alive()
    assert queue_depths(flow, broker) == {s: {"ready": 0, "dead": 0, "retry": 0} for s in ("work", "sink")}
    assert sink_counts(db) == (2, 2)  # no redelivery: the connection stayed up while the step slept
    assert "connection lost" not in caplog.text


SHARED = "amqp://guest:guest@127.0.0.1:5672/"


def _server_node(url):
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        return conn._impl.server_properties["cluster_name"]
    finally:
        conn.close()


def test_the_private_node_is_not_the_shared_broker(private_broker):
    try:
        shared = _server_node(SHARED)
    except pika.exceptions.AMQPConnectionError:
        pytest.skip("RabbitMQ is not running on 127.0.0.1:5672")
    mine = _server_node(private_broker.url)
    assert mine.startswith(private_broker.name + "@") and mine != shared
    queue = f"flownb-private-{uuid.uuid4().hex[:10]}"
    conn = pika.BlockingConnection(pika.URLParameters(private_broker.url))
    try:
        conn.channel().queue_declare(queue, auto_delete=True)
        assert queue in private_broker.ctl("list_queues", "name").split()
        other = pika.BlockingConnection(pika.URLParameters(SHARED))
        try:
            with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
                other.channel().queue_declare(queue, passive=True)
            assert e.value.reply_code == 404  # not on the shared broker
        finally:
            other.close()
    finally:
        conn.close()
    # stopping it leaves the shared broker serving
    try:
        private_broker.stop_app()
        with pytest.raises(pika.exceptions.AMQPConnectionError):
            _server_node(private_broker.url)
        assert _server_node(SHARED) == shared
    finally:
        private_broker.start_app()
    assert _server_node(private_broker.url) == mine


@pytest.mark.slow
def test_a_private_node_takes_extra_config(private_broker_with, private_broker):
    small = private_broker_with(max_message_size=65536)
    assert small.name != private_broker.name and small.port != private_broker.port
    conn = pika.BlockingConnection(pika.URLParameters(small.url))
    try:
        ch = conn.channel()
        ch.queue_declare("big", auto_delete=True)
        ch.basic_publish("", "big", b"x" * 60_000)
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
            ch.basic_publish("", "big", b"x" * 70_000)
            ch.queue_declare("big", passive=True)  # a round trip: the broker's answer to the publish
        assert e.value.reply_code == 406 and "larger than configured max size 65536" in e.value.reply_text
    finally:
        conn.close()
