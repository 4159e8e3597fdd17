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
        assert r.planned_for <= r.started_at  # never early (how late depends on the machine's load:
        assert r.output_exists                # that it starts exactly when due is the next test's)
    assert len({r.planned_for for r in done}) == len(done)  # each fire time runs once


def test_a_stop_waits_for_the_report_of_a_run_that_has_just_finished(store, params_nb):
    """The run's line (``flownb schedule serve`` prints it from ``on_run``) is part of the run: a
    scheduler told to stop as the run's result is stored returns only after reporting it."""
    add_schedule(store, params_nb, cron="* * * * * */2", name="last", parameters={"n": 2})
    reported = []

    def slow_report(rec):
        time.sleep(1.0)  # a slow console: the stop below lands while the report is being written
        reported.append(rec.status)

    sched = Scheduler(store, interval=0.2, on_run=slow_report)
    t = threading.Thread(target=sched.serve)
    t.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(r.status == "ok" for r in store.history("last")):
        time.sleep(0.02)
    sched.stop()  # the run is stored as ok; its report is still being written
    t.join(60)
    assert not t.is_alive()
    assert "ok" in reported  # (fire times skipped while it ran are reported too)


def test_a_fire_time_starts_its_run_at_the_first_tick_at_or_after_it(store, params_nb):
    """On time, judged on an injected clock: nothing before the fire time, the run at the first tick at
    or after it, for that fire time."""
    add_schedule(store, params_nb, cron="* * * * * */3", name="tick", parameters={"n": 2})
    t0 = float((int(time.time()) // 3 + 10) * 3)
    store.add(store.get("tick").model_copy(update={"created_at": t0 - 2.5}), replace=True)
    clock = Clock(t0 - 0.001)
    sched = Scheduler(store, clock=clock, grace=10)
    assert sched.tick() == []  # a millisecond early: nothing
    clock.now = t0
    [run_id] = sched.tick()
    assert sched.wait_idle(120)
    r = store.run(run_id)
    assert (r.status, r.trigger, r.planned_for) == ("ok", "cron", t0)
    clock.now = t0 + 2.999
    assert sched.tick() == []  # the next fire time is t0 + 3
    assert [x.planned_for for x in store.history("tick")] == [t0]


def _gate_notebook(path) -> None:
    """A notebook that runs until the file ``gate`` exists: "in progress" for exactly as long as the
    test wants, whatever the machine's load."""
    import nbformat
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("gate = ''", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("import os, time\nwhile not os.path.exists(gate):\n    time.sleep(0.05)"),
    ])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def test_loop_skips_fire_times_while_a_run_is_in_progress(store, tmp_path):
    """Every fire time that comes due while a run is in progress is recorded as skipped (with the
    running run's id), none is run late, and the first fire after the run finished runs. The clock is
    injected and the run ends when the test opens its gate, so no step depends on the machine's speed
    (the wall-clock version flaked on a busy 2-core machine)."""
    nb, gate = tmp_path / "gate.ipynb", tmp_path / "gate"
    _gate_notebook(nb)
    add_schedule(store, nb, cron="* * * * * *", name="busy", parameters={"gate": str(gate)})
    t0 = float(int(time.time()) + 10)
    store.add(store.get("busy").model_copy(update={"created_at": t0 - 0.5}), replace=True)
    clock = Clock(t0)
    sched = Scheduler(store, clock=clock, grace=10)
    try:
        [first] = sched.tick()  # the fire at t0 starts a run
        for k in range(1, 6):  # five more fire times come due while it runs
            clock.now = t0 + k
            assert sched.tick() == []
            assert sched.active == [first]
    finally:
        gate.touch()  # also when an assertion failed: no run is left waiting
        assert sched.wait_idle(120)
    runs = {r.planned_for: r for r in store.history("busy", limit=100)}
    assert sorted(runs) == [t0 + k for k in range(6)]
    assert (runs[t0].id, runs[t0].status, runs[t0].trigger) == (first, "ok", "cron")
    for k in range(1, 6):
        assert (runs[t0 + k].status, runs[t0 + k].error_value) == \
            ("skipped", f"run {first} of this schedule was still running")
    clock.now = t0 + 6  # the run is over: the next fire time runs
    [second] = sched.tick()
    assert sched.wait_idle(120)
    after = store.run(second)
    assert (after.status, after.planned_for, after.trigger) == ("ok", t0 + 6, "cron")
    assert len(store.history("busy", limit=100)) == 7


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
    for a, b in zip(runs, runs[1:], strict=False):
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
