"""The scheduler loop: real cron intervals (seconds field) and real papermill runs; catch-up decisions
with an injected clock (the runs themselves are real)."""

import threading
import time

import pytest

from flownb.schedule import Scheduler, add_schedule

pytestmark = pytest.mark.slow


def _serve(sched, until, limit=60.0):
    deadline = time.monotonic() + limit
    t = threading.Thread(target=sched.serve, kwargs={"until": lambda: until() or time.monotonic() > deadline})
    t.start()
    t.join(limit + 30)
    assert not t.is_alive()
    assert time.monotonic() <= deadline, "the scheduler did not reach the expected state in time"


def test_loop_runs_a_seconds_schedule_on_its_fire_times(store, params_nb):
    add_schedule(store, params_nb, cron="* * * * * */3", name="tick", parameters={"n": 2})
    seen = []
    sched = Scheduler(store, interval=0.2, on_run=seen.append)
    _serve(sched, lambda: len([r for r in seen if r.status == "ok"]) >= 2)
    done = [r for r in store.history("tick") if r.status == "ok"]
    assert len(done) >= 2
    for r in done:
        assert r.trigger == "cron" and r.planned_for % 3 == 0
        assert 0 <= r.started_at - r.planned_for < 2.0  # started on time
        assert r.output_exists


def test_loop_skips_fire_times_while_a_run_is_in_progress(store, slow_nb):
    add_schedule(store, slow_nb, cron="* * * * * *", name="busy", parameters={"seconds": 3})
    sched = Scheduler(store, interval=0.1)
    _serve(sched, lambda: any(r.status == "ok" for r in store.history("busy")))
    runs = store.history("busy", limit=100)
    ok = [r for r in runs if r.status == "ok"]
    skipped = [r for r in runs if r.status == "skipped"]
    assert len(ok) == 1 and len(skipped) >= 2
    assert all(ok[0].started_at <= s.planned_for <= ok[0].finished_at + 1 for s in skipped)
    assert all("still running" in s.error_value for s in skipped)


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


def _schedule_missed(store, params_nb, catchup, missed=3, late=30.0):
    """A every-minute schedule created `missed` minutes (+ `late` s) before the injected clock's now."""
    base = (time.time() // 60) * 60 - 3600
    add_schedule(store, params_nb, cron="* * * * *", name=f"c-{catchup}", catchup=catchup)
    store.add(store.get(f"c-{catchup}").model_copy(update={"created_at": base}), replace=True)
    return f"c-{catchup}", base, Clock(base + missed * 60 + late)


def _drain(sched, name, limit=60.0):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        sched.tick()
        if not sched.active and not sched.store.queued(name):
            return
        time.sleep(0.1)
    pytest.fail("queued runs did not drain")


def test_catchup_none_drops_missed_runs(store, params_nb):
    name, base, clock = _schedule_missed(store, params_nb, "none")
    sched = Scheduler(store, clock=clock, grace=10)
    assert sched.tick() == []
    assert store.history(name) == [] and store.last_fire(name) == base + 180
    clock.now += 35  # the next minute comes due, on time
    assert len(sched.tick()) == 1
    sched.wait_idle(30)
    [r] = store.history(name)
    assert (r.status, r.trigger, r.planned_for) == ("ok", "cron", base + 240)


def test_catchup_last_runs_the_newest_missed_once(store, params_nb):
    name, base, clock = _schedule_missed(store, params_nb, "last")
    sched = Scheduler(store, clock=clock, grace=10)
    _drain(sched, name)
    [r] = store.history(name)
    assert (r.status, r.trigger, r.planned_for) == ("ok", "catchup", base + 180)
    assert sched.tick() == []  # nothing is due twice


def test_catchup_all_runs_every_missed_one_in_order_without_overlap(store, params_nb):
    name, base, clock = _schedule_missed(store, params_nb, "all")
    sched = Scheduler(store, clock=clock, grace=10)
    sched.tick()
    assert [r.status for r in store.history(name)] == ["queued", "queued", "running"]
    _drain(sched, name)
    runs = sorted(store.history(name), key=lambda r: r.started_at)
    assert [r.planned_for for r in runs] == [base + 60, base + 120, base + 180]
    assert {r.status for r in runs} == {"ok"} and {r.trigger for r in runs} == {"catchup"}
    for a, b in zip(runs, runs[1:]):
        assert a.finished_at <= b.started_at


def test_queued_catchup_runs_survive_a_scheduler_restart(store, params_nb):
    name, base, clock = _schedule_missed(store, params_nb, "all", missed=2)
    first = Scheduler(store, clock=clock, grace=10)
    first.tick()
    first.wait_idle(30)  # scheduler "stops" with one run still queued
    assert [r.status for r in store.history(name)] == ["queued", "ok"]
    second = Scheduler(store, clock=clock, grace=10)
    _drain(second, name)
    assert [r.status for r in store.history(name)] == ["ok", "ok"]
