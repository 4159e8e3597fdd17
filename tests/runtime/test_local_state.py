"""The embedded runtime's state directory under real damage: a message that kills the process
(SIGABRT) is dead-lettered as poison after 3 deaths, and a truncated state database is an error that
names the file and the choices, never a silent fresh start."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys

import pytest

import flownb
from flownb.errors import StateError
from flownb.runtime.local import LocalDeadLetters, LocalRuntime

pytestmark = [pytest.mark.integration]

POLL = '''
def poll(state, ctx):
    if state.get("done"):
        return []
    state["done"] = True
    return [{"id": i} for i in range(10)]
'''

ABORT = '''
import os

def step(body, ctx):
    if body["id"] == 3:
        os.abort()  # a real SIGABRT, like a native library failing an assertion
    return body
'''


def _flow(out) -> flownb.Flow:
    return flownb.Flow(
        name="poison-local",
        trigger=flownb.step("src", "python.poll", source=POLL, function="poll"),
        steps=[flownb.step("shape", "mapping", fields={"id": "id", "twice": "id * 2"}),
               flownb.step("native", "python", source=ABORT, function="step"),
               flownb.step("out", "csv.write", path=str(out))])


def _run(spec, state, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flownb.cli", "run", str(spec), "--state-dir", str(state),
                           "--until-idle", *extra], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "FLOWNB_RETRY_WAIT": "0"})


def test_a_message_that_kills_the_process_is_poison_after_3_deaths(tmp_path):
    out = tmp_path / "out.csv"
    spec = _flow(out).save(tmp_path / "flow.yaml")
    state = tmp_path / "state"
    codes = [_run(spec, state).returncode for _ in range(3)]
    assert codes == [-signal.SIGABRT] * 3
    last = _run(spec, state)
    assert last.returncode == 1, last.stderr[-2000:]  # it dead-lettered the poison message
    assert "dead-lettered step 'native': 1 × PoisonMessage: poison: the worker died 3 times" in last.stdout
    with out.open() as fh:
        ids = sorted(int(r["id"]) for r in csv.DictReader(fh))
    assert ids == [0, 1, 2, 4, 5, 6, 7, 8, 9]  # the neighbours of the poison message all arrive, once
    store = LocalDeadLetters(flownb.load(spec), state)
    try:
        dead = store.list()
    finally:
        store.close()
    assert len(dead) == 1
    assert dead[0].step == "native" and dead[0].message.body["id"] == 3
    assert dead[0].error.type == "PoisonMessage"
    assert "poison: the worker died 3 times while processing it" in dead[0].error.message


def test_a_truncated_state_database_is_an_error_naming_the_file_and_the_choices(tmp_path):
    out = tmp_path / "out.csv"
    f = flownb.Flow(name="truncated", trigger=flownb.step("src", "python.poll", source=POLL, function="poll"),
                    steps=[flownb.step("out", "csv.write", path=str(out))])
    spec = f.save(tmp_path / "flow.yaml")
    state = tmp_path / "state"
    assert _run(spec, state).returncode == 0
    db = state / "truncated.db"
    assert (state / "truncated.state.json").exists()
    os.truncate(db, 0)

    again = _run(spec, state)
    assert again.returncode == 1
    assert f"the state database '{db}' is empty (0 bytes)" in again.stderr
    assert "--reset-state" in again.stderr and "Traceback" not in again.stderr
    assert db.stat().st_size == 0  # nothing was written over it
    dlq = subprocess.run([sys.executable, "-m", "flownb.cli", "dlq", "list", str(spec), "--state-dir",
                          str(state)], capture_output=True, text=True, timeout=60)
    assert dlq.returncode == 1 and "is empty (0 bytes)" in dlq.stderr

    reset = _run(spec, state, "--reset-state")
    assert reset.returncode == 0, reset.stderr[-2000:]
    aside = [p for p in state.iterdir() if p.name.startswith("truncated.reset-")]
    assert len(aside) == 1 and (aside[0] / "truncated.db").exists()
    with out.open() as fh:
        assert len(list(csv.DictReader(fh))) == 20  # the source was read again from the start


@pytest.mark.parametrize("damage", ["missing", "garbage"])
def test_a_missing_or_damaged_database_with_a_marker_is_refused(tmp_path, damage):
    f = flownb.Flow(name="damaged", trigger=flownb.step("src", "python.poll", source=POLL, function="poll"),
                    steps=[flownb.step("m", "mapping", fields={"id": "id"})])
    with LocalRuntime(f, tmp_path) as rt:
        rt.run(until_idle=True)
    db = tmp_path / "damaged.db"
    if damage == "missing":
        db.unlink()
    else:
        db.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StateError, match="--reset-state"):
        LocalRuntime(f, tmp_path)
    assert not db.exists() if damage == "missing" else db.read_bytes().startswith(b"this is not")


@pytest.mark.parametrize(("env", "level"), [(None, 1), ("NORMAL", 1), ("FULL", 2), ("full", 2), ("EXTRA", 3)])
def test_flownb_sqlite_sync_sets_the_durability_of_every_commit(flow_factory, tmp_path, monkeypatch, env, level):
    """docs/local.md: synchronous=NORMAL by default; FLOWNB_SQLITE_SYNC=FULL makes every commit survive
    a power loss too (SQLite's PRAGMA synchronous: 1 NORMAL, 2 FULL, 3 EXTRA), in WAL mode."""
    if env is None:
        monkeypatch.delenv("FLOWNB_SQLITE_SYNC", raising=False)
    else:
        monkeypatch.setenv("FLOWNB_SQLITE_SYNC", env)
    flow = flow_factory(("double", "lt.double", {}))
    with LocalRuntime(flow, tmp_path / "state") as rt:
        assert rt.store.conn.execute("PRAGMA synchronous").fetchone()[0] == level
        assert rt.store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        rt.submit({"n": 1})
        assert rt.store.depth("double") == 1
