"""mqtt.subscribe and mqtt.publish against the real Mosquitto on 127.0.0.1:1883 (and private brokers
on free ports for outages): round trips through ``flownb run``, a batch that was not committed is
handed out again, SIGKILL between receive and commit loses nothing, a broker outage is retried."""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
import time
from pathlib import Path

import pytest

from flownb.components.base import classify
from flownb.errors import ConfigError, FatalError, RetryableError
from flownb.flow import load as load_flow

sys.path.insert(0, str(Path(__file__).parent))
from flow_kit import csv_ids, kill_while_committing, run, start, wait_first_poll, write_flow
from mqtt_kit import (
    Collector,
    PrivateMosquitto,
    PrivateMosquittoWithLogin,
    drop_session,
    free_port,
    publish,
    require_mosquitto,
    unique,
)

pytestmark = [pytest.mark.integration, pytest.mark.mqtt]


@pytest.fixture(autouse=True)
def _mosquitto():
    require_mosquitto()


@pytest.fixture
def sessions():
    """Client ids of persistent sessions a test creates; ended afterwards."""
    ids: list[str] = []
    yield ids
    for cid in ids:
        drop_session(cid)


# -- configuration ------------------------------------------------------------------------------------

def test_config_is_checked_before_anything_connects(tmp_path):
    bad_filter = write_flow(tmp_path, "bad", {"component": "mqtt.subscribe", "config": {"topics": ["a/#/b"]}},
                            [{"name": "log", "component": "log"}])
    with pytest.raises(ConfigError, match="topic filter"):
        load_flow(bad_filter).validate_components()
    wildcard = write_flow(tmp_path, "bad2", {"component": "mqtt.subscribe", "config": {"topics": ["a/+"]}},
                          [{"name": "out", "component": "mqtt.publish", "config": {"topic": "x/+"}}])
    with pytest.raises(ConfigError, match="wildcards"):
        load_flow(wildcard).validate_components()
    no_user = write_flow(tmp_path, "bad3", {"component": "mqtt.subscribe",
                                            "config": {"topics": ["a"], "password_env": "MQTT_PW"}},
                         [{"name": "log", "component": "log"}])
    with pytest.raises(ConfigError, match="needs 'username'"):
        load_flow(no_user).validate_components()


def poll_until(runner, n: int, timeout: float = 20):
    """Poll without committing (the state stays {}) until a poll hands out ``n`` messages: each
    uncommitted poll hands out again what the last one did, plus what arrived since."""
    deadline = time.monotonic() + timeout
    while True:
        msgs, _, state = runner.poll({})
        if len(msgs) >= n or time.monotonic() > deadline:
            return msgs, state


# -- the trigger's acknowledgement protocol, on the TriggerRunner -----------------------------------------

def test_a_batch_is_acked_only_when_the_committed_state_shows_it(trigger_runner, sessions):
    topic, cid = unique("flownb-test/ack"), unique("flownb-ack")
    sessions.append(cid)
    cfg = {"topics": [topic], "client_id": cid, "wait": "1s"}
    runner = trigger_runner("mqtt.subscribe", cfg)
    assert runner.poll({})[0] == []  # subscribed: the session keeps what comes from now on
    publish(topic, [{"id": i} for i in range(3)])

    # the runtime does not commit (the state it hands back stays {}): each poll hands out again what
    # the last one did, plus what arrived since
    msgs, state1 = poll_until(runner, 3)
    assert [m.body for m in msgs] == [{"id": 0}, {"id": 1}, {"id": 2}]
    msgs, _, state2 = runner.poll({})
    assert [m.body for m in msgs] == [{"id": 0}, {"id": 1}, {"id": 2}]
    assert state2["batch"] != state1["batch"]
    # not acknowledged yet: a new connection of the same session gets them again from the broker
    runner.close()
    runner = trigger_runner("mqtt.subscribe", cfg)
    msgs, _, state3 = runner.poll(state2)  # state2's batch was another process's: nothing to ack
    assert sorted(m.body["id"] for m in msgs) == [0, 1, 2]
    # committed: the next poll acknowledges them, and the broker never sends them again
    assert runner.poll(state3)[0] == []
    runner.close()
    runner = trigger_runner("mqtt.subscribe", cfg)
    assert runner.poll({})[0] == []


