"""Every message carries the hash of the spec that produced it (``meta.spec``) on the embedded runtime:
the trigger's messages, each step's outputs, retries and dead letters (which keep the spec they died
under); a replay stamps the spec it ran under; ``flownb plan`` counts the queued messages of another
spec version; a message of an older flownb (no ``meta.spec``) still runs. RabbitMQ:
tests/runtime/amqp/test_spec_stamp_amqp.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

import flownb
from flownb.message import Message
from flownb.runtime.local import LocalRuntime
from flownb.runtime.local.runtime import VirtualClock
from flownb.workbench import REPLAY_SPEC

FLOWNB = str(Path(sys.executable).with_name("flownb"))
N = 12


POLL = ("def p(state, ctx):\n    if state.get('done'):\n        return []\n    state['done'] = True\n"
        f"    return [{{'n': i}} for i in range({N})]\n")
# fails (retryably) the first time it sees a record, in this process
FLAKY = ("import flownb\nseen = set()\ndef f(body, ctx):\n    if body['n'] not in seen:\n"
         "        seen.add(body['n'])\n        raise flownb.Retry('once')\n    return body\n")


def _flow(fixed: bool = False) -> flownb.Flow:
    # 'check' dies (not retryable) on every fourth record unless fixed; 'flaky' retries each message once
    rule = '$number(n % 4 = 0 ? "n/a" : "1")' if not fixed else '$number(n % 4 = 0 ? "0" : "1")'
    return flownb.Flow(name="stamped", trigger=flownb.step("src", "python.poll", source=POLL, function="p"),
                       steps=[flownb.step("flaky", "python", source=FLAKY, function="f", retry={"max_attempts": 3}),
                              flownb.step("check", "mapping", fields={"n": "n", "v": rule}),
                              flownb.step("sink", "log")])


def _queued(rt: LocalRuntime, step: str) -> list[dict]:
    with rt.store.lock:
        rows = rt.store.conn.execute("SELECT payload FROM queue WHERE step=? ORDER BY id", (step,)).fetchall()
    return [orjson.loads(p) for (p,) in rows]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([FLOWNB, *args], capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "COLUMNS": "250"})


def test_every_message_carries_the_spec_that_produced_it_and_dead_letters_the_spec_they_died_under(tmp_path):
    flow = _flow()
    h = flow.spec_hash(short=True)  # what messages carry: the first 8 of the 16 hex digits
    assert flow.resolved().spec_hash() == flow.spec_hash() and flow.spec_hash().startswith(h) and len(h) == 8
    state = tmp_path / "state"
    clock = VirtualClock()
    # unfused: the test reads what each step queued for the next (a fused stage keeps it in memory)
    with LocalRuntime(flow, state, clock=clock, fuse=False) as rt:
        rt.poll_once()
        emitted = _queued(rt, "flaky")
        assert len(emitted) == N and {(m["meta"]["step"], m["meta"]["spec"]) for m in emitted} == {("src", h)}
        rt.process_step("flaky")  # every message fails once: a retry (the row kept, its attempt counted up)
        retried = _queued(rt, "flaky")
        with rt.store.lock:
            assert rt.store.conn.execute("SELECT attempt FROM queue WHERE step='flaky'").fetchall() == [(2,)] * N
        assert {(m["meta"]["step"], m["meta"]["spec"]) for m in retried} == {("src", h)}
        clock.advance(60)
        rt.process_step("flaky")
        assert not _queued(rt, "flaky")
        outputs = _queued(rt, "check")
        assert len(outputs) == N and {(m["meta"]["step"], m["meta"]["spec"]) for m in outputs} == {("flaky", h)}
        rt.process_step("check")
        assert {(m["meta"]["step"], m["meta"]["spec"]) for m in _queued(rt, "sink")} == {("check", h)}
        dead = rt.dead_letters("check")
        assert sorted(d.message.body["n"] for d in dead) == list(range(0, N, 4))
        assert {(d.message.spec, d.error.spec, d.spec) for d in dead} == {(h, h, h)}

    df = flownb.dead_letters(flow, state_dir=state)
    assert list(df["_spec"]) == [h] * len(dead)
    spec_file = flow.save(tmp_path / "flow.yaml")
    listed = _cli("dlq", "list", str(spec_file), "--state-dir", str(state))
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.count(h) == len(dead) and "spec" in listed.stdout
    shown = _cli("dlq", "show", str(spec_file), "--state-dir", str(state), "--id", str(df["_id"].iloc[0]))
    assert shown.returncode == 0 and orjson.loads(shown.stdout)["spec"] == h

    fixed = _flow(fixed=True)
    h2 = fixed.spec_hash(short=True)
    assert h2 != h
    flownb.replay(df, fixed, state_dir=state)  # replayed under the fixed spec: meta.spec and the header agree
    with LocalRuntime(fixed, state) as rt:
        replayed = _queued(rt, "check")
        assert len(replayed) == len(dead)
        assert {(m["meta"]["spec"], m["headers"][REPLAY_SPEC]) for m in replayed} == {(h2, fixed.spec_hash())}


def test_plan_counts_the_queued_messages_of_another_spec_version_and_old_messages_still_run(tmp_path):
    old, new = _flow(), _flow(fixed=True)
    state = tmp_path / "state"
    with LocalRuntime(old, state) as rt:
        rt.poll_once(queue=True)  # N messages of the old spec wait at 'flaky'
        legacy = Message(body={"n": 100}, flow=old.name, step="src")  # as an older flownb wrote it
        wire = legacy.to_json()
        assert b'"spec"' not in wire
        rt.store.conn.execute("INSERT INTO queue (step, available_at, attempt, payload) VALUES (?, 0, 1, ?)",
                              ("flaky", wire))
        rt.store.conn.commit()
    old_spec, new_spec = old.save(tmp_path / "old.yaml"), new.save(tmp_path / "new.yaml")
    plan = _cli("plan", str(old_spec), str(new_spec), "--state-dir", str(state))
    assert plan.returncode == 0, plan.stderr
    assert f"spec {old.spec_hash()} → {new.spec_hash()}" in plan.stdout
    assert (f"{N + 1:,} of {N + 1:,} queued message(s) were produced by another spec version "
            f"({old.spec_hash(short=True)}: {N:,}, unstamped: 1)") in plan.stdout
    same = _cli("plan", str(new_spec), str(new_spec), "--state-dir", str(state))
    assert f"spec {new.spec_hash()} (unchanged)" in same.stdout

    clock = VirtualClock()
    # the old and the unstamped messages run under the new spec (unfused: read at the next step's queue)
    with LocalRuntime(new, state, clock=clock, fuse=False) as rt:
        rt.process_step("flaky")
        clock.advance(60)
        rt.process_step("flaky")
        assert not _queued(rt, "flaky")
        outputs = _queued(rt, "check")
        assert sorted(m["body"]["n"] for m in outputs) == [*range(N), 100]
        assert {m["meta"]["spec"] for m in outputs} == {new.spec_hash(short=True)}
    after = _cli("plan", str(new_spec), str(new_spec), "--state-dir", str(state))
    assert f"{N + 1:,} queued message(s), all produced by the new spec" in after.stdout
