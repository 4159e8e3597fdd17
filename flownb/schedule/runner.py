"""Execute one scheduled run: claim it (never overlapping itself), run papermill in a child process
with a timeout, record the outcome, prune old output notebooks.

Secrets: papermill writes to a hidden partial notebook; only a redacted copy becomes the run's output
notebook (:func:`publish_output`: the values of the schedule's ``secret_env`` variables and of the
variables named like secrets, keys and values of every output, flownb.secrets). The run's log and
recorded error are redacted too; output files are 0600 in 0700 directories (docs/secrets.md).

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
from datetime import UTC, datetime
from pathlib import Path

from ..secrets import Redactor, redact, redact_notebook, secret_like_env
from .model import RunRecord, Schedule, ScheduleError
from .store import ScheduleStore

__all__ = ["claim", "execute", "run_now", "prune_outputs", "publish_output", "record_failure", "run_redactor",
           "KILL_GRACE"]

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


def run_redactor(secret_env: list[str] | tuple[str, ...] = ()) -> Redactor:
    """What a run redacts: the values of ``secret_env`` and of the variables named like secrets
    (flownb.secrets.secret_like_env), from this process's environment (the run's kernel inherits it)."""
    return Redactor.from_env([*secret_env, *secret_like_env()])


def private_dir(path: Path) -> Path:
    """``path`` created if needed and made 0700."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def private_file(path: Path) -> Path:
    """``path`` created empty if missing, and made 0600 (writers that open it with "w"/"a" keep that)."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    os.chmod(path, 0o600)
    return path


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` (0600) atomically: readers see the old file or the whole new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def publish_output(partial: Path, output: Path, redactor: Redactor) -> bool:
    """Turn papermill's partial notebook into the run's output notebook: redacted (flownb.secrets
    .redact_notebook: known secret values, keys included, in every cell and output), 0600; the
    partial file is removed. False when there is no partial notebook."""
    try:
        nb = json.loads(partial.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return False
    except (OSError, ValueError):  # cut short mid-write (killed): nothing readable to keep
        partial.unlink(missing_ok=True)
        return False
    pm = nb.get("metadata", {}).get("papermill")
    if isinstance(pm, dict) and pm.get("output_path"):
        pm["output_path"] = str(output)
    redacted = redact_notebook(nb, redactor, shapes=False)
    write_private(output, json.dumps(redacted, indent=1, ensure_ascii=False) + "\n")
    partial.unlink(missing_ok=True)
    return True


def partial_path(output: Path) -> Path:
    """Where papermill writes while the run goes on (hidden; never a run's output)."""
    return output.with_name(f".{output.stem}.partial.ipynb")


def _stamp(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y%m%dT%H%M%S-%fZ")


def execute(store: ScheduleStore, schedule: Schedule, run_id: int) -> RunRecord:
    """Run the claimed run ``run_id`` to completion (or timeout) and record the outcome."""
    started = time.time()
    private_dir(store.runs_dir)
    out_dir = private_dir(store.runs_dir / schedule.name)
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
    partial = partial_path(output)
    for path in (partial, logfile, result):
        private_file(path)
    job = {
        "notebook": str(notebook),
        "output": str(output),
        "partial": str(partial),
        "log": str(logfile),
        "result": str(result),
        "parameters": schedule.parameters,
        "cwd": str(notebook.parent),
        "secret_env": list(schedule.secret_env),
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
    # the child publishes the redacted output itself; a child killed before it could leaves the partial
    publish_output(partial, output, run_redactor(schedule.secret_env))
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
    redactor = run_redactor(schedule.secret_env)  # the child redacted it; this covers the rest
    store.update_run(
        run_id,
        status=outcome["status"],
        finished_at=time.time(),
        error_cell=outcome.get("error_cell"),
        error_name=redact(outcome.get("error_name"), redactor),
        error_value=redact(outcome.get("error_value"), redactor),
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
    notebooks = sorted(
        p for p in out_dir.glob("*.ipynb") if str(p) not in active and not p.name.startswith(".")
    )
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
        reason = record_failure(store, schedule, run_id, exc)
        if isinstance(exc, Exception):
            raise ScheduleError(f"run {run_id} of '{name}' could not be executed: {reason}") from exc
        raise


def record_failure(store: ScheduleStore, schedule: Schedule, run_id: int, exc: BaseException) -> str:
    """Record run ``run_id`` as ``failed`` because :func:`execute` raised ``exc``, its error redacted as
    a run's own errors are (:func:`run_redactor`); returns that redacted message. Every caller of
    :func:`execute` (run_now, the scheduler, the Jupyter extension) records such a failure with it."""
    reason = redact(str(exc), run_redactor(schedule.secret_env))
    store.update_run(
        run_id,
        status="failed",
        finished_at=time.time(),
        error_name=type(exc).__name__,
        error_value=reason,
    )
    return reason
