"""``kill -9`` of a real ``flownb run`` process mid-way loses nothing and repeats nothing in an
idempotent sink; dead letters survive the crash."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from runtimes import sink_counts

from flownb import save
from flownb.runtime.local import LocalRuntime

HERE = Path(__file__).parent
#: the messages of a batch of ``flownb run`` (a poll's records run through the first stage a batch
#: at a time, the rest of the poll is queued: a kill repeats at most one batch's effects either way)
BATCH = LocalRuntime.__init__.__kwdefaults__["batch_size"]
#: ten batches: each of the three killed runs gets through two or more before its kill, so a poison
#: row's retry (queued at 'work') has its turn before a kill
TOTAL = 10 * BATCH
POISON = [17, TOTAL // 2, TOTAL - 10]
# the real CLI entry point, in a fresh interpreter that also registers the lt.* test components
LAUNCH = ("import sys; sys.path.insert(0, sys.argv.pop(1)); import runtimes; "
          "from flownb.cli import main; sys.exit(main(sys.argv[1:]))")

pytestmark = pytest.mark.slow


def _start(spec: Path, state: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", LAUNCH, str(HERE), "run", str(spec), "--state-dir",
                             str(state), "--until-idle", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _kill_when(proc: subprocess.Popen, sink: Path, at_least: int, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen, _ = sink_counts(sink)
        if seen >= at_least:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
            return seen
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.02)
    raise AssertionError(f"sink did not reach {at_least} rows in {timeout}s")


def test_kill_9_mid_run_then_rerun_delivers_every_row_once(flow_factory, tmp_path):
    sink = tmp_path / "sink.db"
    flow = flow_factory(("double", "lt.double", {}),
                        ("work", "lt.poison", {}, {"retry": {"max_attempts": 2, "initial": "10ms"}}),
                        ("sink", "lt.sink", {"path": str(sink), "sleep_ms": 0.4}),
                        trigger=("lt.count", {"total": TOTAL, "batch": TOTAL, "poison": POISON}))
    spec = tmp_path / "flow.yaml"
    save(flow, spec)
    state = tmp_path / "state"

    from flownb.runtime.local import LocalDeadLetters

    def dead_ns():
        dlq = LocalDeadLetters(flow, state)
        try:
            return sorted(d.message.body["n"] for d in dlq.list())
        finally:
            dlq.close()

    seen = 0
    dead_before: list[int] = []
    for _ in range(3):
        seen_now = _kill_when(_start(spec, state), sink, seen + 2 * BATCH)  # mid-run: a batch at a time
        assert seen_now < TOTAL - len(POISON)
        seen = seen_now
        dead_now = dead_ns()
        # a poison row dead-lettered (after its retry) before a kill survives that kill and every later one
        assert set(dead_before) <= set(dead_now) <= set(POISON), (dead_before, dead_now)
        dead_before = dead_now
    assert dead_before, "no poison row had died before the last kill: the survival check saw nothing"

    # a poison row the killed runs had not reached yet dies in this run: accepted here, counted below
    proc = _start(spec, state, "--allow-dead-letters")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    assert "dead letter(s) stored" in out.decode()

    db_seen = sqlite3.connect(sink)
    ns = sorted(n for (n,) in db_seen.execute("select n from seen"))
    deliveries = db_seen.execute("select count(*) from deliveries").fetchone()[0]
    db_seen.close()
    assert ns == sorted(set(range(TOTAL)) - set(POISON))       # every row exactly once in the target
    assert deliveries - len(ns) <= 3 * BATCH                   # at most one batch redone per kill

    dlq = LocalDeadLetters(flow, state)
    dead = dlq.list()
    dlq.close()
    assert sorted(d.message.body["n"] for d in dead) == POISON
    assert all(d.step == "work" and d.error.attempt == 2 and "poison" in d.error.traceback for d in dead)
    # nothing left over, the cursor says the one poll happened once
    proc = _start(spec, state)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert sink_counts(sink)[0] == TOTAL - len(POISON)


def _count(db: Path) -> int:
    try:
        con = sqlite3.connect(db, timeout=1)
        try:
            return con.execute("select count(*) from orders").fetchone()[0]
        finally:
            con.close()
    except sqlite3.OperationalError:   # not created yet, or locked by the writer for a moment
        return 0


def test_kill_9_csv_to_sql_upsert_through_the_console_script(tmp_path):
    """The built-in components end to end: csv.poll → mapping → filter → sql.upsert, killed twice."""
    rows, poison = 20_000, {77, 12_345, 19_999}
    csv_path = tmp_path / "orders.csv"
    with open(csv_path, "w") as fh:
        fh.write("order_id,updated_at,qty,price,status\n")
        for i in range(rows):
            qty = '"n/a"' if i in poison else str(1 + i % 4)
            fh.write(f"A{i:06d},{i:08d},{qty},2.5,{'cancelled' if i % 10 == 0 else 'paid'}\n")
    db = tmp_path / "target.db"
    spec = tmp_path / "flow.yaml"
    spec.write_text(f"""
