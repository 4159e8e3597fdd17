"""The embedded runtime: durable SQLite queues, atomic polls and batches, retries, dead letters,
submit/back-pressure, final listeners, run loop."""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest
from runtimes import sink_counts

from flownb import Message, action
from flownb.errors import MessageError, QueueFull, RuntimeFailure, SpecError
from flownb.runtime.local import LocalDeadLetters, LocalRuntime, VirtualClock

FAST = {"retry": {"max_attempts": 3, "initial": "20ms", "max": "50ms"}}


def _queue(rt, step):
    return rt.store.depths().get(step, 0)


def test_poll_commits_messages_and_cursor_together(flow_factory, tmp_path):
    flow = flow_factory(("double", "lt.double", {}), trigger=("lt.count", {"total": 30, "batch": 10}))
    with LocalRuntime(flow, tmp_path) as rt:
        assert rt.poll_once(queue=True) == 10
        assert _queue(rt, "double") == 10
        assert rt.store.get_state("src")[0] == {"next": 10}
    assert (tmp_path / f"{flow.name}.db").exists()
    with LocalRuntime(flow, tmp_path) as rt:  # a restart continues from the saved cursor
        assert rt.poll_once() == 10
        assert rt.store.get_state("src")[0] == {"next": 20}
        summary = rt.drain()
        assert summary.steps["double"].inputs == 20 and summary.pending == {}


def test_a_poll_runs_through_the_first_stage_and_commits_its_outcomes_with_the_cursor(flow_factory, tmp_path):
    """Never queued for the first step: the stage's outputs, retries and dead letters (the first
    member's included, its input as received) and the new cursor are one transaction."""
    sink = tmp_path / "sink.db"
    flow = flow_factory(("fatal", "lt.fatal", {}), ("double", "lt.double", {}),
                        ("flaky", "lt.flaky", {"fail_times": 1}, FAST), ("sink", "lt.sink", {"path": str(sink)}),
                        trigger=("lt.count", {"total": 30, "batch": 10, "poison": [4]}))
    with LocalRuntime(flow, tmp_path / "state") as rt:
        assert rt.poll_once() == 10
        assert rt.store.get_state("src")[0] == {"next": 10}
        assert rt.store.depths() == {"flaky": 9}  # each retried once, at the member that failed
        assert rt.store.conn.execute("SELECT count(*) FROM claims").fetchone()[0] == 0
        assert rt.stats["fatal"].inputs == 10 and rt.stats["double"].inputs == 9 and rt.stats["flaky"].retried == 9
        [dead] = rt.dead_letters()
        assert dead.step == "fatal" and dead.message.body == {"n": 4, "poison": True} and dead.message.attempt == 1
        assert dead.message.step == "src" and dead.error.type == "FatalError"
        rt.drain()
        assert sink_counts(sink) == (9, 9)
        assert rt.stats["sink"].inputs == 9


def test_a_poll_run_through_hands_the_first_step_the_wire_form_as_a_queued_poll_does():
    """A trigger that is not json_native (python.poll yielding a datetime and a tuple): its records
    reach the first step as a string and a list whether they ran through the first stage or were
    queued (--no-fuse, RabbitMQ), never as the Python objects."""
    from flownb import Flow, step
    poll = (
        "import datetime\n"
        "def poll(state, ctx):\n"
        "    if state.get('done'):\n"
        "        return []\n"
        "    state['done'] = True\n"
        "    return [{'at': datetime.datetime(2024, 5, 1, 10, 0), 'pair': (1, 2)}]\n")
    flow = Flow(name="wire-form", trigger=step("src", "python.poll", source=poll, function="poll"),
                steps=[step("m", "mapping", fields={"at": "at", "pair": "pair"})])
    seen = {}
    for fuse in (True, False):
        with LocalRuntime(flow, memory=True, record=True, fuse=fuse) as rt:
            rt.poll_once()
            rt.drain()
            seen[fuse] = rt.recorded["m"]
    assert seen[True] == seen[False] == [{"at": "2024-05-01T10:00:00", "pair": [1, 2]}]


