"""Error flows on RabbitMQ: dead letters' events travel in flownb.<flow>.errors to the on_error worker
(`flownb worker SPEC --step on_error`), which delivers a window and acks only then — a worker killed
while it holds events gives them back; a step whose setup() fails reports it; a spec without
on_error refuses the on_error worker (exit 2)."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))
from amqp_components import wait_for  # noqa: E402
from setup_flows import flow as setup_flow  # noqa: E402
from setup_flows import free_port  # noqa: E402

import flownb  # noqa: E402
from flownb.flow import OnError  # noqa: E402
from flownb.message import Message  # noqa: E402
from flownb.runtime.amqp import names  # noqa: E402
from flownb.runtime.amqp.dlq import AmqpDeadLetters  # noqa: E402
from flownb.runtime.amqp.step_worker import PERSISTENT  # noqa: E402
from flownb.runtime.amqp.topology import connect, declare_flow  # noqa: E402
from flownb.testing import HttpTarget  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq]
FLOWNB = [str(Path(sys.executable).parent / "flownb")]


def _worker(spec: Path, step: str, broker: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen([*FLOWNB, "worker", str(spec), "--step", step, "--broker", broker],
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)


def _publish(broker: str, flow: flownb.Flow, bodies: list[dict]) -> None:
    conn = connect(broker)
    try:
        ch = conn.channel()
        declare_flow(ch, flow)
        ch.confirm_delivery()
        for b in bodies:
            ch.basic_publish(names.exchange(flow.name), flow.steps[0].name,
                             Message(body=b, flow=flow.name, step=flow.trigger.name).to_json(), PERSISTENT)
    finally:
        conn.close()


def _ready(broker: str, queue: str) -> int:
    conn = connect(broker)
    try:
        return conn.channel().queue_declare(queue, passive=True).method.message_count
    finally:
        conn.close()


def _rows(db: Path) -> list[tuple]:
    if not db.exists():
        return []
    with sqlite3.connect(db) as conn:
        try:
            return conn.execute("SELECT id, value FROM errors ORDER BY value").fetchall()
        except sqlite3.OperationalError:
            return []


def _stop(*procs: subprocess.Popen) -> list[int]:
    for p in procs:
        p.send_signal(signal.SIGTERM)
    return [p.wait(60) for p in procs]


def test_a_killed_on_error_worker_gives_its_events_back_and_none_is_lost(broker, tmp_path):
    db = tmp_path / "errors.db"
    flow = flownb.Flow(
        name="oe-amqp", trigger=flownb.step("in", "webhook", token_env="OE_TOKEN"),
        steps=[flownb.step("check", "mapping", fields={
            "id": "id", "v": "value < 0 ? $error('negative value ' & $string(value)) : value * 2"})],
        on_error={"every": "1h", "batch": 500, "steps": [
            {"name": "each", "component": "split", "config": {"path": "events"}},
            {"name": "row", "component": "mapping", "config": {"fields": {"id": "message_id", "value": "body.value"}}},
            {"name": "errors", "component": "sql.upsert",
             "config": {"url": f"sqlite:///{db}", "table": "errors", "key": ["id"], "create": True}}]})
    spec = flow.save(tmp_path / "flow.yaml")
    log = tmp_path / "workers.log"
    check = _worker(spec, "check", broker, log)
    first = _worker(spec, names.ON_ERROR_WORKER, broker, log)
    errors_q = names.errors_queue(flow.name)
    try:
        _publish(broker, flow, [{"id": 0, "value": -1}, {"id": 1, "value": 1}])
        wait_for(lambda: len(_rows(db)) == 1, timeout=60, what="the first failure delivered at once")
        # the next failures fall in the window of an hour: the worker holds them unacked
        _publish(broker, flow, [{"id": i, "value": -i - 1} for i in range(2, 6)] + [{"id": 9, "value": 3}])
        wait_for(lambda: len(AmqpDeadLetters(flow, broker).list()) == 5, timeout=60, what="5 dead letters")
        wait_for(lambda: _ready(broker, errors_q) == 0, timeout=30, what="the worker to take the events")
        assert len(_rows(db)) == 1
        first.kill()  # SIGKILL: the held events go back to the queue
        first.wait(30)
        wait_for(lambda: _ready(broker, errors_q) == 4, timeout=30, what="the held events back in the queue")
        second = _worker(spec, names.ON_ERROR_WORKER, broker, log)
        wait_for(lambda: len(_rows(db)) == 5, timeout=60, what="the events delivered by the new worker")
        assert _stop(check, second) == [0, 0], log.read_text()[-3000:]
    finally:
        for p in (check, first):
            if p.poll() is None:
                p.kill()
    dead = {d.message.id for d in AmqpDeadLetters(flow, broker).list()}
    rows = _rows(db)
    assert {r[0] for r in rows} == dead and [r[1] for r in rows] == [-6, -5, -4, -3, -1]
    assert _ready(broker, errors_q) == 0


def test_a_step_whose_setup_fails_reports_it_to_on_error(broker, tmp_path):
    port = free_port()  # nothing listens: the step's setup() is refused
    with HttpTarget() as chat:
        flow = setup_flow("oe-setup-amqp", port, tmp_path / "out.csv").model_copy(update={
            "on_error": OnError.model_validate({"every": "1s", "steps": [
                {"name": "post", "component": "http.request", "config": {"url": chat.url + "/hook"}}]})})
        spec = flow.save(tmp_path / "flow.yaml")
        log = tmp_path / "workers.log"
        enrich = _worker(spec, "enrich", broker, log)
        on_error = _worker(spec, names.ON_ERROR_WORKER, broker, log)
        try:
            wait_for(lambda: chat.received, timeout=60, what="the setup() failure delivered")
            assert _stop(enrich, on_error) == [0, 0], log.read_text()[-3000:]
        finally:
            for p in (enrich, on_error):
                if p.poll() is None:
                    p.kill()
        ev = chat.received[0].json["events"][0]
    assert (ev["kind"], ev["step"], ev["error_type"]) == ("setup_failed", "enrich", "ConfigError")
    assert "Connection refused" in ev["error"]


def test_the_on_error_worker_of_a_flow_without_on_error_is_refused(broker, tmp_path):
    flow = flownb.Flow(name="oe-none", trigger=flownb.step("in", "webhook", token_env="OE_TOKEN"),
                       steps=[flownb.step("say", "log")])
    spec = flow.save(tmp_path / "flow.yaml")
    r = subprocess.run([*FLOWNB, "worker", str(spec), "--step", names.ON_ERROR_WORKER, "--broker", broker],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "has no on_error actions" in r.stderr and "docs/errors.md" in r.stderr
