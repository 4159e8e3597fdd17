"""redis.stream and redis.xadd against the real Redis on 127.0.0.1:6379 (and private servers on free
ports for outages): round trips through ``flownb run``, an uncommitted batch handed out again, a
committed batch never repeated (even when the process dies before its XACK), SIGKILL between receive
and commit loses nothing, a dead consumer's entries are claimed, an outage is retried."""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
import time
from pathlib import Path

import orjson
import pytest

from flownb.components.base import classify
from flownb.errors import ConfigError, FatalError, RetryableError
from flownb.flow import load as load_flow
from flownb.runtime.core import StepRunner, TriggerRunner

sys.path.insert(0, str(Path(__file__).parent))
from flow_kit import csv_ids, kill_while_committing, records_in, run, start, state_is, wait_first_poll, write_flow
from mqtt_kit import free_port, unique
from redis_kit import PrivateRedis, client, require_redis

pytestmark = [pytest.mark.integration, pytest.mark.redis]


@pytest.fixture
def keys():
    """Stream keys of this test on the shared Redis; deleted afterwards."""
    require_redis()
    names: list[str] = []

    def new(prefix: str = "flownb-test") -> str:
        names.append(unique(prefix))
        return names[-1]
    yield new
    if names:
        client().delete(*names)


def xadd(stream: str, n: int, first: int = 0, port: int = 6379) -> None:
    r = client(port)
    pipe = r.pipeline()
    for i in range(first, first + n):
        pipe.xadd(stream, {"id": str(i)})
    pipe.execute()


def pending(stream: str, group: str) -> int:
    return client().xpending(stream, group)["pending"]


def test_uncommitted_batch_again_committed_batch_acked_and_never_repeated(keys, trigger_runner):
    stream = keys()
    cfg = {"stream": stream, "group": "g", "start": "all", "wait": "100ms", "id_field": "_id"}
    xadd(stream, 3)
    runner = trigger_runner("redis.stream", cfg)
    msgs, _, state1 = runner.poll({})
    assert [m.body["id"] for m in msgs] == ["0", "1", "2"] and len(state1["ids"]) == 3
    assert [m.body["_id"] for m in msgs] == state1["ids"]
    assert pending(stream, "g") == 3
    # not committed (the runtime hands back the old state): the same entries again, still pending
    msgs, _, state2 = runner.poll({})
    assert [m.body["id"] for m in msgs] == ["0", "1", "2"]
    assert pending(stream, "g") == 3
    # committed, and the process dies before the next poll's XACK: a new process acks them from the
    # committed state and does not hand them out again
    runner.close()
    runner = trigger_runner("redis.stream", cfg)
    msgs, _, state3 = runner.poll(state2)
    assert msgs == [] and state3 == {"ids": []}
    assert pending(stream, "g") == 0
    xadd(stream, 2, first=3)
    assert [m.body["id"] for m in runner.poll(state3)[0]] == ["3", "4"]


def test_a_dead_consumers_entries_are_claimed_after_claim_idle(keys, trigger_runner):
    stream = keys()
    r = client()
    r.xgroup_create(stream, "g", id="0", mkstream=True)
    xadd(stream, 4)
    r.xreadgroup("g", "ghost", {stream: ">"}, count=4)  # read by a consumer that then died
    runner = trigger_runner("redis.stream", {"stream": stream, "group": "g", "wait": "100ms",
                                             "claim_idle": "2s"})
    assert runner.poll({})[0] == []  # not idle long enough yet
    time.sleep(2.1)
    msgs, _, state = runner.poll({})
    assert sorted(m.body["id"] for m in msgs) == ["0", "1", "2", "3"]
    runner.poll(state)
    assert pending(stream, "g") == 0


def test_json_field_bodies_and_bad_json_is_kept_visible(keys, trigger_runner):
    stream = keys()
    r = client()
    r.xadd(stream, {"data": orjson.dumps({"a": 1, "n": [1, 2]})})
    r.xadd(stream, {"data": "{oops"})
    r.xadd(stream, {"data": "7"})
    runner = trigger_runner("redis.stream", {"stream": stream, "start": "all", "field": "data", "wait": "100ms"})
    bodies = [m.body for m in runner.poll({})[0]]
    assert bodies[0] == {"a": 1, "n": [1, 2]}
    assert bodies[1]["_raw"] == {"data": "{oops"} and "not JSON" in bodies[1]["_error"]
    assert bodies[2] == {"payload": 7}