def test_failed_poll_changes_nothing(flow_factory, tmp_path):
    from flownb import polling_trigger

    calls = []

    @polling_trigger("ltlocal.half-poll")
    def half(state, ctx):
        calls.append(1)
        state["next"] = 99
        yield {"n": 1}
        raise ConnectionError("source went away mid-poll")

    flow = flow_factory(("double", "lt.double", {}), trigger=("ltlocal.half-poll", {"interval": "5s"}))
    with LocalRuntime(flow, tmp_path) as rt:
        assert rt.poll_once() == 0
        assert rt.store.get_state("src")[0] == {}
        assert rt.store.depths() == {}
        assert rt.stats["src"].errors == 1 and "source went away" in rt.poll_errors[0]
        assert rt.next_poll_at() == pytest.approx(time.time() + 5, abs=1)
        with pytest.raises(ConnectionError):
            rt.poll_once(raise_errors=True)


def test_batch_interrupted_mid_way_is_redone(flow_factory, tmp_path):
    """A batch whose process is interrupted commits nothing: every input is processed again."""
    seen = []

    @action("ltlocal.interrupt-once")
    def interrupt(body, ctx):
        seen.append(body["n"])
        if body["n"] == 3 and seen.count(3) == 1:
            raise KeyboardInterrupt  # like a kill between processing and commit
        return body

    sink = tmp_path / "sink.db"
    flow = flow_factory(("stop", "ltlocal.interrupt-once", {}), ("sink", "lt.sink", {"path": str(sink)}),
                        trigger=("lt.count", {"total": 6}))
    rt = LocalRuntime(flow, tmp_path / "state")
    rt.poll_once(queue=True)
    with pytest.raises(KeyboardInterrupt):
        rt.drain()
    assert _queue(rt, "stop") == 6 and _queue(rt, "sink") == 0
    rt.close()
    with LocalRuntime(flow, tmp_path / "state") as rt:
        rt.drain()
    assert sink_counts(sink) == (6, 6)
    assert seen == [0, 1, 2, 3, 0, 1, 2, 3, 4, 5]


def test_poll_run_through_interrupted_mid_way_is_redone_queued_with_the_death_counted(flow_factory, tmp_path):
    """A poll whose records run through the first stage and whose process is interrupted commits
    nothing (the cursor stays); the next run reads the same records again and queues them, each
    with the death counted, so that they are run one at a time (a record that kills the process
    is isolated, as a queued batch's would be)."""
    seen = []

    @action("ltlocal.interrupt-poll-once")
    def interrupt(body, ctx):
        seen.append(body["n"])
        if body["n"] == 3 and seen.count(3) == 1:
            raise KeyboardInterrupt
        return body

    sink = tmp_path / "sink.db"
    flow = flow_factory(("stop", "ltlocal.interrupt-poll-once", {}), ("sink", "lt.sink", {"path": str(sink)}),
                        trigger=("lt.count", {"total": 6}))
    rt = LocalRuntime(flow, tmp_path / "state")
    with pytest.raises(KeyboardInterrupt):
        rt.poll_once()
    assert rt.store.get_state("src")[0] == {} and rt.store.depths() == {}
    rt.close()
    assert sink_counts(sink) == (0, 0)
    with LocalRuntime(flow, tmp_path / "state") as rt:
        assert rt.poll_once() == 6
        rows = rt.store.conn.execute("SELECT step, deliveries FROM queue").fetchall()
        assert rows == [("stop", 1)] * 6
        rt.drain()
        assert rt.store.get_state("src")[0] == {"next": 6}
    assert sink_counts(sink) == (6, 6)
    assert seen == [0, 1, 2, 3, 0, 1, 2, 3, 4, 5]


