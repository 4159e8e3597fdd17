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
from engines import sink_counts

from flownb import save

HERE = Path(__file__).parent
TOTAL = 5000
POISON = [17, 2500, 4990]
# the real CLI entry point, in a fresh interpreter that also registers the lt.* test components
LAUNCH = ("import sys; sys.path.insert(0, sys.argv.pop(1)); import engines; "
          "from flownb.cli import main; sys.exit(main(sys.argv[1:]))")

pytestmark = pytest.mark.slow


def _start(spec: Path, state: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", LAUNCH, str(HERE), "run", str(spec), "--state-dir",
                             str(state), "--until-idle"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)


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
    for kill in range(3):
        seen_now = _kill_when(_start(spec, state), sink, seen + 1000)
        assert seen_now < TOTAL - len(POISON)
        seen = seen_now
        if kill >= 1:   # the retried poison rows died during the second run: they must survive kills
            assert dead_ns() == POISON

    proc = _start(spec, state)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    assert "dead letter(s) stored" in out.decode()

    db_seen = sqlite3.connect(sink)
    ns = sorted(n for (n,) in db_seen.execute("select n from seen"))
    deliveries = db_seen.execute("select count(*) from deliveries").fetchone()[0]
    db_seen.close()
    assert ns == sorted(set(range(TOTAL)) - set(POISON))       # every row exactly once in the target
    assert deliveries - len(ns) <= 3 * 500                     # at most one batch redone per kill

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
