"""Schedules and run history in SQLite (WAL) under the state directory: ``<state>/schedules.db``.

Several processes share it (``flownb schedule serve``, the CLI, the Jupyter extension), so every
check-and-write (is a run of this schedule in progress? then record ``skipped``) happens inside one
``BEGIN IMMEDIATE`` transaction.
"""

from __future__ import annotations

import builtins
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import did_you_mean
from .model import RunRecord, Schedule, ScheduleError, ScheduleInputError, parse_schedule

__all__ = ["FAILED", "ScheduleStore", "pid_alive"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schedules (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    last_fire REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    schedule TEXT NOT NULL,
    status TEXT NOT NULL,
    trigger TEXT NOT NULL DEFAULT 'cron',
    planned_for REAL, queued_at REAL, started_at REAL, finished_at REAL,
    output TEXT, log TEXT,
    error_cell INTEGER, error_name TEXT, error_value TEXT,
    pid INTEGER
);
CREATE INDEX IF NOT EXISTS runs_by_schedule ON runs (schedule, id);
"""
#: statuses of a run that failed: what a schedule's on_error hears of (flownb.schedule.on_error)
FAILED = ("failed", "timeout", "lost")
_FAILED_SQL = "status IN ('failed', 'timeout', 'lost')"
_RUN_COLS = (
    "id",
    "schedule",
    "status",
    "trigger",
    "planned_for",
    "queued_at",
    "started_at",
    "finished_at",
    "output",
    "log",
    "error_cell",
    "error_name",
    "error_value",
    "pid",
)


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ScheduleStore:
    """Schedules and their run history. One instance per thread is not needed: each call opens a
    short-lived connection, so the store is safe to share between threads and processes."""

    def __init__(self, state_dir: str | Path = ".flownb"):
        self.state_dir = Path(state_dir).resolve()
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ScheduleError(
                f"cannot create state directory '{self.state_dir}': {exc}; pass a writable --state-dir"
            ) from exc
        self.path = self.state_dir / "schedules.db"
        with self._connect() as con:
            con.execute("PRAGMA journal_mode=WAL")
            con.executescript(_SCHEMA)
            # ``reported``: when the schedule's on_error delivered this failed run (0: never will —
            # it failed before on_error was configured); a database of an older flownb gains it here
            if "reported" not in {r[1] for r in con.execute("PRAGMA table_info(runs)")}:
                try:
                    con.execute("ALTER TABLE runs ADD COLUMN reported REAL")
                except sqlite3.OperationalError as exc:  # another process added it meanwhile
                    if "duplicate column" not in str(exc):
                        raise

    @property
    def runs_dir(self) -> Path:
        return self.state_dir / "runs"

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            con = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        except sqlite3.Error as exc:
            raise ScheduleError(f"cannot open schedule database '{self.path}': {exc}") from exc
        try:
            con.execute("PRAGMA busy_timeout=30000")
            yield con
        finally:
            con.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    # -- schedules --------------------------------------------------------------------------------
    def add(self, schedule: Schedule, *, replace: bool = False) -> Schedule:
        """Store ``schedule``; its fire times count from now (or from ``created_at`` when set)."""
        created = schedule.created_at or time.time()
        schedule = schedule.model_copy(update={"created_at": created})
        with self.transaction() as con:
            exists = con.execute("SELECT spec FROM schedules WHERE name=?", (schedule.name,)).fetchone()
            if exists and not replace:
                raise ScheduleInputError(
                    f"a schedule named '{schedule.name}' exists; remove it first "
                    f"('flownb schedule remove {schedule.name}') or pick another --name"
                )
            con.execute(
                "INSERT OR REPLACE INTO schedules (name, spec, last_fire) VALUES (?, ?, ?)",
                (schedule.name, json.dumps(schedule.to_dict()), created),
            )
            if schedule.on_error is not None and not (exists and json.loads(exists[0]).get("on_error")):
                # on_error hears of failures from now on, not of those from before it was configured
                con.execute(f"UPDATE runs SET reported=0 WHERE schedule=? AND reported IS NULL AND {_FAILED_SQL}",
                            (schedule.name,))
        return schedule

    def get(self, name: str) -> Schedule:
        with self._connect() as con:
            row = con.execute("SELECT spec FROM schedules WHERE name=?", (name,)).fetchone()
        if row is None:
            names = self.names()
            raise ScheduleInputError(
                f"no schedule named '{name}'{did_you_mean(name, names)} "
                f"schedules: {', '.join(names) or '(none; add one with flownb schedule add)'}"
            )
        return parse_schedule(json.loads(row[0]))

    def names(self) -> list[str]:
        with self._connect() as con:
            return [r[0] for r in con.execute("SELECT name FROM schedules ORDER BY name")]

    def list(self) -> list[Schedule]:
        with self._connect() as con:
            rows = con.execute("SELECT spec FROM schedules ORDER BY name").fetchall()
        return [parse_schedule(json.loads(r[0])) for r in rows]

    def remove(self, name: str) -> None:
        self.get(name)
        with self.transaction() as con:
            con.execute("DELETE FROM schedules WHERE name=?", (name,))
            con.execute("DELETE FROM runs WHERE schedule=? AND status='queued'", (name,))

    def last_fire(self, name: str) -> float:
        with self._connect() as con:
            row = con.execute("SELECT last_fire FROM schedules WHERE name=?", (name,)).fetchone()
        return float(row[0]) if row else 0.0

    def set_last_fire(self, name: str, ts: float, con: sqlite3.Connection | None = None) -> None:
        if con is not None:
            con.execute("UPDATE schedules SET last_fire=? WHERE name=?", (ts, name))
            return
        with self._connect() as c:
            c.execute("UPDATE schedules SET last_fire=? WHERE name=?", (ts, name))

    # -- runs -------------------------------------------------------------------------------------
    def _run(self, row: tuple) -> RunRecord:
        return RunRecord(**dict(zip(_RUN_COLS, row, strict=True)))

    def insert_run(self, con: sqlite3.Connection, schedule: str, status: str, **fields: Any) -> int:
        cols = ["schedule", "status", *fields]
        cur = con.execute(
            f"INSERT INTO runs ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
            (schedule, status, *fields.values()),
        )
        run_id = cur.lastrowid
        assert run_id is not None  # set by every INSERT
        return run_id

    def update_run(self, run_id: int, **fields: Any) -> None:
        sets = ", ".join(f"{k}=?" for k in fields)
        with self._connect() as con:
            con.execute(f"UPDATE runs SET {sets} WHERE id=?", (*fields.values(), run_id))

    def run(self, run_id: int) -> RunRecord:
        with self._connect() as con:
            row = con.execute(f"SELECT {', '.join(_RUN_COLS)} FROM runs WHERE id=?", (run_id,)).fetchone()
        if row is None:
            raise ScheduleInputError(f"no run with id {run_id}; see 'flownb schedule history NAME'")
        return self._run(row)

    def history(self, name: str | None = None, limit: int = 50) -> builtins.list[RunRecord]:
        """Newest first."""
        where, args = ("WHERE schedule=?", (name,)) if name else ("", ())
        with self._connect() as con:
            rows = con.execute(
                f"SELECT {', '.join(_RUN_COLS)} FROM runs {where} ORDER BY id DESC LIMIT ?", (*args, limit)
            ).fetchall()
        return [self._run(r) for r in rows]

    def running(self, con: sqlite3.Connection, name: str) -> builtins.list[int]:
        """Ids of runs of ``name`` in progress; runs whose owner process died become ``lost``."""
        alive = []
        for run_id, pid in con.execute(
            "SELECT id, pid FROM runs WHERE schedule=? AND status='running'", (name,)
        ):
            if pid_alive(pid):
                alive.append(run_id)
            else:
                con.execute(
                    "UPDATE runs SET status='lost', finished_at=?, error_value=? WHERE id=?",
                    (time.time(), f"the process {pid} that ran it exited before recording a result", run_id),
                )
        return alive

    def unreported(self, name: str, limit: int) -> tuple[builtins.list[RunRecord], builtins.list[int]]:
        """The failed runs of ``name`` its on_error has not delivered: the oldest ``limit`` of them,
        and the ids of all of them. Manual runs (``run-now``) are not among them: whoever started
        one sees its result."""
        where = f"schedule=? AND {_FAILED_SQL} AND reported IS NULL AND trigger != 'manual'"
        with self._connect() as con:
            con.execute("BEGIN")  # one snapshot for both reads (WAL)
            ids = [r[0] for r in con.execute(f"SELECT id FROM runs WHERE {where} ORDER BY id", (name,))]
            rows = con.execute(f"SELECT {', '.join(_RUN_COLS)} FROM runs WHERE {where} ORDER BY id LIMIT ?",
                               (name, limit)).fetchall()
            con.execute("COMMIT")
        return [self._run(r) for r in rows], ids

    def mark_reported(self, ids: builtins.list[int], at: float) -> None:
        """Record that on_error delivered the failed runs ``ids``."""
        with self.transaction() as con:
            con.executemany("UPDATE runs SET reported=? WHERE id=?", [(at, i) for i in ids])

    def queued(self, name: str) -> builtins.list[RunRecord]:
        with self._connect() as con:
            rows = con.execute(
                f"SELECT {', '.join(_RUN_COLS)} FROM runs WHERE schedule=? AND status='queued' "
                f"ORDER BY planned_for, id",
                (name,),
            ).fetchall()
        return [self._run(r) for r in rows]