def test_retry_reschedules_with_backoff_then_succeeds(flow_factory, tmp_path):
    flow = flow_factory(("flaky", "lt.flaky", {"fail_times": 2},
                         {"retry": {"max_attempts": 5, "initial": "300ms", "multiplier": 2}}),
                        trigger=("lt.count", {"total": 3}))
    # on the runtime's clock, injected: the back-off is exact (a wall clock read by the test itself
    # once saw 0.897 s for the 0.9 s of waiting, on a VM whose clock was adjusted meanwhile)
    clock = VirtualClock(start=1_000.0)
    with LocalRuntime(flow, tmp_path, record=True, clock=clock) as rt:
        rt.poll_once()
        rt.process_step("flaky")
        rows = rt.store.conn.execute("SELECT attempt, available_at FROM queue").fetchall()
        assert [a for a, _ in rows] == [2, 2, 2]
        assert [at for _, at in rows] == [pytest.approx(1_000.3)] * 3  # 300 ms after the failure
        assert rt.process_step("flaky") == 0           # not due yet
        summary = rt.drain()
        assert clock() == pytest.approx(1_000.9)       # waited 300 ms, then 600 ms, and no longer
    assert summary.steps["flaky"].retried == 6 and summary.steps["flaky"].outputs == 3
    assert [b["attempts"] for b in rt.recorded["flaky"]] == [3, 3, 3]


def test_retries_far_in_future_are_reported_pending(flow_factory, tmp_path):
    flow = flow_factory(("flaky", "lt.flaky", {"fail_times": 1}, {"retry": {"initial": "1h", "max": "2h"}}),
                        trigger=("lt.count", {"total": 2}))
    with LocalRuntime(flow, tmp_path, retry_wait=0.5) as rt:
        t0 = time.monotonic()
        summary = rt.run(until_idle=True)
        assert time.monotonic() - t0 < 5
    assert summary.pending == {"flaky": 2}
    assert 3500 < summary.next_retry_in <= 3600
    with LocalRuntime(flow, tmp_path) as rt:  # still queued after a restart
        assert _queue(rt, "flaky") == 2


def test_dead_letters_survive_restart_and_replay_after_fix(flow_factory, tmp_path):
    fix = tmp_path / "fixed"
    sink = tmp_path / "sink.db"
    flow = flow_factory(("double", "lt.double", {}),
                        ("work", "lt.poison", {"fix_file": str(fix)}, FAST),
                        ("sink", "lt.sink", {"path": str(sink)}),
                        trigger=("lt.count", {"total": 10, "poison": [3, 7]}))
    state = tmp_path / "state"
    with LocalRuntime(flow, state) as rt:
        summary = rt.run(until_idle=True)
    assert summary.steps["work"].dead == 2 and summary.dead_letters == 2
    assert sink_counts(sink) == (8, 8)

    dlq = LocalDeadLetters(flow, state)
    items = dlq.list()
    assert sorted(d.message.body["n"] for d in items) == [3, 7]
    d = dlq.show(items[0].id)
    assert d.step == "work" and d.error.type == "RetryableError" and d.error.attempt == 3
    assert "poison message" in d.error.traceback and d.message.attempt == 3
    assert d.message.body["w"] == 2 * d.message.body["n"]
    assert dlq.list("double") == []
    with pytest.raises(SpecError, match="did you mean 'work'"):
        dlq.list("wrok")
    with pytest.raises(SpecError, match="no dead letter with id"):
        dlq.show("999")

    fix.touch()
    assert dlq.replay(ids=[items[0].id]) == 1
    assert dlq.replay("work") == 1
    assert dlq.list() == []
    row = dlq.store.conn.execute("SELECT step, attempt FROM queue").fetchall()
    assert row == [("work", 1), ("work", 1)]
    dlq.close()
    with LocalRuntime(flow, state) as rt:
        summary = rt.run(until_idle=True)
    assert summary.steps["work"].inputs == 2 and summary.dead_letters == 0
    assert sink_counts(sink) == (10, 10)


def test_dead_letter_store_needs_existing_state(flow_factory, tmp_path):
    flow = flow_factory(("double", "lt.double", {}))
    with pytest.raises(RuntimeFailure, match="run the flow first"):
        LocalDeadLetters(flow, tmp_path / "nowhere")


def test_output_that_is_not_json_dead_letters_naming_the_step(flow_factory, tmp_path):
    @action("ltlocal.nan")
    def nan(body, ctx):
        return {"n": body["n"], "x": float("nan") if body["n"] == 1 else 1.0}

    @action("ltlocal.obj")
    def obj(body, ctx):
        return {"n": body["n"], "when": object()} if body["n"] == 2 else body

    flow = flow_factory(("nan", "ltlocal.nan", {}), ("obj", "ltlocal.obj", {}),
                        trigger=("lt.count", {"total": 4}))
    with LocalRuntime(flow, tmp_path, record=True) as rt:
        rt.run(until_idle=True)
        dead = {d.step: d for d in rt.dead_letters()}
    assert set(dead) == {"nan", "obj"}
    assert dead["nan"].error.type == "MessageError" and "step 'nan'" in dead["nan"].error.message
    assert "step 'obj'" in dead["obj"].error.message and not dead["obj"].error.retryable
    assert [b["n"] for b in rt.recorded["obj"]] == [0, 3]


