"""nats.subscribe and nats.publish against the real nats-server (JetStream) on 127.0.0.1:4222, and
private servers on free ports for outages: an uncommitted batch handed out again, a committed batch
acknowledged from the committed state even by a restarted process (never repeated), SIGKILL between
receive and commit loses nothing, a round trip through ``flownb run``, core mode, publish dedup,
config and connection errors that say what to do."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from flownb.components.base import classify
from flownb.errors import ConfigError, FatalError, RetryableError
from flownb.flow import load as load_flow
from flownb.message import Message
from flownb.runtime.core import StepRunner, TriggerRunner

sys.path.insert(0, str(Path(__file__).parent))
from flow_kit import csv_ids, kill_while_committing, records_in, run, start, state_is, wait_first_poll, write_flow
from nats_kit import (
    PrivateNats,
    ack_pending,
    delete_stream,
    free_port,
    js_publish,
    make_stream,
    num_pending,
    require_nats,
    stream_bodies,
    unique,
)
from nats_kit import run as nats_run

pytestmark = [pytest.mark.integration, pytest.mark.nats]


@pytest.fixture
def streams():
    """``streams()`` → (stream name, subject prefix) of this test on the shared server; deleted after."""
    require_nats()
    made: list[str] = []

    def new() -> tuple[str, str]:
        prefix = unique("t").replace("-", "_")
        made.append(make_stream([prefix + ".>"]))
        return made[-1], prefix
    yield new
    for name in made:
        delete_stream(name)


def test_uncommitted_batch_again_committed_batch_acked_even_by_a_restarted_process(streams, trigger_runner):
    stream, p = streams()
    cfg = {"subject": p + ".>", "durable": "d", "start": "all", "wait": "300ms", "ack_wait": "2s"}
    js_publish(p + ".a", [{"id": i} for i in range(3)])
    runner = trigger_runner("nats.subscribe", cfg)
    msgs, _, state1 = runner.poll({})
    assert [m.body["id"] for m in msgs] == [0, 1, 2] and len(state1["acks"]) == 3
    assert ack_pending(stream, "d") == 3
    # not committed (the runtime hands back the old state): the same messages again, still pending
    msgs, _, state2 = runner.poll({})
    assert [m.body["id"] for m in msgs] == [0, 1, 2] and ack_pending(stream, "d") == 3
    # committed, and the process dies before the next poll's acks; ack_wait passes meanwhile (the
    # server would redeliver): a new process acks them from the committed state, hands out nothing
    runner.close()
    time.sleep(2.5)
    runner = trigger_runner("nats.subscribe", cfg)
    msgs, _, state3 = runner.poll(state2)
    assert msgs == [] and state3 == {"acks": []}
    assert ack_pending(stream, "d") == 0 and num_pending(stream, "d") == 0
    js_publish(p + ".b", [{"id": 3}, {"id": 4}])
    time.sleep(2.5)  # longer than ack_wait: nothing acknowledged earlier comes back
    assert [m.body["id"] for m in runner.poll(state3)[0]] == [3, 4]


def test_bodies_formats_and_bad_json_stays_visible(streams, trigger_runner):
    stream, p = streams()
    js_publish(p + ".x", [{"a": 1}, b"{oops", b"7"])
    bodies = [m.body for m in trigger_runner("nats.subscribe", {"subject": p + ".x", "start": "all",
                                                                "wait": "300ms"}).poll({})[0]]
    assert bodies[0] == {"a": 1} and bodies[2] == {"payload": 7}
    assert bodies[1]["_raw"] == "{oops" and "not JSON" in bodies[1]["_error"]
    js_publish(p + ".y", [b"hello"])
    env = trigger_runner("nats.subscribe", {"subject": p + ".y", "start": "all", "wait": "300ms",
                                            "format": "text", "envelope": True}).poll({})[0]
    assert [m.body for m in env] == [{"subject": p + ".y", "payload": "hello", "headers": {}}]


def test_round_trip_through_the_embedded_runtime(streams, tmp_path):
    (src, p), (dst, q) = streams(), streams()
    spec = write_flow(tmp_path, "nats-rt",
                      {"component": "nats.subscribe", "config": {"subject": p + ".orders", "start": "all",
                                                                 "batch_size": 100}},
                      [{"name": "tag", "component": "mapping", "config": {"fields": {"id": "id",
                                                                                      "twice": "id * 2"}}},
                       {"name": "out", "component": "nats.publish",
                        "config": {"subject": q + ".out.{id}", "ack_field": "ack"}},
                       {"name": "save", "component": "csv.write", "config": {"path": "out.csv"}}])
    state = tmp_path / "state"
    js_publish(p + ".orders", [{"id": i} for i in range(750)])
    assert "750 record(s) in from 'src'" in records_in(run(spec, state))
    out = stream_bodies(dst)
    assert sorted(b["id"] for b in out) == list(range(750)) and all(b["twice"] == 2 * b["id"] for b in out)
    assert sorted(csv_ids(tmp_path / "out.csv")) == list(range(750))
    assert ack_pending(src, "flownb-nats-rt-src") == 0
    js_publish(p + ".orders", [{"id": i} for i in range(750, 755)])
    assert "5 record(s) in from 'src'" in records_in(run(spec, state))
    assert len(stream_bodies(dst)) == 755


def test_sigkill_between_receive_and_commit_loses_nothing(streams, tmp_path):
    """The process fetches messages, then cannot commit them (the test holds the SQLite write lock)
    and is killed with SIGKILL: nothing was acknowledged; after ack_wait the restarted process gets
    them all."""
    src, p = streams()
    spec = write_flow(tmp_path, "nats-kill",
                      {"component": "nats.subscribe", "config": {"subject": p + ".>", "interval": "3s",
                                                                 "ack_wait": "2s"}},
                      [{"name": "save", "component": "csv.write", "config": {"path": "out.csv"}}])
    state = tmp_path / "state"
    kill_while_committing(spec, state, send=lambda: js_publish(p + ".a", [{"id": i} for i in range(40)]),
                          received=lambda: ack_pending(src, "flownb-nats-kill-src") == 40,  # fetched
                          settle=0.3, check_state=state_is({"acks": []}))
    assert csv_ids(tmp_path / "out.csv") == []
    assert ack_pending(src, "flownb-nats-kill-src") == 40  # nothing was acknowledged
    time.sleep(2.2)  # ack_wait: the server makes them deliverable again
    assert "40 record(s) in from 'src'" in records_in(run(spec, state))
    assert sorted(csv_ids(tmp_path / "out.csv")) == list(range(40))
    assert ack_pending(src, "flownb-nats-kill-src") == 0
    assert "0 record(s) in from 'src'" in records_in(run(spec, state))


def test_core_mode_is_at_most_once_and_says_so(trigger_runner, caplog):
    require_nats()
    subject = unique("core").replace("-", "_") + ".x"
    runner = trigger_runner("nats.subscribe", {"subject": subject, "mode": "core", "wait": "300ms"})
    assert "at-most-once" in caplog.text

    async def pub(nc, js):
        for i in range(5):
            await nc.publish(subject, orjson.dumps({"id": i}))
        await nc.flush()
    nats_run(pub)
    got: list = []
    deadline = time.monotonic() + 10
    while len(got) < 5 and time.monotonic() < deadline:
        msgs, _, state = runner.poll({})
        assert state == {}  # nothing to acknowledge: core NATS has no acknowledgements
        got += [m.body["id"] for m in msgs]
    assert got == [0, 1, 2, 3, 4]


def test_publish_dedup_stores_a_retried_message_once_and_reports_the_ack(streams, step_runner):
    stream, p = streams()
    runner = step_runner("nats.publish", {"subject": p + ".{kind}", "ack_field": "ack"})
    m = Message(body={"kind": "a", "n": 1})
    first, again = runner.run_batch([m])[0], runner.run_batch([m])[0]  # the same message id: a retry
    assert first.ok and again.ok
    assert first.outputs[0].body["ack"] == {"stream": stream, "seq": 1, "duplicate": False}
    assert again.outputs[0].body["ack"]["duplicate"] is True
    assert stream_bodies(stream) == [{"kind": "a", "n": 1}]


def test_publish_a_bad_message_dead_letters_alone_and_a_subject_without_stream_says_what_to_do(streams, step_runner):
    stream, p = streams()
    runner = step_runner("nats.publish", {"subject": "{where}.x"})
    outcomes = runner.run_batch([Message(body={"where": p}), Message(body={"nowhere": 1}),
                                 Message(body={"where": "a b"}),
                                 Message(body={"where": unique("nostream").replace("-", "_")})])
    assert [o.ok for o in outcomes] == [True, False, False, False]
    assert "has no field 'where'" in outcomes[1].error.message
    assert "is not a NATS subject" in outcomes[2].error.message
    assert outcomes[3].error.type == "FatalError" and "no JetStream stream stores this subject" in \
        outcomes[3].error.message and "mode: core" in outcomes[3].error.message
    assert len(stream_bodies(stream)) == 1


def test_config_is_checked_before_anything_connects(tmp_path):
    cases = [({"subject": "a.>.b"}, "is not a subject filter"),
             ({"subject": "a..b"}, "is not a subject filter"),
             ({"subject": "a", "mode": "core", "durable": "d"}, "are JetStream settings"),
             ({"subject": "a", "password_env": "PW"}, "needs 'username'")]
    for cfg, match in cases:
        spec = write_flow(tmp_path, "bad", {"component": "nats.subscribe", "config": cfg},
                          [{"name": "log", "component": "log"}])
        with pytest.raises(ConfigError, match=match):
            load_flow(spec).validate_components()
    spec = write_flow(tmp_path, "bad2", {"component": "nats.subscribe", "config": {"subject": "a"}},
                      [{"name": "out", "component": "nats.publish", "config": {"subject": "x.*"}}])
    with pytest.raises(ConfigError, match="without wildcards"):
        load_flow(spec).validate_components()


def test_nats_down_is_retryable_for_both_components(tmp_path):
    port = free_port()  # nothing listens there
    spec = write_flow(tmp_path, "down", {"component": "nats.subscribe", "config": {"subject": "s", "port": port,
                                                                                   "timeout": "2s"}},
                      [{"name": "out", "component": "nats.publish", "config": {"subject": "s", "port": port,
                                                                               "timeout": "2s"}}])
    flow = load_flow(spec).resolved()
    with pytest.raises(RetryableError, match=f"NATS 127.0.0.1:{port}.*unavailable.*will retry") as e:
        TriggerRunner(flow).poll({})
    assert classify(e.value)
    runner = StepRunner(flow, "out")
    assert not runner.ensure_open(time.time())
    assert classify(runner.setup_error) and "is the server running" in str(runner.setup_error)


def test_publish_retries_while_its_server_is_down_then_delivers(streams, tmp_path):
    """nats.publish to a private nats-server that is stopped mid-run: retried, not dead-lettered, and
    stored once it is back (its JetStream store is on disk)."""
    src, p = streams()
    target = PrivateNats(tmp_path).start()
    try:
        nats_run(lambda nc, js: js.add_stream(name="dst", subjects=["dst.>"]), target.port)
        spec = write_flow(tmp_path, "nats-down",
                          {"component": "nats.subscribe", "config": {"subject": p + ".>", "interval": "200ms"}},
                          [{"name": "out", "component": "nats.publish",
                            "config": {"subject": "dst.x", "port": target.port, "timeout": "1s"},
                            "retry": {"max_attempts": 50, "initial": "200ms", "max": "1s"}}])
        state, log = tmp_path / "state", tmp_path / "run.log"
        proc = start(spec, state, log)
        try:
            wait_first_poll(proc, state / "nats-down.db", log)
            js_publish(p + ".a", [{"id": i} for i in range(5)])
            deadline = time.monotonic() + 20
            while len(stream_bodies("dst", target.port)) < 5:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
            target.stop()
            js_publish(p + ".a", [{"id": i} for i in range(5, 10)])
            db = sqlite3.connect(state / "nats-down.db")
            while True:  # queued and being retried, none dead
                queued = db.execute("SELECT count(*), max(attempt) FROM queue WHERE step='out'").fetchone()
                if queued[0] == 5 and (queued[1] or 0) >= 2:
                    break
                assert time.monotonic() < deadline + 20, f"not retried: {queued}\n{log.read_text()}"
                time.sleep(0.2)
            assert db.execute("SELECT count(*) FROM dead").fetchone()[0] == 0 and proc.poll() is None
            target.start()
            deadline = time.monotonic() + 40
            while len(stream_bodies("dst", target.port)) < 10:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
            assert sorted(b["id"] for b in stream_bodies("dst", target.port)) == list(range(10))
            assert db.execute("SELECT count(*) FROM dead").fetchone()[0] == 0
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    finally:
        target.stop()
    assert "will retry" in log.read_text()


def test_a_refused_login_says_what_to_check(tmp_path, monkeypatch, trigger_runner):
    server = PrivateNats(tmp_path, "--user", "flownb", "--pass", "s3cret-pw").start()
    try:
        cfg = {"subject": "s.>", "port": server.port, "username": "flownb", "password_env": "FLOWNB_T_NATS_PW",
               "start": "all", "wait": "300ms"}
        monkeypatch.setenv("FLOWNB_T_NATS_PW", "wrong")
        spec = write_flow(tmp_path, "login", {"component": "nats.subscribe", "config": cfg},
                          [{"name": "log", "component": "log"}])
        with pytest.raises(FatalError, match="refused the login.*check 'username', 'password_env'") as e:
            TriggerRunner(load_flow(spec).resolved()).poll({})
        assert not classify(e.value) and "wrong" not in str(e.value) and "s3cret" not in str(e.value)
        monkeypatch.setenv("FLOWNB_T_NATS_PW", "s3cret-pw")
        nats_run(lambda nc, js: js.add_stream(name="s", subjects=["s.>"]), server.port, user="flownb",
                 password="s3cret-pw")
        js_publish_auth = nats_run(lambda nc, js: js.publish("s.a", b'{"id": 1}'), server.port, user="flownb",
                                   password="s3cret-pw")
        assert js_publish_auth.seq == 1
        assert [m.body for m in trigger_runner("nats.subscribe", cfg).poll({})[0]] == [{"id": 1}]
    finally:
        server.stop()


def test_dry_run_shows_the_message_without_connecting():
    import flownb
    port = free_port()
    flow = flownb.Flow(name="dry", trigger=flownb.step("src", "nats.subscribe", subject="in"),
                       steps=[flownb.step("out", "nats.publish", subject="orders.{region}", port=port,
                                          payload="{'n': n}")])
    r = flow.test([{"region": "eu", "n": 2}, {"n": 3}])
    assert r.last == [{"region": "eu", "n": 2}] and [d.error.type for d in r.dead_letters] == ["FatalError"]
    assert r.effects["out"] == [{"host": "127.0.0.1", "port": port, "mode": "jetstream", "subject": "orders.eu",
                                 "payload": {"n": 2}}]


def test_scripts_services_starts_nats_server_when_it_is_down(tmp_path):
    """scripts/services on a free NATS_PORT (the machine's server on 4222 is not touched) starts a
    nats-server there with JetStream; without nats-server on PATH it exits 1 naming it."""
    script = Path(__file__).resolve().parents[2] / "scripts" / "services"
    exe = shutil.which("nats-server") or "/usr/sbin/nats-server"
    if not Path(exe).exists():
        pytest.skip("nats-server is not installed")
    port = free_port()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("seq", "sleep", "mktemp", "printf"):
        if shutil.which(tool):
            (bin_dir / tool).symlink_to(shutil.which(tool))
    env = {"PATH": str(bin_dir), "NATS_PORT": str(port), "MQTT_PORT": "1883", "REDIS_PORT": "6379"}
    p = subprocess.run([shutil.which("bash"), str(script)], check=False, capture_output=True, text=True,
                       timeout=120, env=env)
    assert "NATS on 127.0.0.1:" in p.stderr and "nats-server is not installed" in p.stderr
    (bin_dir / "nats-server").symlink_to(exe)
    p = subprocess.run([shutil.which("bash"), str(script)], check=False, capture_output=True, text=True,
                       timeout=120, env={**env, "NATS_STORE": str(tmp_path / "js")})
    try:
        assert "NATS on" not in p.stderr, p.stderr
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        acc = nats_run(lambda nc, js: js.account_info(), port)
        assert acc is not None  # JetStream answers
    finally:
        pid = subprocess.run(["pgrep", "-f", f"nats-server.*-p {port}"], capture_output=True, text=True).stdout.split()
        for x in pid:
            os.kill(int(x), signal.SIGTERM)
