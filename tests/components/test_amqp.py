"""amqp.consume and amqp.publish against the real RabbitMQ on 127.0.0.1:5672, on queues and
exchanges of each test's own (unique names, deleted after; flownb's own topology is never touched):
an uncommitted batch handed out again, a committed one acknowledged once, SIGKILL between receive
and commit loses nothing, a round trip through ``flownb run``, publisher confirms with mandatory
routing, reserved names refused, outages retried."""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
import time
from pathlib import Path

import orjson
import pika
import pytest

from flownb.components.base import classify
from flownb.errors import ConfigError, FatalError, RetryableError
from flownb.flow import load as load_flow
from flownb.message import Message
from flownb.runtime.core import StepRunner, TriggerRunner

sys.path.insert(0, str(Path(__file__).parent))
from flow_kit import csv_ids, kill_while_committing, records_in, run, start, wait_first_poll, write_flow
from mqtt_kit import free_port, listening, unique

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq]

URL = "amqp://guest:guest@127.0.0.1:5672/%2F"


def channel():
    conn = pika.BlockingConnection(pika.URLParameters(URL))
    return conn, conn.channel()


def send(queue: str, bodies) -> None:
    conn, ch = channel()
    try:
        ch.confirm_delivery()
        for b in bodies:
            ch.basic_publish("", queue, b if isinstance(b, bytes) else orjson.dumps(b),
                             pika.BasicProperties(delivery_mode=2))
    finally:
        conn.close()


def ready(queue: str) -> int:
    """Messages ready in ``queue`` (not delivered, or returned by a closed consumer)."""
    conn, ch = channel()
    try:
        return ch.queue_declare(queue, passive=True).method.message_count
    finally:
        conn.close()


def drain(queue: str) -> list[dict]:
    conn, ch = channel()
    out = []
    try:
        while True:
            method, _props, body = ch.basic_get(queue, auto_ack=True)
            if method is None:
                return out
            out.append(orjson.loads(body))
    finally:
        conn.close()


@pytest.fixture
def queues():
    """``queues()`` → the name of a new durable queue of this test; deleted after."""
    if not listening(5672):
        pytest.skip("RabbitMQ is not running on 127.0.0.1:5672 (scripts/services starts it)")
    made: list[str] = []

    def new() -> str:
        name = unique("t-amqp")
        conn, ch = channel()
        ch.queue_declare(name, durable=True)
        conn.close()
        made.append(name)
        return name
    yield new
    conn, ch = channel()
    for q in made:
        ch.queue_delete(q)
    conn.close()


def test_uncommitted_batch_again_committed_batch_acked_once(queues, trigger_runner):
    q = queues()
    send(q, [{"id": i} for i in range(3)])
    runner = trigger_runner("amqp.consume", {"queue": q, "wait": "300ms"})
    msgs, _, state1 = runner.poll({})
    assert [m.body["id"] for m in msgs] == [0, 1, 2] and ready(q) == 0  # delivered, unacknowledged
    msgs, _, state2 = runner.poll({})  # not committed: the same messages again
    assert [m.body["id"] for m in msgs] == [0, 1, 2] and state2["batch"] != state1["batch"]
    msgs, _, state3 = runner.poll(state2)  # committed: acknowledged, nothing new
    assert msgs == []
    runner.close()
    assert ready(q) == 0  # acknowledged: closing returned nothing
    send(q, [{"id": 3}])
    runner = trigger_runner("amqp.consume", {"queue": q, "wait": "300ms", "envelope": True})
    msgs, _, state = runner.poll(state3)
    assert [m.body["payload"] for m in msgs] == [{"id": 3}] and msgs[0].body["routing_key"] == q
    runner.close()  # not committed: the broker requeues it
    deadline = time.monotonic() + 10
    while ready(q) != 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    runner = trigger_runner("amqp.consume", {"queue": q, "wait": "300ms", "envelope": True})
    msgs = runner.poll(state3)[0]
    assert [m.body["payload"] for m in msgs] == [{"id": 3}] and msgs[0].body["redelivered"] is True