def test_submit_is_durable_thread_safe_and_bounded(flow_factory, tmp_path):
    flow = flow_factory(("double", "lt.double", {}))
    rt = LocalRuntime(flow, tmp_path, max_queue=200)
    errors = []

    def worker(k):
        for i in range(40):
            try:
                rt.submit({"n": k * 1000 + i}, {"x-source": k})
            except QueueFull as exc:
                errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert _queue(rt, "double") == 200 and len(errors) == 120
    assert errors[0].limit == 200 and "retry later" in str(errors[0])
    with pytest.raises(MessageError, match="JSON object"):
        rt.submit(["not", "a", "dict"])
    with pytest.raises(MessageError):
        rt.submit({"x": float("inf")})
    rt.close()
    # committed before submit returned: a new process sees them, headers kept
    with LocalRuntime(flow, tmp_path, record=True) as rt2:
        payload = rt2.store.conn.execute("SELECT payload FROM queue LIMIT 1").fetchone()[0]
        m = Message.from_json(payload)
        assert m.headers["x-source"] in {str(k) for k in range(8)} and m.step == "src"
        rt2.drain()
        assert len(rt2.recorded["double"]) == 200


def test_final_listener_sees_each_trace_once(flow_factory, tmp_path):
    flow = flow_factory(("split", "lt.split", {"parts": 3}), ("even", "lt.even", {}),
                        ("crash", "lt.crash", {}))
    got = {}
    with LocalRuntime(flow, tmp_path) as rt:
        rt.add_final_listener(lambda trace, bodies: got.setdefault(trace, []).append(bodies))
        a = rt.submit({"n": 2})
        b = rt.submit({"n": 3})                 # filtered out
        c = rt.submit({"n": 4, "poison": True})  # dead-lettered
        rt.drain()
    assert got[a.id] == [[{"n": 2, "part": k} for k in range(3)]]
    assert got[b.id] == [[]]
    assert got[c.id] == [[]]


def test_run_loop_polls_when_due_and_stops(flow_factory, tmp_path):
    flow = flow_factory(("double", "lt.double", {}),
                        trigger=("lt.count", {"total": 1000, "batch": 1, "interval": "50ms"}))
    stop = threading.Event()
    with LocalRuntime(flow, tmp_path, record=True) as rt:
        th = threading.Thread(target=rt.run, kwargs={"stop_event": stop})
        t0 = time.monotonic()
        th.start()
        time.sleep(1.0)
        stop.set()
        th.join(5)
        elapsed = time.monotonic() - t0
        assert not th.is_alive()
        polls = rt.stats["src"].outputs
        state, next_at = rt.store.get_state("src")
    assert 3 <= polls <= elapsed / 0.05 + 1, (polls, elapsed)   # every 50ms, never faster
    assert state == {"next": polls}
    assert [b["n"] for b in rt.recorded["double"]] == list(range(polls))


def test_schedule_trigger_honours_next_delay(flow_factory, tmp_path):
    from flownb.components.base import PollingTrigger

    class EveryHour(PollingTrigger):
        def next_delay(self, state):
            return 3600.0 if state.get("ran") else 0.0

        def poll(self, state, ctx):
            was = state.get("ran", False)
            state["ran"] = True
            return [{"n": 1}] if was else []

    from flownb import register
    register("ltlocal.hourly", EveryHour)
    flow = flow_factory(("double", "lt.double", {}), trigger=("ltlocal.hourly", {}))
    with LocalRuntime(flow, tmp_path) as rt:
        rt.poll_once()
        assert rt.next_poll_at() == pytest.approx(time.time() + 3600, abs=5)


