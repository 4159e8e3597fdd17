"""Execute one scheduled run: claim it (never overlapping itself), run papermill in a child process
with a timeout, record the outcome, prune old output notebooks.

Statuses: ``running`` → ``ok`` | ``failed`` (cell index, error name and value) | ``timeout`` (killed);
``skipped`` when a run of the same schedule was still in progress; ``lost`` when the process that
owned a run died before recording its result.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from .model import RunRecord, Schedule, ScheduleError
from .store import ScheduleStore

__all__ = ["claim", "execute", "run_now", "prune_outputs", "KILL_GRACE"]

log = logging.getLogger("flownb.schedule")
#: seconds a timed-out run gets after SIGTERM (to shut its kernel down) before SIGKILL
KILL_GRACE = 5.0


def claim(
    store: ScheduleStore,
    schedule: Schedule,
    *,
    trigger: str,
    planned_for: float | None,
    queued_id: int | None = None,
) -> int | None:
    """Mark a run as running and return its id; or record it ``skipped`` and return None when the
    schedule has a run in progress (unless it allows overlap). A queued run (``queued_id``) instead
    stays queued while another run is in progress. Atomic across processes."""
    now = time.time()
    with store.transaction() as con:
        busy = store.running(con, schedule.name)
        if busy and queued_id is not None:
            return None  # a queued (catch-up) run waits for its turn
        if busy and not schedule.allow_overlap:
            reason = f"run {busy[0]} of this schedule was still running"
            store.insert_run(
                con,
                schedule.name,
                "skipped",
                trigger=trigger,
                planned_for=planned_for,
                queued_at=now,
                finished_at=now,
                error_value=reason,
            )
            log.warning("schedule '%s': run for %s skipped: %s", schedule.name, planned_for, reason)
            return None
        if queued_id is not None:
            con.execute(
                "UPDATE runs SET status='running', started_at=?, pid=? WHERE id=?",
                (now, os.getpid(), queued_id),
            )
            return queued_id
        return store.insert_run(
            con,
            schedule.name,
            "running",
            trigger=trigger,
            planned_for=planned_for,
            queued_at=now,
            started_at=now,
            pid=os.getpid(),
        )


def _stamp(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y%m%dT%H%M%S-%fZ")


def execute(store: ScheduleStore, schedule: Schedule, run_id: int) -> RunRecord:
    """Run the claimed run ``run_id`` to completion (or timeout) and record the outcome."""
    started = time.time()
    out_dir = store.runs_dir / schedule.name
    out_dir.mkdir(parents=True, exist_ok=True)
    base = out_dir / _stamp(started)
    output, logfile, result = (
        base.with_suffix(".ipynb"),
        base.with_suffix(".log"),
        base.with_suffix(".result.json"),
    )
    store.update_run(run_id, started_at=started, output=str(output), log=str(logfile))
    notebook = Path(schedule.notebook)
    if not notebook.is_file():
        return _finish(
            store,
            schedule,
            run_id,
            {
                "status": "failed",
                "error_name": "FileNotFoundError",
                "error_value": f"notebook '{notebook}' does not exist",
            },
        )
    job = {
        "notebook": str(notebook),
        "output": str(output),
        "log": str(logfile),
        "result": str(result),
        "parameters": schedule.parameters,
        "cwd": str(notebook.parent),
    }
    log.info("schedule '%s': run %d started → %s", schedule.name, run_id, output)
    proc = subprocess.Popen(
        [sys.executable, "-m", "flownb.schedule._child", json.dumps(job)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        proc.wait(timeout=schedule.timeout)
    except subprocess.TimeoutExpired:
        _kill(proc)
        outcome = {
            "status": "timeout",
            "error_name": "TimeoutError",
            "error_value": f"killed after the schedule's timeout of {schedule.timeout:g}s",
        }
    else:
        outcome = _read_result(result, proc.returncode)
    result.unlink(missing_ok=True)
    return _finish(store, schedule, run_id, outcome)


def _kill(proc: subprocess.Popen) -> None:
    """SIGTERM the run's process group (the child shuts its kernel down), SIGKILL after a grace."""
    for sig, wait in ((signal.SIGTERM, KILL_GRACE), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _read_result(path: Path, returncode: int) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {
            "status": "failed",
            "error_name": "ProcessExit",
            "error_value": f"the run's process exited with code {returncode} without a result; see its log",
        }


def _finish(store: ScheduleStore, schedule: Schedule, run_id: int, outcome: dict) -> RunRecord:
    store.update_run(
        run_id,
        status=outcome["status"],
        finished_at=time.time(),
        error_cell=outcome.get("error_cell"),
        error_name=outcome.get("error_name"),
        error_value=outcome.get("error_value"),
    )
    rec = store.run(run_id)
    log.info(
        "schedule '%s': run %d %s in %.1fs%s",
        schedule.name,
        run_id,
        rec.status,
        rec.duration or 0,
        f" ({rec.error_name}: {rec.error_value})" if rec.error_name else "",
    )
    prune_outputs(store, schedule)
    return rec


def prune_outputs(store: ScheduleStore, schedule: Schedule) -> list[Path]:
    """Delete all but the newest ``schedule.keep`` output notebooks (and their logs)."""
    out_dir = store.runs_dir / schedule.name
    if not out_dir.is_dir():
        return []
    active = {r.output for r in store.history(schedule.name, limit=100) if r.status == "running"}
    notebooks = sorted(p for p in out_dir.glob("*.ipynb") if str(p) not in active)
    doomed = notebooks[: -schedule.keep] if len(notebooks) > schedule.keep else []
    for nb in doomed:
        nb.unlink(missing_ok=True)
        nb.with_suffix(".log").unlink(missing_ok=True)
    return doomed


def run_now(store: ScheduleStore, name: str, *, trigger: str = "manual") -> RunRecord:
    """Run schedule ``name`` now, in this process's thread, and return its record (``skipped`` when a
    run of it is in progress)."""
    schedule = store.get(name)
    run_id = claim(store, schedule, trigger=trigger, planned_for=time.time())
    if run_id is None:
        return store.history(name, limit=1)[0]
    try:
        return execute(store, schedule, run_id)
    except BaseException as exc:
        store.update_run(
            run_id,
            status="failed",
            finished_at=time.time(),
            error_name=type(exc).__name__,
            error_value=str(exc),
        )
        if isinstance(exc, Exception):
            raise ScheduleError(f"run {run_id} of '{name}' could not be executed: {exc}") from exc
        raise
