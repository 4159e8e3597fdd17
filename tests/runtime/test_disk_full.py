"""A full disk under the embedded runtime, for real: the state directory is on a 2 MiB tmpfs that a
filler file fills until ENOSPC (needs root to mount; skipped otherwise).

- the webhook server answers 503 + Retry-After while its queue cannot be written (nothing is
  acknowledged that is not stored), ``/healthz`` is 503 while nothing can be processed or queued,
  and once the filler is deleted processing resumes by itself: every accepted request reaches the
  (idempotent) sink exactly once;
- a poll on a full disk (``flownb run --until-idle``) exits 1 with "disk full: nothing was queued,
  the cursor did not move", and the cursor did not move.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from contextlib import closing, contextmanager
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from flownb.components.base import Action
from flownb.flow import Flow, step
from flownb.registry import register
from flownb.runtime.health import HEALTH
from flownb.runtime.local import LocalRuntime
from flownb.runtime.local.store import open_state

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: opened by the test: the gate step holds its batch until then (so that its commit meets a full disk)
GATE = threading.Event()
#: set by the gate step once it holds a batch (claimed: the claim is committed before it runs)
HOLDING = threading.Event()


@register("diskfulltest.gate")
class Gate(Action):
    """Passes its batch on once :data:`GATE` is open."""

    def process_batch(self, messages, ctx):
        HOLDING.set()
        GATE.wait(60)
        return [m.body for m in messages]


@contextmanager
def tmpfs(path: Path, size: str = "2m"):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       capture_output=True, text=True, check=False)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(disk: Path, leave: int = 0) -> Path:
    """Write a filler file until the disk is full (ENOSPC), then give back ``leave`` bytes; return it."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for chunk in (1 << 16, 4096, 512, 1):
            try:
                while True:
                    os.write(fd, b"\0" * chunk)
            except OSError as exc:
                assert exc.errno == 28, exc  # ENOSPC
        if leave:
            os.ftruncate(fd, max(os.fstat(fd).st_size - leave, 0))
    finally:
        os.close(fd)
    return filler