def test_bodies_and_bad_json_stays_visible(queues, trigger_runner):
    q = queues()
    send(q, [{"a": 1}, b"{oops", b"7"])
    bodies = [m.body for m in trigger_runner("amqp.consume", {"queue": q, "wait": "300ms"}).poll({})[0]]
    assert bodies[0] == {"a": 1} and bodies[2] == {"payload": 7}
    assert bodies[1]["_raw"] == "{oops" and "not JSON" in bodies[1]["_error"]


def test_round_trip_through_the_embedded_runtime(queues, tmp_path):
    src, dst = queues(), queues()
    spec = write_flow(tmp_path, "amqp-rt", {"component": "amqp.consume", "config": {"queue": src, "batch_size": 100}},
                      [{"name": "tag", "component": "mapping", "config": {"fields": {"id": "id", "twice": "id * 2"}}},
                       {"name": "out", "component": "amqp.publish", "config": {"routing_key": dst}},
                       {"name": "save", "component": "csv.write", "config": {"path": "out.csv"}}])
    state = tmp_path / "state"
    send(src, [{"id": i} for i in range(750)])
    assert "750 record(s) in from 'src'" in records_in(run(spec, state))
    out = drain(dst)
    assert sorted(b["id"] for b in out) == list(range(750)) and all(b["twice"] == 2 * b["id"] for b in out)
    assert sorted(csv_ids(tmp_path / "out.csv")) == list(range(750))
    assert ready(src) == 0
    send(src, [{"id": i} for i in range(750, 755)])
    assert "5 record(s) in from 'src'" in records_in(run(spec, state))
    assert ready(src) == 0 and len(drain(dst)) == 5


def test_sigkill_between_receive_and_commit_loses_nothing(queues, tmp_path):
    """The process receives messages, then cannot commit them (the test holds the SQLite write lock)
    and is killed with SIGKILL: the broker requeues them, the restarted process hands them out."""
    src = queues()
    spec = write_flow(tmp_path, "amqp-kill", {"component": "amqp.consume", "config": {"queue": src, "interval": "3s"}},
                      [{"name": "save", "component": "csv.write", "config": {"path": "out.csv"}}])
    state = tmp_path / "state"
    kill_while_committing(spec, state, send=lambda: send(src, [{"id": i} for i in range(40)]),
                          received=lambda: ready(src) == 0,  # all delivered to the trigger, unacknowledged
                          settle=3.5)  # the next poll has taken them and waits for the lock
    assert csv_ids(tmp_path / "out.csv") == []
    deadline = time.monotonic() + 20
    while ready(src) < 40:  # the broker saw the connection die and requeued everything
        assert time.monotonic() < deadline, ready(src)
        time.sleep(0.1)
    assert "40 record(s) in from 'src'" in records_in(run(spec, state))
    assert sorted(csv_ids(tmp_path / "out.csv")) == list(range(40))
    assert ready(src) == 0
    assert "0 record(s) in from 'src'" in records_in(run(spec, state))


def test_publish_unroutable_dead_letters_alone_and_a_missing_exchange_says_create_it(queues, step_runner):
    q = queues()
    runner = step_runner("amqp.publish", {"routing_key": "{to}", "payload": "{'n': n}"})
    nowhere = unique("t-amqp-nowhere")
    outcomes = runner.run_batch([Message(body={"to": q, "n": 1}), Message(body={"to": nowhere, "n": 2}),
                                 Message(body={"n": 3}), Message(body={"to": "flownb.x.y", "n": 4}),
                                 Message(body={"to": q, "n": 5})])
    assert [o.ok for o in outcomes] == [True, False, False, False, True]
    assert "no queue is bound for routing key" in outcomes[1].error.message and not outcomes[1].error.retryable
    assert "has no field 'to'" in outcomes[2].error.message
    assert "reserved queue" in outcomes[3].error.message
    assert drain(q) == [{"n": 1}, {"n": 5}]
    flow = load_flow_from({"routing_key": "k", "exchange": unique("t-amqp-nox")})
    step = StepRunner(flow, "out")
    assert not step.ensure_open(time.time())
    assert not classify(step.setup_error) and "create it first" in str(step.setup_error)


