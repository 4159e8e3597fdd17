"""A schedule's on_error (flownb.schedule.on_error): failed and timed-out notebook runs, executed by the
real scheduler with papermill, reach real actions — an errors table (sql.upsert on SQLite) and an HTTP
target — batched and rate-limited by the error-flow machinery of flownb.runtime.on_error."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
import yaml

from flownb.cli import main
from flownb.errors import ConfigError, ScheduleInputError
from flownb.schedule import Scheduler, ScheduleStore, add_schedule, run_now
from flownb.testing import HttpTarget

pytestmark = pytest.mark.slow


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


def _failing_notebook(path: Path) -> Path:
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("n = 0", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("raise ValueError(f'report {n} broke')"),
    ])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def _errors_spec(folder: Path) -> Path:
    """A flow spec whose on_error writes one row per event into ``errors.db`` next to it (a relative
    path: the schedule must read it from the spec's folder, not from the scheduler's)."""
    spec = {"name": "reports", "trigger": {"name": "in", "component": "webhook"},
            "steps": [{"name": "say", "component": "log"}],
            "on_error": {"every": "1m", "batch": 50, "steps": [
                {"name": "each", "component": "split", "config": {"path": "events"}},
                {"name": "row", "component": "mapping", "config": {"fields": {
                    "id": "message_id", "kind": "kind", "schedule": "schedule", "run_id": "run_id",
                    "status": "status", "error_type": "error_type", "error": "error", "output": "output",
                    "trace": "trace"}}},
                {"name": "errors", "component": "sql.upsert",
                 "config": {"url": "sqlite:///errors.db", "table": "errors", "key": ["id"], "create": True}}]}}
    path = folder / "reports.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return path


def _rows(db: Path) -> list[dict]:
    if not db.exists():
        return []
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM errors ORDER BY run_id")]


def test_a_failed_scheduled_run_reaches_an_errors_table_once_per_window(tmp_path, monkeypatch):
    conf = tmp_path / "conf"
    conf.mkdir()
    spec = _errors_spec(conf)
    monkeypatch.chdir(tmp_path)  # not conf/: the relative sqlite path must not be read from here
    store = ScheduleStore(tmp_path / "state")
    nb = _failing_notebook(tmp_path / "report.ipynb")
    add_schedule(store, nb, cron="* * * * * *", name="report", parameters={"n": 7}, on_error=spec)
    t0 = float(int(time.time()) + 10)
    store.add(store.get("report").model_copy(update={"created_at": t0 - 0.5}), replace=True)
    clock = Clock(t0)
    sched = Scheduler(store, clock=clock, grace=10)
    db = conf / "errors.db"

    [first] = sched.tick()
    assert sched.wait_idle(120)
    assert store.run(first).status == "failed"
    assert sched.notify_errors() == 1  # the first failure goes out at once
    [row] = _rows(db)
    assert row["id"] == row["trace"] == f"report#{first}" and row["run_id"] == first
    assert (row["kind"], row["schedule"], row["status"]) == ("schedule_failed", "report", "failed")
    assert row["error_type"] == "ValueError" and "report 7 broke" in row["error"]
    assert row["output"] == store.run(first).output and Path(row["output"]).is_file()

    clock.now = t0 + 1
    [second] = sched.tick()
    assert sched.wait_idle(120)
    assert sched.notify_errors() == 0  # within the window of 1m: held
    assert len(_rows(db)) == 1
    # a manual run is not reported: whoever ran it sees its result
    assert run_now(store, "report").status == "failed"
    clock.now = t0 + 60
    assert sched.notify_errors() == 1
    assert [r["run_id"] for r in _rows(db)] == [first, second]
    clock.now = t0 + 61
    [third] = sched.tick()
    assert sched.wait_idle(120)
    assert sched.notify_errors() == 0  # held for the window …
    assert sched.notify_errors(force=True) == 1  # … unless forced, as `serve` does when it stops
    assert [r["run_id"] for r in _rows(db)] == [first, second, third]
    clock.now = t0 + 200
    assert sched.notify_errors() == 0  # nothing delivered twice
    # a restarted scheduler has nothing pending either: delivered runs are marked in the history
    assert Scheduler(store, clock=clock).notify_errors(force=True) == 0


def test_a_timed_out_run_is_delivered_by_flownb_schedule_serve(tmp_path, slow_nb):
    state = tmp_path / "state"
    with HttpTarget() as chat:
        on_error = tmp_path / "alerts.yaml"
        on_error.write_text(yaml.safe_dump({"on_error": [
            {"name": "chat", "component": "http.request", "config": {"url": chat.url + "/hook"}}]}))
        assert main(["schedule", "--state-dir", str(state), "add", str(slow_nb), "--cron", "* * * * * */2",
                     "--name", "slow", "-p", "seconds", "120", "--timeout", "2", "--on-error", str(on_error)]) == 0
        exe = Path(sys.executable).parent / "flownb"
        proc = subprocess.Popen([str(exe), "schedule", "--state-dir", str(state), "serve", "--interval", "0.2"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "COLUMNS": "250"})
        try:
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline and not chat.received:
                time.sleep(0.2)
            while_serving = len(chat.received)  # delivered by the loop, not by the stop
        finally:
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=60)
        assert while_serving >= 1, out
        body = chat.received[0].json
    assert proc.returncode == 0, out
    assert body["flow"] == "slow" and body["by_kind"] == {"schedule_failed": body["count"]}
    ev = body["events"][0]
    assert (ev["kind"], ev["status"], ev["error_type"], ev["step"]) == \
        ("schedule_failed", "timeout", "TimeoutError", "slow.ipynb")
    assert "timeout of 2s" in ev["error"] and ev["notebook"] == str(slow_nb.resolve())
    assert body["text"].startswith("schedule 'slow': 1 failure(s) — slow.ipynb: 1 failed scheduled run(s) "
                                   "(TimeoutError: killed after")
    rec = ScheduleStore(state).run(ev["run_id"])
    assert rec.status == "timeout" and rec.output == ev["output"]


def test_on_error_is_checked_when_the_schedule_is_added(tmp_path, params_nb):
    store = ScheduleStore(tmp_path / "state")
    with pytest.raises(ConfigError) as err:
        add_schedule(store, params_nb, cron="0 3 * * *", name="bad",
                     on_error=[{"name": "post", "component": "http.request", "config": {"methd": "POST"}}])
    assert err.value.step == "post"
    with pytest.raises(ScheduleInputError, match="does not exist"):
        add_schedule(store, params_nb, cron="0 3 * * *", name="bad", on_error=tmp_path / "missing.yaml")
    (tmp_path / "none.yaml").write_text("name: x\n")
    with pytest.raises(ScheduleInputError, match="no .on_error:. actions"):
        add_schedule(store, params_nb, cron="0 3 * * *", name="bad", on_error=tmp_path / "none.yaml")
    assert store.names() == []


def test_failures_from_before_on_error_was_configured_are_not_reported(tmp_path):
    store = ScheduleStore(tmp_path / "state")
    nb = _failing_notebook(tmp_path / "old.ipynb")
    add_schedule(store, nb, cron="* * * * * *", name="old")
    t0 = float(int(time.time()) + 10)
    store.add(store.get("old").model_copy(update={"created_at": t0 - 0.5}), replace=True)
    sched = Scheduler(store, clock=Clock(t0), grace=10)
    [run] = sched.tick()
    assert sched.wait_idle(120) and store.run(run).status == "failed"
    with HttpTarget() as chat:
        add_schedule(store, nb, cron="* * * * * *", name="old", replace=True,
                     on_error=[{"name": "chat", "component": "http.request", "config": {"url": chat.url}}])
        assert sched.notify_errors(force=True) == 0
        assert not chat.received


def test_a_cronjob_export_says_that_on_error_is_not_part_of_it(tmp_path, params_nb, caplog):
    from flownb.schedule import cronjob_manifests
    store = ScheduleStore(tmp_path / "state")
    s = add_schedule(store, params_nb, cron="0 3 * * *", name="nightly",
                     on_error=[{"name": "say", "component": "log"}])
    assert store.get("nightly").on_error == s.on_error and s.on_error is not None
    with caplog.at_level("WARNING", logger="flownb.schedule"):
        [job] = cronjob_manifests([s], image="registry/app:1", notebook_root=params_nb.parent)
    assert job["kind"] == "CronJob"
    assert "its on_error is not part of the CronJob" in caplog.text
