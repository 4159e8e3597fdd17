"""Running flows through the real ``flownb run`` console script in the connector tests."""

from __future__ import annotations

import csv
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import orjson
import yaml

FLOWNB = str(Path(sys.executable).parent / "flownb")


def write_flow(tmp: Path, name: str, trigger: dict, steps: list[dict]) -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "trigger": {"name": "src", **trigger}, "steps": steps}))
    return path


def run(spec: Path, state: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """``flownb run SPEC --until-idle``; must exit 0."""
    p = subprocess.run([FLOWNB, "run", str(spec), "--state-dir", str(state), "--until-idle", *args],
                       check=False, capture_output=True, text=True, timeout=timeout, cwd=spec.parent)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def records_in(p: subprocess.CompletedProcess) -> str:
    return p.stdout.replace("\n", " ")


def csv_ids(path: Path) -> list[int]:
    if not path.exists():
        return []
    with path.open() as f:
        return [int(r["id"]) for r in csv.DictReader(f)]


def start(spec: Path, state: Path, log: Path) -> subprocess.Popen:
    """``flownb run SPEC`` in the background (its own session), stderr to ``log``."""
    return subprocess.Popen([FLOWNB, "run", str(spec), "--state-dir", str(state)], cwd=spec.parent,
                            stdout=subprocess.DEVNULL, stderr=log.open("w"), start_new_session=True)


def wait_first_poll(proc: subprocess.Popen, db: Path, log: Path, timeout: float = 30) -> None:
    """Until the process committed its first poll (the trigger's state row exists)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with sqlite3.connect(db, timeout=5) as c:
                if c.execute("SELECT count(*) FROM trigger_state").fetchone()[0]:
                    return
        except sqlite3.OperationalError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)


def kill_while_committing(spec: Path, state: Path, *, send, received, settle: float,
                          check_state=None, timeout: float = 20) -> str:
    """The durability scene every acknowledging trigger must survive: ``flownb run SPEC`` commits a
    first poll; the test holds the SQLite write lock and ``send()``s messages; once ``received()``
    (the trigger holds them, unacknowledged upstream) and ``settle`` seconds more (its commit now
    waits for the lock), nothing is in the queue — and ``check_state(stored)`` on the stored trigger
    state (None: no row) — and the process is killed with SIGKILL. Returns its log; the caller
    then checks the source still holds everything and a restarted run hands it all out."""
    db = state / f"{yaml.safe_load(spec.read_text())['name']}.db"
    log = spec.parent / "killed.log"
    proc = start(spec, state, log)
    lock = None
    try:
        wait_first_poll(proc, db, log)
        lock = sqlite3.connect(db, isolation_level=None, timeout=30)
        lock.execute("BEGIN IMMEDIATE")
        send()
        deadline = time.monotonic() + timeout
        while not received():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        time.sleep(settle)
        assert proc.poll() is None, log.read_text()
        assert lock.execute("SELECT count(*) FROM queue").fetchone()[0] == 0
        if check_state is not None:
            row = lock.execute("SELECT state FROM trigger_state").fetchone()
            check_state(None if row is None else orjson.loads(row[0]))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        if lock is not None:
            lock.execute("ROLLBACK")
            lock.close()
    assert proc.returncode == -signal.SIGKILL
    return log.read_text()


def state_is(want: dict):
    """A ``check_state`` for kill_while_committing: the stored trigger state is ``want``."""
    def check(stored) -> None:
        assert stored == want
    return check