name: crash-orders
trigger:
  name: orders
  component: csv.poll
  config: {{path: "{csv_path}", cursor: updated_at, key: order_id, parse_numbers: false}}
steps:
  - name: shape
    component: mapping
    config:
      fields: {{order_id: order_id, total: $number(qty) * $number(price), status: status}}
  - name: keep
    component: filter
    config: {{condition: status = "paid"}}
  - name: save
    component: sql.upsert
    config: {{url: "sqlite:///{db}", table: orders, key: [order_id], create: true}}
""")
    state = tmp_path / "state"
    flownb = str(Path(sys.executable).parent / "flownb")
    cmd = [flownb, "run", str(spec), "--state-dir", str(state), "--until-idle"]
    seen = 0
    for _ in range(2):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while _count(db) < seen + 2000:
            assert proc.poll() is None, "the run finished before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        seen = _count(db)
    expected = {f"A{i:06d}": float(1 + i % 4) * 2.5 for i in range(rows) if i % 10 and i not in poison}
    assert seen < len(expected)                      # the kills really were mid-way
    # the poison rows the killed runs had not reached die in this one: accepted, counted below
    r = subprocess.run([*cmd, "--allow-dead-letters"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    con = sqlite3.connect(db)
    got = dict(con.execute("select order_id, total from orders"))
    con.close()
    assert got == expected
    dead = subprocess.run([flownb, "dlq", "list", str(spec), "--state-dir", str(state)],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "250"})
    assert dead.returncode == 0 and "3 dead letter(s)" in dead.stdout, dead.stdout
    for i in poison:                                  # dead-lettered at the mapping, kept across kills
        assert f"A{i:06d}" in dead.stdout
    assert dead.stdout.count("shape") >= 3


def test_kill_9_mid_run_of_a_fused_stage_loses_nothing_and_dead_letters_name_their_step(tmp_path):
    """csv.poll → mapping → filter → python (fails some rows) → sql.upsert runs as ONE fused stage
    (the default): killed three times mid-run, then run to the end, the idempotent target holds
    every kept row exactly once, and the rows the python step refused are dead-lettered at *that*
    step (not at the stage's first), with the body it received."""
    rows, refused = 30_000, {101, 15_001, 29_998}
    csv_path = tmp_path / "orders.csv"
    with open(csv_path, "w") as fh:
        fh.write("order_id,qty,price,status\n")
        for i in range(rows):
            fh.write(f"{i},{1 + i % 4},2.5,{'cancelled' if i % 10 == 0 else 'paid'}\n")
    db = tmp_path / "target.db"
    spec = tmp_path / "flow.yaml"
    spec.write_text(f"""
name: crash-fused
trigger:
  name: orders
  component: csv.poll
  config: {{path: "{csv_path}", cursor: order_id, key: order_id}}
steps:
  - name: shape
    component: mapping
    config:
      fields: {{order_id: order_id, total: qty * price, status: status}}
  - name: keep
    component: filter
    config: {{condition: status = "paid"}}
  - name: check
    component: python
    config:
      function: check
      source: |
        def check(body, ctx):
            if body["order_id"] in {sorted(refused)}:
                raise ValueError("refused " + str(body["order_id"]))
            return body
  - name: save
    component: sql.upsert
    config: {{url: "sqlite:///{db}", table: orders, key: [order_id], create: true}}
""")
    from flownb import load
    from flownb.runtime.core import StepRunner
    from flownb.runtime.local.runtime import stages
    flow = load(spec)
    groups = stages([StepRunner(flow, s.name) for s in flow.steps])
    assert [[r.step.name for r in g] for g in groups] == [["shape", "keep", "check", "save"]]

    state = tmp_path / "state"
    flownb = str(Path(sys.executable).parent / "flownb")
    cmd = [flownb, "run", str(spec), "--state-dir", str(state), "--until-idle"]
    seen = 0
    for _ in range(3):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while _count(db) < seen + 2000:
            assert proc.poll() is None, "the run finished before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        seen = _count(db)
    expected = {i: float(1 + i % 4) * 2.5 for i in range(rows) if i % 10 and i not in refused}
    assert seen < len(expected)                      # the kills really were mid-way
    r = subprocess.run([*cmd, "--allow-dead-letters"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    con = sqlite3.connect(db)
    got = dict(con.execute("select order_id, total from orders"))
    n = con.execute("select count(*) from orders").fetchone()[0]
    con.close()
    assert got == expected and n == len(expected)   # nothing lost, each row once

    from flownb.runtime.local import LocalDeadLetters
    dlq = LocalDeadLetters(flow, state)
    dead = dlq.list()
    dlq.close()
    assert sorted(d.message.body["order_id"] for d in dead) == sorted(refused)
    assert all(d.step == "check" and d.error.type == "ValueError" for d in dead)
    assert all(d.message.body == {"order_id": d.message.body["order_id"], "total": d.message.body["total"],
                                  "status": "paid"} for d in dead)