def test_round_trip_through_the_embedded_runtime(keys, tmp_path):
    src, dst = keys(), keys()
    spec = write_flow(tmp_path, "redis-rt",
                      {"component": "redis.stream", "config": {"stream": src, "start": "all", "batch_size": 100}},
                      [{"name": "tag", "component": "mapping", "config": {"fields": {"id": "$number(id)",
                                                                                      "twice": "$number(id) * 2"}}},
                       {"name": "out", "component": "redis.xadd",
                        "config": {"stream": dst, "field": "data", "id_field": "entry"}},
                       {"name": "save", "component": "csv.write", "config": {"path": "out.csv"}}])
    state = tmp_path / "state"
    xadd(src, 750)
    p = run(spec, state)
    assert "750 record(s) in from 'src'" in records_in(p)
    out = client().xrange(dst)
    assert sorted(orjson.loads(f["data"])["id"] for _, f in out) == list(range(750))
    assert all(orjson.loads(f["data"])["twice"] == 2 * orjson.loads(f["data"])["id"] for _, f in out)
    assert sorted(csv_ids(tmp_path / "out.csv")) == list(range(750))
    assert pending(src, "flownb-redis-rt-src") == 0
    xadd(src, 5, first=750)
    assert "5 record(s) in from 'src'" in records_in(run(spec, state))
    assert client().xlen(dst) == 755


def test_sigkill_between_receive_and_commit_loses_nothing(keys, tmp_path):
    """The process reads entries, then cannot commit them (the test holds the SQLite write lock) and
    is killed with SIGKILL: they stay pending in the group, the restarted process hands them out."""
    src = keys()
    spec = write_flow(tmp_path, "redis-kill",
                      {"component": "redis.stream", "config": {"stream": src, "interval": "3s"}},
                      [{"name": "save", "component": "csv.write", "config": {"path": "out.csv"}}])
    state = tmp_path / "state"
    kill_while_committing(spec, state, send=lambda: xadd(src, 40),
                          received=lambda: pending(src, "flownb-redis-kill-src") == 40,  # read, unacknowledged
                          settle=0.3, check_state=state_is({"ids": []}))
    assert csv_ids(tmp_path / "out.csv") == []
    assert pending(src, "flownb-redis-kill-src") == 40  # nothing was acknowledged

    assert "40 record(s) in from 'src'" in records_in(run(spec, state))
    assert sorted(csv_ids(tmp_path / "out.csv")) == list(range(40))
    assert pending(src, "flownb-redis-kill-src") == 0
    assert "0 record(s) in from 'src'" in records_in(run(spec, state))


def test_xadd_a_key_that_is_not_a_stream_dead_letters_that_message_alone(keys, step_runner):
    good, taken = keys(), keys()
    client().set(taken, "a plain string")
    runner = step_runner("redis.xadd", {"stream": "{key}", "id_field": "entry"})
    from flownb.message import Message
    outcomes = runner.run_batch([Message(body={"key": good, "n": 1}), Message(body={"key": taken, "n": 2}),
                                 Message(body={"key": good, "n": 3})])
    assert [o.ok for o in outcomes] == [True, False, True]
    assert outcomes[1].error.type == "FatalError" and not outcomes[1].error.retryable
    assert "is not a stream; choose another 'stream' key" in outcomes[1].error.message
    entries = client().xrange(good)
    assert [f["n"] for _, f in entries] == ["1", "3"]
    assert [o.outputs[0].body["entry"] for o in outcomes if o.ok] == [i for i, _ in entries]


def test_redis_down_is_retryable_for_both_components(tmp_path):
    port = free_port()  # nothing listens there
    spec = write_flow(tmp_path, "down", {"component": "redis.stream", "config": {"stream": "s", "port": port}},
                      [{"name": "out", "component": "redis.xadd", "config": {"stream": "s", "port": port}}])
    flow = load_flow(spec).resolved()
    with pytest.raises(RetryableError, match=f"Redis 127.0.0.1:{port}.*unavailable.*will retry") as e:
        TriggerRunner(flow).poll({})
    assert classify(e.value)
    runner = StepRunner(flow, "out")
    assert not runner.ensure_open(time.time())
    assert classify(runner.setup_error) and "is the server running" in str(runner.setup_error)


