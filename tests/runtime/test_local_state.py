"""The embedded runtime's state directory under real damage: a message that kills the process
(SIGABRT, or a JSONata expression that really exhausts the process's memory under a cap) is
dead-lettered as poison after 3 deaths; a Python step that runs out of memory (MemoryError) is
dead-lettered at once and the process goes on; and a truncated state database is an error that
names the file and the choices, never a silent fresh start."""

from __future__ import annotations

import csv
import os
import resource
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


#: the address space of a capped child (``ulimit -v``): above what an uncapped run reserves (VmPeak
#: 1.3 GiB measured, mostly thread stacks and malloc arenas never touched), far too little for an
#: expression that grows without end
MEMORY_CAP = 2 << 30

#: a JSONata expression that doubles a string until memory runs out (jsonatapy evaluates it: a
#: user function); id 3 is the poison, every other record passes unchanged
EXHAUST = '(id = 3 ? ($grow := function($s) { $grow($s & $s) }; $grow("poison")) : id)'

#: a Python step that allocates until Python raises MemoryError (caught: the step fails)
GREEDY = '''
def step(body, ctx):
    if body["id"] == 3:
        s = b"poison"
        while True:
            s = s + s  # doubles until the allocation fails under the cap
    return body
'''


def _capped() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # an abort leaves no core file


def _run(spec, state, *extra: str, cap: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flownb.cli", "run", str(spec), "--state-dir", str(state),
                           "--until-idle", *extra], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "FLOWNB_RETRY_WAIT": "0"},
                          preexec_fn=_capped if cap else None)  # noqa: PLW1509 - the child has no threads yet


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


def _dead_letters(spec, state) -> list:
    store = LocalDeadLetters(flownb.load(spec), state)
    try:
        return store.list()
    finally:
        store.close()


def _ids(out) -> list[int]:
    with out.open() as fh:
        return sorted(int(r["id"]) for r in csv.DictReader(fh))


def test_an_expression_that_exhausts_memory_under_a_cap_is_poison_after_3_deaths(tmp_path):
    """No stand-in: the process runs under ``RLIMIT_AS`` and the expression really runs out of
    memory. jsonatapy (Rust) cannot recover from a failed allocation: it prints "memory allocation
    of N bytes failed" and aborts the process, which is then a death like any other."""
    out = tmp_path / "out.csv"
    flow = flownb.Flow(
        name="exhaust-local",
        trigger=flownb.step("src", "python.poll", source=POLL, function="poll"),
        steps=[flownb.step("exhaust", "mapping", fields={"id": EXHAUST}, timeout="60s"),
               flownb.step("out", "csv.write", path=str(out))])
    assert flownb.rules.compile(EXHAUST).engine == "jsonatapy"
    spec = flow.save(tmp_path / "flow.yaml")
    state = tmp_path / "state"
    runs = [_run(spec, state, cap=True) for _ in range(3)]
    assert [r.returncode for r in runs] == [-signal.SIGABRT] * 3, [r.stderr[-2000:] for r in runs]
    assert all("memory allocation of" in r.stderr and "failed" in r.stderr for r in runs)
    last = _run(spec, state, cap=True)
    assert last.returncode == 1, last.stderr[-2000:]  # it dead-lettered the poison message
    assert "dead-lettered step 'exhaust': 1 × PoisonMessage: poison: the worker died 3 times" in last.stdout
    assert _ids(out) == [0, 1, 2, 4, 5, 6, 7, 8, 9]  # its neighbours all arrive, once
    [dead] = _dead_letters(spec, state)
    assert dead.step == "exhaust" and dead.message.body == {"id": 3}
    assert dead.error.type == "PoisonMessage"


def test_a_python_step_that_runs_out_of_memory_under_a_cap_is_dead_lettered_at_once(tmp_path):
    """Python turns a failed allocation into MemoryError, which unwinds (freeing what the step
    built): the step fails like any other error, is not retried, and the process goes on."""
    out = tmp_path / "out.csv"
    flow = flownb.Flow(
        name="greedy-local",
        trigger=flownb.step("src", "python.poll", source=POLL, function="poll"),
        steps=[flownb.step("greedy", "python", source=GREEDY, function="step"),
               flownb.step("out", "csv.write", path=str(out))])
    spec = flow.save(tmp_path / "flow.yaml")
    state = tmp_path / "state"
    run = _run(spec, state, cap=True)
    assert run.returncode == 1, run.stderr[-2000:]  # one dead letter, in the first run: no death
    assert "dead-lettered step 'greedy': 1 × MemoryError" in run.stdout, run.stdout
    assert _ids(out) == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    [dead] = _dead_letters(spec, state)
    assert dead.step == "greedy" and dead.message.body == {"id": 3}
    assert dead.error.type == "MemoryError" and dead.message.attempt == 1


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