def test_payload_formats_and_envelope(trigger_runner, sessions):
    topic = unique("flownb-test/fmt")
    cids = [unique("flownb-fmt") for _ in range(3)]
    sessions.extend(cids)
    json_r = trigger_runner("mqtt.subscribe", {"topics": [topic + "/#"], "client_id": cids[0]})
    text_r = trigger_runner("mqtt.subscribe", {"topics": [topic + "/#"], "client_id": cids[1],
                                               "format": "text", "envelope": True})
    b64_r = trigger_runner("mqtt.subscribe", {"topics": [topic + "/#"], "client_id": cids[2], "format": "base64"})
    for r in (json_r, text_r, b64_r):
        r.poll({})
    publish(topic + "/a", [{"x": 1}, b"[1, 2]", b"not json"])
    bodies = [m.body for m in poll_until(json_r, 3)[0]]
    assert bodies[:2] == [{"x": 1}, {"payload": [1, 2]}]
    assert bodies[2]["_raw"] == "not json" and bodies[2]["_topic"] == topic + "/a"
    assert "not JSON" in bodies[2]["_error"] and "format: text" in bodies[2]["_error"]
    env = [m.body for m in poll_until(text_r, 3)[0]]
    assert env[0] == {"topic": topic + "/a", "payload": '{"x":1}', "qos": 1, "retain": False, "dup": False}
    assert [m.body["payload"] for m in poll_until(b64_r, 3)[0]] == ["eyJ4IjoxfQ==", "WzEsIDJd", "bm90IGpzb24="]


def test_broker_down_is_retryable_for_both_components(trigger_runner, tmp_path):
    port = free_port()  # nothing listens there
    flow_spec = write_flow(tmp_path, "down", {"component": "mqtt.subscribe",
                                              "config": {"topics": ["t"], "port": port}},
                           [{"name": "out", "component": "mqtt.publish", "config": {"topic": "t", "port": port}}])
    flow = load_flow(flow_spec).resolved()
    from flownb.runtime.core import StepRunner, TriggerRunner
    with pytest.raises(RetryableError, match=f"cannot connect to the MQTT broker 127.0.0.1:{port}.*will retry") as e:
        TriggerRunner(flow).poll({})
    assert classify(e.value)
    runner = StepRunner(flow, "out")
    assert not runner.ensure_open(time.time())
    assert classify(runner.setup_error) and "is the broker running" in str(runner.setup_error)


# -- round trips through `flownb run` ---------------------------------------------------------------------

def test_round_trip_through_the_embedded_runtime(tmp_path, sessions):
    topic, cid = unique("flownb-test/rt"), unique("flownb-rt")
    sessions.append(cid)
    spec = write_flow(tmp_path, "mqtt-rt",
                      {"component": "mqtt.subscribe", "config": {"topics": [f"{topic}/in"], "client_id": cid}},
                      [{"name": "tag", "component": "mapping", "config": {"fields": {"id": "id", "twice": "id * 2"}}},
                       {"name": "fwd", "component": "mqtt.publish", "config": {"topic": topic + "/out/{id}"}},
                       {"name": "save", "component": "csv.write", "config": {"path": "out.csv"}}])
    state = tmp_path / "state"
    run(spec, state)  # creates the session
    out = Collector(f"{topic}/out/#")
    try:
        publish(f"{topic}/in", [{"id": i} for i in range(100)])  # more than one in-flight window (20)
        p = run(spec, state)
        assert "100 record(s) in from 'src'" in p.stdout.replace("\n", " ")
        got = out.wait_for(100)
    finally:
        out.close()
    assert sorted(b["id"] for _, b in got) == list(range(100))
    assert {t for t, b in got} == {f"{topic}/out/{i}" for i in range(100)}
    assert all(b["twice"] == 2 * b["id"] for _, b in got)
    assert sorted(csv_ids(tmp_path / "out.csv")) == list(range(100))
    # every message was acknowledged: nothing comes again
    assert "0 record(s) in from 'src'" in run(spec, state).stdout.replace("\n", " ")
    assert len(csv_ids(tmp_path / "out.csv")) == 100


def test_sigkill_between_receive_and_commit_loses_nothing(tmp_path, sessions):
    """The first process receives a batch, then cannot commit it (the test holds the SQLite write
    lock); it is killed with SIGKILL in that window. Nothing was acknowledged to the broker, so the
    restarted process receives every message again and each arrives at the sink."""
    topic, cid = unique("flownb-test/kill"), unique("flownb-kill")
    sessions.append(cid)
    spec = write_flow(tmp_path, "mqtt-kill",
                      {"component": "mqtt.subscribe", "config": {"topics": [topic], "client_id": cid,
                                                                 "interval": "3s"}},
                      [{"name": "save", "component": "csv.write", "config": {"path": "out.csv"}}])
    state = tmp_path / "state"

    def no_batch_of_this_process(stored):  # received, not committed: no batch of this process stored
        assert stored is None or "batch" not in stored

    log = kill_while_committing(spec, state, send=lambda: publish(topic, [{"id": i} for i in range(15)]),
                                received=lambda: "received" in (spec.parent / "killed.log").read_text(),
                                settle=0.5, check_state=no_batch_of_this_process)
    assert "received" in log and csv_ids(tmp_path / "out.csv") == []

    p = run(spec, state)
    assert "15 record(s) in from 'src'" in p.stdout.replace("\n", " ")
    assert sorted(csv_ids(tmp_path / "out.csv")) == list(range(15))
    assert "0 record(s) in from 'src'" in run(spec, state).stdout.replace("\n", " ")


