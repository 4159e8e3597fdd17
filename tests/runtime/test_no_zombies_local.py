"""No zombies on the embedded runtime: a step that dies of a BaseException ends ``flownb run`` with
status 70 within 5 s, naming the step, and its batch stays queued; SIGTERM ends a run whose step never
returns within the grace period."""

from __future__ import annotations

import os
import signal
import sqlite3
import time

import pytest
from zombie_flows import POLL_SOURCE, Proc, assert_crashed_with_70, flow

pytestmark = [pytest.mark.integration]


def _env(**extra: str) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin"), "HOME": os.environ.get("HOME", "/root"), **extra}


def _queued(state_dir, name: str) -> dict[str, int]:
    with sqlite3.connect(state_dir / f"{name}.db") as c:
        return dict(c.execute("SELECT step, count(*) FROM queue GROUP BY step").fetchall())


def _poll_in_hand(state_dir, name: str) -> bool:
    """The poll's records were running through the first stage: nothing queued, the cursor where it
    was (no poll committed), and the poll's claim left for the next run to count."""
    with sqlite3.connect(state_dir / f"{name}.db") as c:
        claims = [r[0] for r in c.execute("SELECT ids FROM claims")]
        cursor = c.execute("SELECT state FROM trigger_state WHERE trigger='src'").fetchone()
    return claims == ["poll"] and cursor is None and _queued(state_dir, name) == {}


@pytest.mark.parametrize("mode", [["--until-idle"], []], ids=["until-idle", "serving"])
def test_a_step_dying_of_a_base_exception_ends_run_with_70_within_5s(tmp_path, mode):
    spec = flow("zombie-local", "crash").save(tmp_path / "flow.yaml")
    state = tmp_path / "state"
    proc = Proc(["run", str(spec), "--state-dir", str(state), *mode], _env())
    assert_crashed_with_70(proc)
    assert "the cursor did not move" in proc.out and "processed again on the next run" in proc.out
    # nothing lost: the poll ran through shape and boom (one fused stage) in memory and was not
    # committed, so the records are at their source still (--no-fuse: queued for 'boom', below)
    assert _poll_in_hand(state, "zombie-local")


def test_without_fusion_the_crashed_batch_stays_queued_for_the_step_that_died(tmp_path):
    spec = flow("zombie-nofuse", "crash").save(tmp_path / "flow.yaml")
    state = tmp_path / "state"
    proc = Proc(["run", str(spec), "--state-dir", str(state), "--until-idle", "--no-fuse"], _env())
    assert_crashed_with_70(proc)
    assert _queued(state, "zombie-nofuse") == {"boom": 5}


def test_sigterm_ends_a_run_whose_step_never_returns_within_the_grace_period(tmp_path):
    spec = flow("hang-local", "hang").save(tmp_path / "flow.yaml")
    proc = Proc(["run", str(spec), "--state-dir", str(tmp_path / "state")], _env(FLOWNB_STOP_GRACE="3"))
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not _has_claim(tmp_path / "state" / "hang-local.db"):
            time.sleep(0.1)
        time.sleep(1.0)  # the step is now inside time.sleep(3600)
        sent = time.monotonic()
        proc.p.send_signal(signal.SIGTERM)
        code, exited = proc.wait(30)
    finally:
        proc.kill()
    assert code == 124, proc.stderr()
    assert exited - sent < 3.0 + 2.0
    assert "did not finish within 3s" in proc.stderr()
    assert _poll_in_hand(tmp_path / "state", "hang-local")  # the poll was running through 'shape' and 'boom'


def _has_claim(db) -> bool:
    if not db.exists():
        return False
    try:
        with sqlite3.connect(db) as c:
            return bool(c.execute("SELECT count(*) FROM claims").fetchone()[0])
    except sqlite3.Error:
        return False