def test_xadd_retries_while_its_redis_is_down_then_delivers(keys, tmp_path):
    """redis.xadd to a private redis-server that is stopped mid-run: retried, not dead-lettered, and
    written once it is back."""
    require_redis()
    target = PrivateRedis(tmp_path).start()
    src = keys()
    spec = write_flow(tmp_path, "redis-down",
                      {"component": "redis.stream", "config": {"stream": src, "interval": "200ms"}},
                      [{"name": "out", "component": "redis.xadd",
                        "config": {"stream": "dst", "port": target.port, "timeout": "1s"},
                        "retry": {"max_attempts": 50, "initial": "200ms", "max": "1s"}}])
    state, log = tmp_path / "state", tmp_path / "run.log"
    proc = start(spec, state, log)
    try:
        wait_first_poll(proc, state / "redis-down.db", log)
        xadd(src, 5)
        deadline = time.monotonic() + 20
        while client(target.port).xlen("dst") < 5:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        target.stop()
        xadd(src, 5, first=5)
        db = sqlite3.connect(state / "redis-down.db")
        while True:  # queued and being retried, none dead
            queued = db.execute("SELECT count(*), max(attempt) FROM queue WHERE step='out'").fetchone()
            if queued[0] == 5 and (queued[1] or 0) >= 2:
                break
            assert time.monotonic() < deadline + 20, f"not retried: {queued}\n{log.read_text()}"
            time.sleep(0.2)
        assert db.execute("SELECT count(*) FROM dead").fetchone()[0] == 0 and proc.poll() is None
        target.start()  # a fresh, empty server on the same port
        deadline = time.monotonic() + 40
        while client(target.port).xlen("dst") < 5:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        assert sorted(int(f["id"]) for _, f in client(target.port).xrange("dst")) == list(range(5, 10))
        assert db.execute("SELECT count(*) FROM dead").fetchone()[0] == 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        target.stop()
    assert "will retry" in log.read_text()


def test_password_env_and_a_refused_login_says_what_to_check(tmp_path, monkeypatch, trigger_runner):
    server = PrivateRedis(tmp_path, "--requirepass", "s3cret-pw").start()
    try:
        cfg = {"stream": "s", "port": server.port, "password_env": "FLOWNB_T_REDIS_PW", "start": "all",
               "wait": "100ms"}
        spec = write_flow(tmp_path, "login", {"component": "redis.stream", "config": cfg},
                          [{"name": "out", "component": "redis.xadd",
                            "config": {"stream": "o", "port": server.port, "password_env": "FLOWNB_T_REDIS_PW"}}])
        monkeypatch.setenv("FLOWNB_T_REDIS_PW", "wrong")
        flow = load_flow(spec).resolved()
        with pytest.raises(FatalError, match="refused the login.*check 'username' and 'password_env'") as e:
            TriggerRunner(flow).poll({})
        assert not classify(e.value) and "wrong" not in str(e.value) and "s3cret" not in str(e.value)
        monkeypatch.setenv("FLOWNB_T_REDIS_PW", "s3cret-pw")
        client(server.port, "s3cret-pw").xadd("s", {"id": "1"})
        assert [m.body for m in trigger_runner("redis.stream", cfg).poll({})[0]] == [{"id": "1"}]
    finally:
        server.stop()


def test_dry_run_shows_the_entry_without_connecting():
    import flownb
    port = free_port()
    flow = flownb.Flow(name="dry", trigger=flownb.step("src", "redis.stream", stream="in"),
                       steps=[flownb.step("out", "redis.xadd", stream="events:{tenant}", port=port, maxlen=1000)])
    r = flow.test([{"tenant": "acme", "n": 2, "tags": ["a"]}])
    assert r.dead_letters == [] and r.last == [{"tenant": "acme", "n": 2, "tags": ["a"]}]
    assert r.effects["out"] == [{"host": "127.0.0.1", "port": port, "stream": "events:acme",
                                 "fields": {"tenant": "acme", "n": "2", "tags": '["a"]'}, "maxlen": 1000}]


# -- redis.set --------------------------------------------------------------------------------------