def test_poll_backlog_polls_again_while_trigger_says_more_is_ready(flow_factory, tmp_path):
    from flownb import polling_trigger
    from flownb.components.base import PollingTrigger

    @polling_trigger("ltlocal.pages")
    def pages(state, ctx):
        page = state.get("page", 0)
        state["page"] = page + 1
        return [{"n": page}] if page < 4 else []

    cls = pages
    cls.next_delay = lambda self, state: 0.0 if state.get("page", 0) < 4 else PollingTrigger.next_delay(self, state)
    flow = flow_factory(("double", "lt.double", {}), trigger=("ltlocal.pages", {}))
    with LocalRuntime(flow, tmp_path) as rt:
        assert rt.poll_backlog() == 4
        assert rt.store.get_state("src")[0] == {"page": 4}


def test_wal_mode_and_one_db_per_flow(flow_factory, tmp_path):
    f1 = flow_factory(("double", "lt.double", {}))
    f2 = flow_factory(("double", "lt.double", {}))
    with LocalRuntime(f1, tmp_path), LocalRuntime(f2, tmp_path):
        pass
    assert sorted(p.name for p in tmp_path.glob("*.db")) == sorted([f"{f1.name}.db", f"{f2.name}.db"])
    db = sqlite3.connect(tmp_path / f"{f1.name}.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


def test_memory_runtime_leaves_no_files(flow_factory, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    flow = flow_factory(("double", "lt.double", {}))
    with LocalRuntime(flow, memory=True) as rt:
        rt.poll_once()
        rt.drain()
    assert list(tmp_path.iterdir()) == []


def test_one_runtime_per_state_database(flow_factory, tmp_path):
    flow = flow_factory(("double", "lt.double", {}))
    rt = LocalRuntime(flow, tmp_path)
    with pytest.raises(RuntimeFailure, match="already running with state directory"):
        LocalRuntime(flow, tmp_path)
    with LocalRuntime(flow, tmp_path / "other"), LocalRuntime(flow, memory=True):
        pass
    dlq = LocalDeadLetters(flow, tmp_path)  # dead letters can be listed and replayed meanwhile
    assert dlq.list() == []
    dlq.close()
    rt.close()
    with LocalRuntime(flow, tmp_path):
        pass


def test_trigger_only_flow(flow_factory, tmp_path):
    flow = flow_factory(trigger=("lt.count", {"total": 3}))
    r = flow.test()
    assert r.last == [{"n": 0}, {"n": 1}, {"n": 2}]
    got = []
    with LocalRuntime(flow, tmp_path) as rt:
        rt.add_final_listener(lambda trace, bodies: got.append(bodies))
        rt.submit({"n": 9})
        assert rt.run(until_idle=True).steps["src"].outputs == 4
    assert got == [[{"n": 9}]]


def test_submit_many_commits_together_and_refuses_item_by_item(flow_factory, tmp_path):
    """Group commit for the webhook: one transaction for the batch; a bad body or a full queue
    refuses only its own items, in order, and nothing of a refused item is queued."""
    flow = flow_factory(("double", "lt.double", {}))
    rt = LocalRuntime(flow, tmp_path, max_queue=5)
    commits = []
    enqueue = rt.store.enqueue
    rt.store.enqueue = lambda step, payloads, now: (commits.append(len(payloads)), enqueue(step, payloads, now))[1]
    items = [({"n": 1}, {"h": "a"}), (["not a dict"], None), ({"n": float("nan")}, None),
             ({"n": 2}, None), ({"n": 3}, None), ({"n": 4}, None), ({"n": 5}, None), ({"n": 6}, None)]
    results = rt.submit_many(items)
    assert commits == [5]
    kinds = [type(r).__name__ for r in results]
    assert kinds == ["Message", "MessageError", "MessageError", "Message", "Message", "Message", "Message",
                     "QueueFull"]
    assert "JSON object" in str(results[1]) and results[7].limit == 5
    assert _queue(rt, "double") == 5
    assert rt.submit_many([({"n": 7}, None)])[0].__class__ is QueueFull  # still full
    rt.close()
    with LocalRuntime(flow, tmp_path, record=True) as rt2:
        rt2.drain()
        assert sorted(b["w"] for b in rt2.recorded["double"]) == [2, 4, 6, 8, 10]