def test_webhook_server_answers_503_then_exits_70_when_its_runtime_thread_dies(tmp_path):
    import json
    import socket
    import urllib.error
    import urllib.request

    from zombie_flows import CRASH_SOURCE

    import flownb

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    f = flownb.Flow(name="zombie-hook", trigger=flownb.step("hook", "webhook", token_env="ZOMBIE_HOOK_TOKEN"),
                    steps=[flownb.step("boom", "python", source=CRASH_SOURCE, function="crash")])
    spec = f.save(tmp_path / "flow.yaml")
    token = "t" * 32
    proc = Proc(["run", str(spec), "--state-dir", str(tmp_path / "state"), "--port", str(port)],
                _env(ZOMBIE_HOOK_TOKEN=token))

    def get(path: str, data: bytes | None = None) -> tuple[int, dict]:
        req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if get("/healthz")[0] == 200:
                    break
            except OSError:
                time.sleep(0.1)
        assert get(f"/hooks/zombie-hook/{token}", b'{"id": 1}')[0] == 202
        proc.first("died with an uncaught SimulatedPanic", timeout=30)
        status, body = get("/healthz")
        assert status == 503, body
        assert body["process"]["status"] == "failed" and "step 'boom'" in body["process"]["failures"][0]["where"]
        code, _ = proc.wait(10)
    finally:
        proc.kill()
    assert code == 70, proc.stderr()


HANG_ON_2 = '''
import time

def step(body, ctx):
    if body["id"] == 2:
        time.sleep(3600)  # a call without a timeout
    return body
'''


def test_flownb_step_timeout_ends_a_run_whose_step_hangs_with_70_and_the_hanging_message_becomes_poison(tmp_path):
    """FLOWNB_STEP_TIMEOUT on the embedded runtime: a batch (or a poll run through the first stage)
    that runs longer ends ``flownb run`` with 70, nothing of it committed; the restarts isolate the
    message that hangs and dead-letter it as poison after FLOWNB_MAX_DELIVERIES, the others arrive."""
    import csv

    import flownb
    from flownb.runtime.local import LocalDeadLetters
    out = tmp_path / "out.csv"
    spec = flownb.Flow(
        name="hang-timeout",
        trigger=flownb.step("src", "python.poll", source=POLL_SOURCE, function="poll", options={"rows": 5},
                            interval="1h"),
        steps=[flownb.step("wait", "python", source=HANG_ON_2, function="step"),
               flownb.step("out", "csv.write", path=str(out))]).save(tmp_path / "flow.yaml")
    state = tmp_path / "state"
    env = _env(FLOWNB_STEP_TIMEOUT="2s", FLOWNB_MAX_DELIVERIES="2", FLOWNB_RETRY_WAIT="0")
    runs = []
    for _ in range(3):
        proc = Proc(["run", str(spec), "--state-dir", str(state), "--until-idle"], env)
        try:
            code, _at = proc.wait(60)
        finally:
            proc.kill()
        runs.append((code, time.monotonic() - proc.started, proc.stderr(tail=None), proc.out))
    codes = [r[0] for r in runs]
    assert codes == [70, 70, 1], [r[2][-2000:] for r in runs]
    assert all(r[1] < 2 + 3 + 15 for r in runs[:2])  # the bound, the exit within 3 s, start-up
    # 1st run: the poll's batch ran through 'wait' in memory; 2nd: queued, one suspect at a time
    assert "step 'wait': a poll's batch of 5 record(s) has run for" in runs[0][2]
    assert "step 'wait': a batch of 1 message(s) has run for" in runs[1][2]
    assert "longer than FLOWNB_STEP_TIMEOUT (2 s)" in runs[1][2]
    assert "dead-lettered step 'wait': 1 × PoisonMessage" in runs[2][3]
    with out.open() as fh:
        assert sorted(int(r["id"]) for r in csv.DictReader(fh)) == [0, 1, 3, 4]
    store = LocalDeadLetters(flownb.load(spec), state)
    try:
        [dead] = store.list()
    finally:
        store.close()
    assert dead.step == "wait" and dead.message.body["id"] == 2 and dead.error.type == "PoisonMessage"