def test_set_through_the_embedded_runtime_with_key_template_value_expression_and_ttl(keys, tmp_path):
    src, prefix = keys(), unique("flownb-test-set")
    spec = write_flow(tmp_path, "redis-set",
                      {"component": "redis.stream", "config": {"stream": src, "start": "all"}},
                      [{"name": "put", "component": "redis.set",
                        "config": {"key": prefix + ":{id}", "value": "{'id': $number(id), 'name': name}",
                                   "ttl": "1h"}},
                       {"name": "last", "component": "redis.set",
                        "config": {"key": prefix + ":last", "value": "name", "format": "text"}}])
    r = client()
    pipe = r.pipeline()
    for i in range(30):
        pipe.xadd(src, {"id": str(i), "name": f"n{i}"})
    pipe.execute()
    try:
        assert "30 record(s) in from 'src'" in records_in(run(spec, tmp_path / "state"))
        for i in range(30):
            assert orjson.loads(r.get(f"{prefix}:{i}")) == {"id": i, "name": f"n{i}"}
            assert 3590 < r.ttl(f"{prefix}:{i}") <= 3600
        assert r.get(f"{prefix}:last") == "n29" and r.ttl(f"{prefix}:last") == -1  # text, no expiry
    finally:
        r.delete(*[f"{prefix}:{i}" for i in range(30)], f"{prefix}:last")


def test_set_only_absent_reports_whether_it_set_and_a_bad_message_dead_letters_alone(keys, step_runner):
    from flownb.message import Message
    k = keys()
    client().set(k + "-taken", "old")
    keys_made = [k + "-taken", k + "-new"]
    try:
        runner = step_runner("redis.set", {"key": "{key}", "only": "absent", "result_field": "set",
                                           "value": "v"})
        outcomes = runner.run_batch([Message(body={"key": k + "-taken", "v": 1}),
                                     Message(body={"nokey": True, "v": 2}),
                                     Message(body={"key": k + "-new", "v": 3}),
                                     Message(body={"key": k + "-none"})])
        assert [o.ok for o in outcomes] == [True, False, True, False]
        assert [o.outputs[0].body["set"] for o in outcomes if o.ok] == [False, True]
        assert outcomes[1].error.type == "FatalError" and "has no field 'key'" in outcomes[1].error.message
        assert "gave nothing for this message" in outcomes[3].error.message
        assert not outcomes[3].error.retryable
        assert client().get(k + "-taken") == "old" and client().get(k + "-new") == "3"
        assert client().exists(k + "-none") == 0
    finally:
        client().delete(*keys_made)


def test_set_redis_down_is_retryable_and_config_is_checked(tmp_path):
    import flownb
    port = free_port()
    flow = load_flow(write_flow(tmp_path, "down-set", {"component": "redis.stream", "config": {"stream": "s"}},
                                [{"name": "out", "component": "redis.set",
                                  "config": {"key": "k:{id}", "port": port}}])).resolved()
    runner = StepRunner(flow, "out")
    assert not runner.ensure_open(time.time())
    assert classify(runner.setup_error) and f"Redis 127.0.0.1:{port}" in str(runner.setup_error)
    with pytest.raises(ConfigError, match="cannot be negative"):
        flownb.Flow(name="x", trigger=flownb.step("src", "redis.stream", stream="s"),
                    steps=[flownb.step("out", "redis.set", key="k", ttl=-5)]).validate_components()
    with pytest.raises(ConfigError, match="'key' is empty"):
        flownb.Flow(name="x", trigger=flownb.step("src", "redis.stream", stream="s"),
                    steps=[flownb.step("out", "redis.set", key=" ")]).validate_components()


def test_set_dry_run_shows_key_and_value_without_connecting():
    import flownb
    port = free_port()
    flow = flownb.Flow(name="dry", trigger=flownb.step("src", "redis.stream", stream="in"),
                       steps=[flownb.step("out", "redis.set", key="customer:{id}", value="{'n': name}",
                                          ttl="10m", port=port)])
    r = flow.test([{"id": 7, "name": "Ada"}, {"name": "no id"}])
    assert r.last == [{"id": 7, "name": "Ada"}]
    assert [d.error.type for d in r.dead_letters] == ["FatalError"]
    assert r.effects["out"] == [{"host": "127.0.0.1", "port": port, "key": "customer:7", "value": '{"n":"Ada"}',
                                 "ttl": 600.0, "only": "always"}]
