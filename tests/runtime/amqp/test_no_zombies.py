"""No zombie workers on RabbitMQ: a thread that dies of any exception (a ``BaseException`` such as a
pyo3 panic included) is logged with its step, turns ``/healthz`` to 503 and ends ``flownb worker`` with
status 70 within 5 s; its messages go back to the queue. SIGTERM ends a worker whose step never
returns within its grace period."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent))
from amqp_components import wait_for  # noqa: E402
from zombie_flows import Proc, assert_crashed_with_70, flow  # noqa: E402

from flownb.message import Message  # noqa: E402
from flownb.runtime.amqp import names  # noqa: E402
from flownb.runtime.amqp.metrics import serve  # noqa: E402
from flownb.runtime.amqp.step_worker import PERSISTENT, StepWorker  # noqa: E402
from flownb.runtime.amqp.topology import connect, declare_flow, queue_depths  # noqa: E402
from flownb.runtime.health import HEALTH  # noqa: E402
from tests.processes import free_port as _port

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq]




def _env(broker: str, **extra: str) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin"), "HOME": os.environ.get("HOME", "/root"),
            "FLOWNB_BROKER_URL": broker, **extra}


def _publish(f, broker: str, step: str, n: int) -> None:
    conn = connect(broker)
    try:
        ch = conn.channel()
        declare_flow(ch, f)
        ch.confirm_delivery()
        for i in range(n):
            ch.basic_publish(names.exchange(f.name), step,
                             Message(body={"id": i, "n": i * 2}, flow=f.name, step="shape").to_json(),
                             PERSISTENT)
    finally:
        conn.close()


def _healthz(port: int) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.parametrize("how", [["--all"], ["--step", "boom"]], ids=["all", "one-step"])
def test_a_thread_dying_of_a_base_exception_ends_the_worker_with_70_within_5s(broker, tmp_path, how):
    f = flow("zombie-amqp", "crash")
    spec = f.save(tmp_path / "flow.yaml")
    if how != ["--all"]:
        _publish(f, broker, "boom", 5)
    proc = Proc(["worker", str(spec), *how, "--metrics-port", str(_port())], _env(broker))
    assert_crashed_with_70(proc)
    # nothing lost: the deliveries that were in the dead thread went back to boom's queue
    wait_for(lambda: queue_depths(f, broker)["boom"]["ready"] == 5, timeout=20, what="5 requeued for boom")
    assert queue_depths(f, broker)["boom"]["dead"] == 0


def test_healthz_turns_503_naming_the_step_when_the_processing_thread_dies(broker):
    f = flow("zombie-health", "crash").resolved()
    port = _port()
    serve(port, host="127.0.0.1")
    HEALTH.reset()
    worker = StepWorker(f, "boom", broker)
    raised: list[BaseException] = []

    def run() -> None:
        try:
            worker.run()
        except BaseException as exc:  # noqa: BLE001
            raised.append(exc)
    t = threading.Thread(target=run, daemon=True)
    try:
        assert _healthz(port)[0] == 200
        t.start()
        assert worker.consuming.wait(15)
        _publish(f, broker, "boom", 3)
        t.join(15)
        assert not t.is_alive(), "the worker kept running after its processing thread died"
        status, body = _healthz(port)
        assert status == 503
        assert body["status"] == "failed"
        assert "step 'boom'" in body["failures"][0]["where"]
        assert "SimulatedPanic" in body["failures"][0]["error"]
        assert raised and "processing thread died" in str(raised[0])
    finally:
        worker.stop()
        HEALTH.reset()
    wait_for(lambda: queue_depths(f, broker)["boom"]["ready"] == 3, timeout=20, what="3 requeued")


def test_sigterm_ends_a_worker_whose_step_never_returns_within_the_grace_period(broker, tmp_path):
    f = flow("hang-amqp", "hang")
    spec = f.save(tmp_path / "flow.yaml")
    _publish(f, broker, "boom", 2)
    proc = Proc(["worker", str(spec), "--step", "boom"], _env(broker, FLOWNB_STOP_GRACE="3"))
    try:
        proc.first("consuming", timeout=60)
        time.sleep(1.0)  # the step is inside time.sleep(3600)
        sent = time.monotonic()
        proc.p.send_signal(signal.SIGTERM)
        code, exited = proc.wait(30)
    finally:
        proc.kill()
    assert code == 124, proc.stderr()
    assert exited - sent < 3.0 + 2.0
    wait_for(lambda: queue_depths(f, broker)["boom"]["ready"] == 2, timeout=20, what="2 requeued")