def test_publish_retries_while_its_broker_is_down_then_delivers(tmp_path, sessions):
    """mqtt.publish to a private Mosquitto that is stopped mid-run: the messages are retried (not
    dead-lettered) and published once it is back."""
    broker = PrivateMosquitto(tmp_path).start()
    topic, cid = unique("flownb-test/down"), unique("flownb-down")
    sessions.append(cid)
    spec = write_flow(tmp_path, "mqtt-down",
                      {"component": "mqtt.subscribe", "config": {"topics": [topic], "client_id": cid,
                                                                 "interval": "200ms"}},
                      [{"name": "fwd", "component": "mqtt.publish",
                        "config": {"topic": "out/{id}", "port": broker.port, "timeout": "2s"},
                        "retry": {"max_attempts": 50, "initial": "200ms", "max": "1s"}}])
    state = tmp_path / "state"
    log = tmp_path / "run.log"
    proc = start(spec, state, log)
    try:
        out = Collector("out/#", port=broker.port)
        wait_first_poll(proc, state / "mqtt-down.db", log)  # set up (subscribed, SUBACK awaited) and polling
        publish(topic, [{"id": i} for i in range(5)])
        assert sorted(b["id"] for _, b in out.wait_for(5)) == list(range(5))
        out.close()
        broker.stop()
        publish(topic, [{"id": i} for i in range(5, 10)])
        db = sqlite3.connect(state / "mqtt-down.db")
        deadline = time.monotonic() + 20
        while True:  # the new messages are queued and being retried, none dead
            queued = db.execute("SELECT count(*), max(attempt) FROM queue WHERE step='fwd'").fetchone()
            if queued[0] == 5 and (queued[1] or 0) >= 2:
                break
            assert time.monotonic() < deadline, f"not retried: {queued}"
            time.sleep(0.2)
        assert db.execute("SELECT count(*) FROM dead").fetchone()[0] == 0
        assert proc.poll() is None
        broker.start()
        out = Collector("out/#", port=broker.port)
        got = out.wait_for(5, timeout=40)
        out.close()
        assert sorted(b["id"] for _, b in got) == list(range(5, 10))
        assert db.execute("SELECT count(*) FROM dead").fetchone()[0] == 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        broker.stop()
    log = (tmp_path / "run.log").read_text()
    assert "will retry" in log or "retry" in log.lower()


def test_login_by_password_env_and_a_refused_login_says_what_to_check(tmp_path, monkeypatch, trigger_runner):
    broker = PrivateMosquittoWithLogin(tmp_path, "s3cret-pw").start()
    try:
        topic = unique("flownb-test/login")
        cfg = {"topics": [topic], "port": broker.port, "username": "flownb", "password_env": "FLOWNB_T_MQTT_PW",
               "client_id": unique("flownb-login")}
        monkeypatch.setenv("FLOWNB_T_MQTT_PW", "wrong")
        from flownb.runtime.core import TriggerRunner
        spec = write_flow(tmp_path, "login", {"component": "mqtt.subscribe", "config": cfg},
                          [{"name": "log", "component": "log"}])
        t0 = time.monotonic()
        with pytest.raises(FatalError, match="refused the connection: Not authorized; check 'username' and "
                                             "'password_env'") as e:
            TriggerRunner(load_flow(spec).resolved()).poll({})
        assert time.monotonic() - t0 < 5 and not classify(e.value)  # refused at once, not after a timeout
        assert "s3cret" not in str(e.value) and "wrong" not in str(e.value)
        monkeypatch.setenv("FLOWNB_T_MQTT_PW", "s3cret-pw")
        runner = trigger_runner("mqtt.subscribe", cfg)
        runner.poll({})
        publish(topic, [{"id": 1}], port=broker.port, auth=("flownb", "s3cret-pw"))
        assert [m.body for m in poll_until(runner, 1)[0]] == [{"id": 1}]
    finally:
        broker.stop()


def test_dry_run_shows_what_would_be_published(tmp_path):
    import flownb
    flow = flownb.Flow(name="dry", trigger=flownb.step("src", "mqtt.subscribe", topics=["in"]),
                       steps=[flownb.step("out", "mqtt.publish", topic="dev/{id}/cmd", payload="{'v': v * 10}",
                                          port=free_port())])
    port = flow.steps[0].config["port"]
    r = flow.test([{"id": "a1", "v": 2}])  # nothing listens on the port: a dry run connects nowhere
    assert r.dead_letters == [] and r.last == [{"id": "a1", "v": 2}]
    assert r.effects["out"] == [{"host": "127.0.0.1", "port": port, "topic": "dev/a1/cmd", "payload": {"v": 20},
                                 "qos": 1, "retain": False}]
