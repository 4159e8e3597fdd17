"""On RabbitMQ a step whose setup() fails does not consume: its messages stay in the queue (none
dead-lettered), /healthz and /readyz answer 503 with the reason, and it starts consuming by itself
once setup() works."""

from __future__ import annotations

import csv
import json
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent))
from amqp_components import wait_for  # noqa: E402
from setup_flows import Listener, flow, free_port, trigger_flow  # noqa: E402

from flownb.message import Message  # noqa: E402
from flownb.runtime.amqp import names  # noqa: E402
from flownb.runtime.amqp.metrics import add_readiness, serve  # noqa: E402
from flownb.runtime.amqp.step_worker import PERSISTENT, StepWorker  # noqa: E402
from flownb.runtime.amqp.topology import connect, declare_flow, queue_depths  # noqa: E402
from flownb.runtime.health import HEALTH  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq]


def _get(port: int, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_a_step_whose_setup_fails_leaves_its_messages_queued_and_resumes(broker, tmp_path):
    svc, out = free_port(), tmp_path / "out.csv"
    f = flow("setup-amqp", svc, out).resolved()
    conn = connect(broker)
    try:
        ch = conn.channel()
        declare_flow(ch, f)
        ch.confirm_delivery()
        for i in range(4):
            ch.basic_publish(names.exchange(f.name), "enrich",
                             Message(body={"id": i}, flow=f.name, step="shape").to_json(), PERSISTENT)
    finally:
        conn.close()
    HEALTH.reset()
    metrics = free_port()
    worker = StepWorker(f, "enrich", broker)
    add_readiness(worker.consuming.is_set)
    serve(metrics, host="127.0.0.1")
    out_worker = StepWorker(f, "out", broker)
    threads = [threading.Thread(target=w.run, daemon=True) for w in (worker, out_worker)]
    listener = None
    try:
        for t in threads:
            t.start()
        wait_for(lambda: not HEALTH.ready, timeout=20, what="enrich reported not ready")
        status, body = _get(metrics, "/healthz")
        assert status == 503 and body["status"] == "not ready"
        assert "step 'enrich'" in body["not_ready"][0]["where"]
        assert "ConnectionRefusedError" in body["not_ready"][0]["why"]
        assert _get(metrics, "/readyz")[0] == 503
        assert _get(metrics, "/livez")[0] == 200  # alive: a restart would not help
        time.sleep(1.5)
        depths = queue_depths(f, broker)["enrich"]
        assert depths == {"ready": 4, "dead": 0, "retry": 0}
        assert not worker.consuming.is_set()
        listener = Listener(svc)

        def delivered() -> bool:
            if not out.exists():
                return False
            with out.open() as fh:
                return len(list(csv.DictReader(fh))) == 4
        wait_for(delivered, timeout=30, what="4 rows after setup() worked")
        assert HEALTH.ready and _get(metrics, "/healthz")[0] == 200
        assert queue_depths(f, broker)["enrich"]["dead"] == 0
    finally:
        for w in (worker, out_worker):
            w.stop()
        for t in threads:
            t.join(30)
        if listener:
            listener.close()
        HEALTH.reset()


def test_a_trigger_whose_setup_fails_keeps_polling_and_emits_once_it_works(broker, tmp_path):
    """The trigger worker asks next_delay() when it receives the cursor; while setup() fails that
    used to raise inside pika's callback and kill the trigger thread (exit 70, a crash loop)."""
    from flownb.runtime.amqp.trigger import TriggerWorker
    svc = free_port()
    f = trigger_flow("trigger-setup-amqp", svc, tmp_path / "out.csv").resolved()
    trigger = TriggerWorker(f, broker, max_polls=1)
    died: list[BaseException] = []

    def run() -> None:
        try:
            trigger.run()
        except BaseException as exc:  # noqa: BLE001
            died.append(exc)
    t = threading.Thread(target=run, daemon=True)
    listener = None
    try:
        t.start()
        wait_for(lambda: trigger.metrics.failed._value.get() >= 2, timeout=30, what="two failed polls")
        assert t.is_alive() and not died
        listener = Listener(svc)
        wait_for(lambda: queue_depths(f, broker)["out"]["ready"] == 3, timeout=30, what="3 emitted")
        t.join(15)
        assert not t.is_alive() and not died  # max_polls=1: one committed poll, then it returns
    finally:
        trigger.stop()
        t.join(10)
        if listener:
            listener.close()