def test_publish_confirms_a_batch_at_once_and_a_refused_message_is_retried_alone(queues, step_runner):
    """A queue that holds one message and refuses more (``x-overflow: reject-publish``): of a batch
    published at once, the broker confirms the first and nacks the rest — each nack is a retry of
    that message only, never a silent drop, and the confirmed one passes on."""
    full = unique("t-amqp-full")
    conn, ch = channel()
    ch.queue_declare(full, durable=True, arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    conn.close()
    try:
        runner = step_runner("amqp.publish", {"routing_key": full})
        outcomes = runner.run_batch([Message(body={"n": i}) for i in range(3)])
        assert [o.ok for o in outcomes] == [True, False, False]
        assert all(o.error.retryable and "refused the message (basic.nack)" in o.error.message
                   for o in outcomes[1:])
        assert drain(full) == [{"n": 0}]
        again = runner.run_batch([Message(body={"n": 1})])  # room again: the retry goes through
        assert [o.ok for o in again] == [True] and drain(full) == [{"n": 1}]
    finally:
        conn, ch = channel()
        ch.queue_delete(full)
        conn.close()

def load_flow_from(config: dict):
    import flownb
    return flownb.Flow(name="x", trigger=flownb.step("src", "amqp.consume", queue="q"),
                       steps=[flownb.step("out", "amqp.publish", **config)]).resolved()


def test_reserved_names_and_a_missing_queue_are_refused(queues, trigger_runner, tmp_path):
    for trigger, steps, match in [
            ({"queue": "flownb.orders.map"}, [], "belongs to flownb's own topology"),
            ({"queue": "q"}, [{"name": "o", "component": "amqp.publish",
                               "config": {"routing_key": "x", "exchange": "amq.topic"}}], "RabbitMQ's own"),
            ({"queue": "q"}, [{"name": "o", "component": "amqp.publish",
                               "config": {"routing_key": "flownb.f.s"}}], "flownb's own")]:
        spec = write_flow(tmp_path, "bad", {"component": "amqp.consume", "config": trigger},
                          steps or [{"name": "log", "component": "log"}])
        with pytest.raises(ConfigError, match=match):
            load_flow(spec).validate_components()
    with pytest.raises(FatalError, match="no queue.*create it first"):
        trigger_runner("amqp.consume", {"queue": unique("t-amqp-missing")})
    name = unique("t-amqp-declared")
    try:
        trigger_runner("amqp.consume", {"queue": name, "declare": True})
        assert ready(name) == 0
    finally:
        conn, ch = channel()
        ch.queue_delete(name)
        conn.close()


def test_broker_down_is_retryable_and_a_refused_login_says_what_to_check(tmp_path, monkeypatch):
    port = free_port()  # nothing listens there
    flow = load_flow(write_flow(tmp_path, "down", {"component": "amqp.consume", "config": {"queue": "q", "port": port}},
                                [{"name": "out", "component": "amqp.publish",
                                  "config": {"routing_key": "q", "port": port}}])).resolved()
    with pytest.raises(RetryableError, match=f"AMQP broker 127.0.0.1:{port}.*unavailable.*will retry") as e:
        TriggerRunner(flow).poll({})
    assert classify(e.value)
    runner = StepRunner(flow, "out")
    assert not runner.ensure_open(time.time())
    assert classify(runner.setup_error)
    if not listening(5672):
        pytest.skip("RabbitMQ is not running on 127.0.0.1:5672")
    monkeypatch.setenv("FLOWNB_T_AMQP_PW", "wrong-pw")
    flow = load_flow(write_flow(tmp_path, "login", {"component": "amqp.consume",
                                                    "config": {"queue": "q", "password_env": "FLOWNB_T_AMQP_PW"}},
                                [{"name": "log", "component": "log"}])).resolved()
    with pytest.raises(FatalError, match="refused the login.*check 'username', 'password_env'") as e:
        TriggerRunner(flow).poll({})
    assert not classify(e.value) and "wrong-pw" not in str(e.value)


def test_publish_retries_while_the_broker_is_unreachable_then_delivers(queues, tmp_path):
    """amqp.publish through a TCP relay to RabbitMQ that the test cuts: retried, not dead-lettered,
    delivered once the relay is back (the machine's broker itself is never stopped)."""
    import socket
    import threading
    src, dst = queues(), queues()
    relay_port = free_port()
    state_ = {"on": True, "socks": []}

    def pipe(a, b):
        try:
            while True:
                data = a.recv(65536)
                if not data:
                    break
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.close()
                except OSError:
                    pass

    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", relay_port))
    srv.listen(16)
    srv.settimeout(0.2)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                c, _ = srv.accept()
            except OSError:
                continue
            if not state_["on"]:
                c.close()
                continue
            u = socket.create_connection(("127.0.0.1", 5672))
            state_["socks"] += [c, u]
            threading.Thread(target=pipe, args=(c, u), daemon=True).start()
            threading.Thread(target=pipe, args=(u, c), daemon=True).start()
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    spec = write_flow(tmp_path, "amqp-down",
                      {"component": "amqp.consume", "config": {"queue": src, "interval": "200ms"}},
                      [{"name": "out", "component": "amqp.publish",
                        "config": {"routing_key": dst, "port": relay_port, "timeout": "2s", "heartbeat": 5},
                        "retry": {"max_attempts": 50, "initial": "200ms", "max": "1s"}}])
    state, log = tmp_path / "state", tmp_path / "run.log"
    proc = start(spec, state, log)
    try:
        wait_first_poll(proc, state / "amqp-down.db", log)
        send(src, [{"id": i} for i in range(5)])
        deadline = time.monotonic() + 20
        while ready(dst) < 5:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        state_["on"] = False
        for s in state_["socks"]:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        send(src, [{"id": i} for i in range(5, 10)])
        db = sqlite3.connect(state / "amqp-down.db")
        while True:  # queued and being retried, none dead
            queued = db.execute("SELECT count(*), max(attempt) FROM queue WHERE step='out'").fetchone()
            if queued[0] == 5 and (queued[1] or 0) >= 2:
                break
            assert time.monotonic() < deadline + 20, f"not retried: {queued}\n{log.read_text()}"
            time.sleep(0.2)
        assert db.execute("SELECT count(*) FROM dead").fetchone()[0] == 0 and proc.poll() is None
        state_["on"] = True
        deadline = time.monotonic() + 40
        while ready(dst) < 10:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        assert sorted(b["id"] for b in drain(dst)) == list(range(10))
        assert db.execute("SELECT count(*) FROM dead").fetchone()[0] == 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        stop.set()
        t.join(5)
        srv.close()
    assert "will retry" in log.read_text()


def test_dry_run_shows_the_message_without_connecting():
    import flownb
    flow = flownb.Flow(name="dry", trigger=flownb.step("src", "amqp.consume", queue="in"),
                       steps=[flownb.step("out", "amqp.publish", exchange="shop", routing_key="orders.{region}",
                                          port=free_port(), payload="{'n': n}")])
    r = flow.test([{"region": "eu", "n": 2}, {"n": 3}])
    assert r.last == [{"region": "eu", "n": 2}] and [d.error.type for d in r.dead_letters] == ["FatalError"]
    assert r.effects["out"] == [{"exchange": "shop", "routing_key": "orders.eu", "payload": {"n": 2},
                                 "persistent": True}]


def test_the_broker_from_url_env_and_a_wrong_vhost_says_what_to_check(queues, trigger_runner, monkeypatch):
    q = queues()
    send(q, [{"id": 1}])
    monkeypatch.setenv("FLOWNB_T_AMQP_URL", URL)
    runner = trigger_runner("amqp.consume", {"queue": q, "url_env": "FLOWNB_T_AMQP_URL", "wait": "300ms"})
    assert [m.body for m in runner.poll({})[0]] == [{"id": 1}]
    monkeypatch.setenv("FLOWNB_T_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/" + unique("no-such-vhost"))
    with pytest.raises(FatalError, match="refused the login or the virtual host.*'vhost'") as e:
        trigger_runner("amqp.consume", {"queue": q, "url_env": "FLOWNB_T_AMQP_URL"})
    assert "guest:guest" not in str(e.value)  # the URL's password is not repeated