def _wait(cond, timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _held(state_db: Path) -> int:
    """Messages queued for any step plus claimed batches (read-only: the runtime writes the file)."""
    with closing(sqlite3.connect(f"file:{state_db}?mode=ro", uri=True, timeout=30)) as db:
        return db.execute("SELECT (SELECT count(*) FROM queue) + (SELECT count(*) FROM claims)").fetchone()[0]


def test_webhook_on_a_full_disk_answers_503_and_resumes_by_itself(tmp_path, monkeypatch):
    from flownb.runtime.local.ingress import LocalIngest
    from flownb.webhook.app import create_app
    from flownb.webhook.server import hook_for
    from tests.webhook.conftest import ServerThread

    token_env = f"DF_TOKEN_{uuid.uuid4().hex[:8].upper()}"
    token = secrets.token_urlsafe(24)
    monkeypatch.setenv(token_env, token)
    sink_db = tmp_path / "sink.db"   # the sink is on the real disk; the queue on the tmpfs
    flow = Flow(name=f"df-{uuid.uuid4().hex[:8]}",
                trigger=step("hook", "webhook", token_env=token_env, retry_after=2),
                steps=[step("gate", "diskfulltest.gate"),
                       step("sink", "sql.upsert", url=f"sqlite:///{sink_db}", table="got", key=["n"],
                            create=True)])
    GATE.clear()
    HOLDING.clear()
    HEALTH.reset()
    with tmpfs(tmp_path / "disk") as disk:
        runtime = LocalRuntime(flow, disk / "state")
        stop = threading.Event()
        worker = threading.Thread(target=runtime.run, kwargs={"stop_event": stop}, daemon=True)
        worker.start()
        filler = None
        try:
            with ServerThread(create_app([hook_for(runtime.flow, LocalIngest(runtime))])) as srv:
                url = f"{srv.url}/hooks/{flow.name}/{token}"
                pad = "p" * 3000  # each message takes room
                accepted: set[int] = set()

                def send(n: int) -> httpx.Response:
                    r = httpx.post(url, json={"n": n, "pad": pad}, timeout=30)
                    if r.status_code == 202:
                        accepted.add(n)
                    return r

                assert [send(n).status_code for n in range(5)] == [202] * 5
                _wait(lambda: runtime.store.depth("gate") == 5 and HOLDING.is_set(),
                      what="the gate step holding its claimed batch")
                filler = fill(disk)
                GATE.set()       # its commit now meets the full disk
                _wait(lambda: httpx.get(srv.url + "/healthz").status_code == 503, what="/healthz 503")
                health = httpx.get(srv.url + "/healthz").json()
                assert "disk full" in str(health), health

                refused = [send(n) for n in range(100, 105)]
                for r in refused:
                    assert r.status_code == 503, r.text
                    assert int(r.headers["Retry-After"]) >= 1
                    assert "disk full" in r.json()["error"]
                assert accepted == set(range(5))
                assert httpx.get(srv.url + "/healthz").status_code == 503

                filler.unlink()  # space returns: processing and queueing resume by themselves
                filler = None
                _wait(lambda: httpx.get(srv.url + "/healthz").status_code == 200, 30, "/healthz 200")
                assert [send(n).status_code for n in range(200, 205)] == [202] * 5

                engine = sa.create_engine(f"sqlite:///{sink_db}")

                def sunk() -> list[int]:
                    try:
                        with engine.connect() as c:
                            return [r[0] for r in c.execute(sa.text("SELECT n FROM got"))]
                    except sa.exc.OperationalError:
                        return []
                _wait(lambda: len(sunk()) >= len(accepted), 30, "the sink")
                # judged once nothing can land any more: every queue drained and no batch in hand,
                # then the runtime stopped (a graceful stop finishes or keeps what it holds)
                state_db = disk / "state" / f"{flow.name}.db"
                _wait(lambda: _held(state_db) == 0, 30, "every queue drained, no batch in hand")
                stop.set()
                runtime.stop()
                worker.join(30)
                assert not worker.is_alive(), "the runtime did not stop"
                assert _held(state_db) == 0
                got = sunk()
                assert sorted(got) == sorted(accepted)            # every accepted one, exactly once
                assert runtime.store.depths() == {} or not any(runtime.store.depths().values())
                assert runtime.store.dead_count() == 0            # no batch was counted as poison
                engine.dispose()
        finally:
            GATE.set()
            if filler is not None:
                filler.unlink()
            stop.set()
            runtime.stop()
            worker.join(30)
            runtime.close()
            HEALTH.reset()


#: the poll's records must be stored: queued for the first step (every step on its own), or run
#: through the first stage in memory whose last member, a route step, queues its outputs for its branch
POLL_PATHS = {
    "queued": ("--no-fuse", """steps:
  - name: out
    component: log
    config: {level: debug}
"""),
    "run-through": (None, """steps:
  - name: pick
    route:
      branches:
        - name: every
          when: "true"
          steps:
            - {name: out, component: log, config: {level: debug}}
"""),
}


@pytest.mark.parametrize("path", sorted(POLL_PATHS))
def test_poll_on_a_full_disk_exits_1_and_the_cursor_does_not_move(tmp_path, path):
    flag, steps = POLL_PATHS[path]
    src = tmp_path / "src.db"
    engine = sa.create_engine(f"sqlite:///{src}")
    with engine.begin() as c:
        c.execute(sa.text("CREATE TABLE items (id INTEGER PRIMARY KEY, pad TEXT)"))
        c.execute(sa.text("INSERT INTO items VALUES (1, 'a'), (2, 'b'), (3, 'c')"))
    flow_name = f"dfpoll-{uuid.uuid4().hex[:8]}"
    spec = tmp_path / "flow.yaml"
    spec.write_text(f"""name: {flow_name}
trigger:
  name: src
  component: sql.poll
  config: {{url: "sqlite:///{src}", table: items, cursor: id, interval: 1m}}
""" + steps)
    with tmpfs(tmp_path / "disk") as disk:
        state = disk / "state"

        def run() -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "-m", "flownb.cli", "run", str(spec), "--until-idle",
                                   "--state-dir", str(state), *([flag] if flag else [])], capture_output=True,
                                  text=True, timeout=120, check=False)

        first = run()
        assert first.returncode == 0, first.stdout + first.stderr
        store = open_state(state, flow_name, create=False)
        cursor, _ = store.get_state("src")
        store.close()
        assert cursor  # rows 1..3 were read
        with engine.begin() as c:
            c.execute(sa.text("INSERT INTO items VALUES (:i, :p)"),
                      [{"i": i, "p": "x" * 4000} for i in range(4, 200)])
        filler = fill(disk, leave=160 * 1024)  # room to open the database, not for the poll's ~800 kB
        try:
            full = run()
        finally:
            filler.unlink()
        out = full.stdout + full.stderr
        assert full.returncode == 1, out
        assert "disk full: nothing was queued, the cursor did not move" in out, out
        assert "cannot rollback" not in out, out
        assert "Traceback" not in out, out
        store = open_state(state, flow_name, create=False)
        try:
            assert store.get_state("src")[0] == cursor
            assert store.depth() == 0
        finally:
            store.close()
        filler = fill(disk)  # no room even to open the database: said as plainly
        try:
            full = run()
        finally:
            filler.unlink()
        out = full.stdout + full.stderr
        assert full.returncode == 1 and "disk full" in out and "Traceback" not in out, out
    engine.dispose()
