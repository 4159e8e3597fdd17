"""The scheduler loop (``flownb schedule serve``): decide which runs are due, launch them.

Each tick, per schedule, the fire times since the last one handled are due. The newest one is
*current* when it is at most ``grace`` seconds old; the older ones were *missed* (the scheduler was
down, or stalled). The schedule's ``catchup`` policy decides the missed ones: ``none`` drops them,
``last`` queues the newest missed one (unless a current run is due anyway), ``all`` queues every one.
Queued runs are rows in the run history (status ``queued``), so they survive a restart; they run one
after another. A current run starts at once unless a run of the schedule is in progress, in which
case it is recorded ``skipped`` (unless the schedule allows overlap). Runs execute in child
processes (see :mod:`flownb.schedule.runner`); the loop itself never blocks on a notebook.

Schedules are read from the store every tick, so ``flownb schedule add`` (or the Jupyter
extension) takes effect without restarting the scheduler. The clock is injectable for tests.

After each tick the scheduler delivers failed runs to their schedule's ``on_error`` actions when its
window allows (:mod:`flownb.schedule.on_error`); as it stops, what is pending goes out at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from .model import RunRecord, Schedule, next_fire_times
from .on_error import ScheduleErrorNotifier
from .runner import claim, execute, record_failure
from .store import ScheduleStore

__all__ = ["Scheduler"]

log = logging.getLogger("flownb.schedule")


class Scheduler:
    """Runs the schedules of one state directory. ``serve()`` loops; ``tick()`` decides once."""

    def __init__(
        self,
        store: ScheduleStore,
        *,
        clock: Callable[[], float] = time.time,
        interval: float = 0.5,
        grace: float = 60.0,
        on_run: Callable[[RunRecord], None] | None = None,
    ):
        self.store = store
        self.clock = clock
        self.interval = interval
        self.grace = grace
        self.on_run = on_run
        self._active: dict[int, threading.Thread] = {}
        self._active_by_schedule: dict[str, set[int]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        #: delivers failed runs to their schedule's on_error (:meth:`notify_errors`)
        self.errors = ScheduleErrorNotifier(store)

    # -- decisions --------------------------------------------------------------------------------
    def tick(self) -> list[int]:
        """Handle due fire times and queued runs of every schedule; return the ids of runs started."""
        started: list[int] = []
        for schedule in self.store.list():
            try:
                started += self._tick_schedule(schedule)
            except Exception:  # one broken schedule must not stop the others
                log.exception("schedule '%s': tick failed", schedule.name)
        return started

    def _tick_schedule(self, s: Schedule) -> list[int]:
        now = self.clock()
        due = next_fire_times(s, self.store.last_fire(s.name), now)
        started: list[int] = []
        if due:
            current = due[-1] if now - due[-1] <= self.grace else None
            missed = due[:-1] if current is not None else due
            backlog = {"none": [], "last": [] if current is not None else missed[-1:], "all": missed}[
                s.catchup
            ]
            if len(missed) > len(backlog):
                log.info(
                    "schedule '%s': %d missed run(s) not caught up (catchup=%s)",
                    s.name,
                    len(missed) - len(backlog),
                    s.catchup,
                )
            with self.store.transaction() as con:
                for t in backlog:
                    self.store.insert_run(
                        con, s.name, "queued", trigger="catchup", planned_for=t, queued_at=now
                    )
                has_queue = (
                    bool(backlog)
                    or con.execute(
                        "SELECT 1 FROM runs WHERE schedule=? AND status='queued' LIMIT 1", (s.name,)
                    ).fetchone()
                )
                if current is not None and has_queue:
                    self.store.insert_run(
                        con, s.name, "queued", trigger="cron", planned_for=current, queued_at=now
                    )
                self.store.set_last_fire(s.name, due[-1], con)
            if current is not None and not has_queue:
                run_id = claim(self.store, s, trigger="cron", planned_for=current)
                if run_id is None:
                    self._report(self.store.history(s.name, limit=1)[0])
                else:
                    started.append(self._launch(s, run_id))
        if not self._busy(s.name):
            queued = self.store.queued(s.name)
            if queued:
                run_id = claim(
                    self.store,
                    s,
                    trigger=queued[0].trigger,
                    planned_for=queued[0].planned_for,
                    queued_id=queued[0].id,
                )
                if run_id is not None:
                    started.append(self._launch(s, run_id))
        return started

    def notify_errors(self, *, force: bool = False) -> int:
        """Deliver failed runs to their schedule's on_error when its window allows (``force``: now);
        returns how many were delivered. ``serve`` calls it after every tick."""
        return self.errors.tick(self.clock(), force=force)

    def _busy(self, name: str) -> bool:
        with self._lock:
            return bool(self._active_by_schedule.get(name))

    # -- execution --------------------------------------------------------------------------------
    def _launch(self, s: Schedule, run_id: int) -> int:
        t = threading.Thread(target=self._execute, args=(s, run_id), name=f"flownb-run-{run_id}", daemon=True)
        with self._lock:
            self._active[run_id] = t
            self._active_by_schedule.setdefault(s.name, set()).add(run_id)
        t.start()
        return run_id

    def _execute(self, s: Schedule, run_id: int) -> None:
        try:
            try:
                rec = execute(self.store, s, run_id)
            except Exception as exc:
                log.exception("schedule '%s': run %d could not be executed", s.name, run_id)
                record_failure(self.store, s, run_id, exc)
                rec = self.store.run(run_id)
            # reported while still active: a stop waits for it (wait_idle), so the line of a run
            # that finished as the scheduler was told to stop is printed before the process ends
            self._report(rec)
        finally:
            with self._lock:
                self._active.pop(run_id, None)
                self._active_by_schedule.get(s.name, set()).discard(run_id)

    def _report(self, rec: RunRecord) -> None:
        if self.on_run is not None:
            try:
                self.on_run(rec)
            except Exception:
                log.exception("on_run callback failed")

    @property
    def active(self) -> list[int]:
        with self._lock:
            return sorted(self._active)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no run started by this scheduler is in progress; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                threads = list(self._active.values())
            if not threads:
                return True
            for t in threads:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                t.join(left)
                if deadline is not None and time.monotonic() >= deadline and t.is_alive():
                    return False

    # -- loop -------------------------------------------------------------------------------------
    def serve(self, *, until: Callable[[], bool] | None = None) -> None:
        """Tick every ``interval`` seconds until :meth:`stop` (or ``until()`` is true); then wait for
        the runs in progress to finish (each is bounded by its timeout)."""
        log.info("scheduler started on %s (%d schedule(s))", self.store.state_dir, len(self.store.names()))
        while not self._stop.is_set() and not (until and until()):
            self.tick()
            self.notify_errors()
            self._stop.wait(self.interval)
        self.wait_idle()
        try:
            self.notify_errors(force=True)  # what failed last is not left for the next start
        finally:
            self.errors.close()  # the on_error actions' connections, even when that delivery failed
        log.info("scheduler stopped")

    def stop(self) -> None:
        self._stop.set()
