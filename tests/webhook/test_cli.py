"""End to end through the command line: ``flownb worker SPEC --all --port P`` (RabbitMQ) serves the
webhook in a real process; the last step writes a CSV, so every accepted request is counted at the sink."""

from __future__ import annotations

import csv
import os
import secrets
import signal
import time
import uuid
from pathlib import Path

import httpx
import pytest

from flownb.flow import Flow, step
from flownb.runtime.amqp.topology import queue_depths
from flownb.runtime.local.store import open_state

from .conftest import BROKER, amqp_delete, free_port, start_cli, stop_cli

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _flow(tmp: Path, token_env: str, **hook) -> Flow:
    return Flow(name=f"wh-{uuid.uuid4().hex[:10]}", trigger=step("hook", "webhook", token_env=token_env, **hook),
                steps=[step("keep", "log", level="debug"),
                       step("sink", "csv.write", path=str(tmp / "out.csv"), columns=["q"], fsync=False)])


def _rows(path: Path, n: int, timeout: float = 20) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            with path.open() as f:
                rows = list(csv.DictReader(f))
            if len(rows) >= n:
                return rows
        time.sleep(0.05)
    return list(csv.DictReader(path.open())) if path.exists() else []


@pytest.mark.rabbitmq
def test_worker_cli_serves_sync_and_async_on_rabbitmq(tmp_path):
    token_env = f"WH_TOKEN_{uuid.uuid4().hex[:8].upper()}"
    token = secrets.token_urlsafe(24)
    env = {**os.environ, token_env: token, "FLOWNB_BROKER_URL": BROKER}
    flows = {mode: _flow(tmp_path / mode, token_env, reply=mode, timeout="20s") for mode in ("sync", "async")}
    procs = []
    try:
        for mode, flow in flows.items():
            (tmp_path / mode).mkdir()
            spec = flow.save(tmp_path / f"{mode}.yaml")
            port = free_port()
            procs.append((start_cli(["worker", str(spec), "--all"], env, port, within=30), port))
        (sync_proc, sync_port), (async_proc, async_port) = procs
        with httpx.Client(timeout=30) as client:
            r = client.post(f"http://127.0.0.1:{sync_port}/hooks/{flows['sync'].name}/{token}", json={"q": "hello"})
            assert r.status_code == 200, r.text
            assert r.json()["q"] == "hello" and r.json()["_query"] == {}
            ids = [client.post(f"http://127.0.0.1:{async_port}/hooks/{flows['async'].name}/{token}",
                               json={"q": f"m{i}"}).json()["id"] for i in range(20)]
            bad = client.post(f"http://127.0.0.1:{async_port}/hooks/{flows['async'].name}/{token}x", json={})
            assert bad.status_code == 403
        assert len(set(ids)) == 20
        rows = _rows(tmp_path / "async" / "out.csv", 20)
        assert sorted(r["q"] for r in rows) == sorted(f"m{i}" for i in range(20))
        # exactly once, judged when nothing can come any more: the worker drained and exited, and no
        # message is left in any of the flow's queues (an unacked one is back in "ready" by now)
        async_proc.send_signal(signal.SIGTERM)  # as docker stop and Kubernetes do
        async_proc.communicate(timeout=60)
        assert async_proc.returncode == 0  # drained and exited (SIGTERM killed it at once: -15)
        assert queue_depths(flows["async"], BROKER) == {s: {"ready": 0, "dead": 0, "retry": 0}
                                                         for s in ("keep", "sink")}
        assert sorted(r["q"] for r in _rows(tmp_path / "async" / "out.csv", 20)) == \
            sorted(f"m{i}" for i in range(20))
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                stop_cli(proc)
        for flow in flows.values():
            amqp_delete(flow)


def test_run_cli_serves_sync_and_async_on_the_embedded_runtime(tmp_path):
    token_env = f"WH_TOKEN_{uuid.uuid4().hex[:8].upper()}"
    token = secrets.token_urlsafe(24)
    env = {**os.environ, token_env: token}
    flows = {mode: _flow(tmp_path / mode, token_env, reply=mode, timeout="20s") for mode in ("sync", "async")}
    procs = []
    try:
        for mode, flow in flows.items():
            (tmp_path / mode).mkdir()
            spec = flow.save(tmp_path / f"{mode}.yaml")
            port = free_port()
            args = ["run", str(spec), "--state-dir", str(tmp_path / mode / "state")]
            procs.append((start_cli(args, env, port, within=30), port))
        (_, sync_port), (_, async_port) = procs
        with httpx.Client(timeout=30) as client:
            r = client.post(f"http://127.0.0.1:{sync_port}/hooks/{flows['sync'].name}/{token}?x=1", json={"q": "hi"})
            assert r.status_code == 200, r.text
            assert r.json()["q"] == "hi" and r.json()["_query"] == {"x": "1"}
            ids = [client.post(f"http://127.0.0.1:{async_port}/hooks/{flows['async'].name}/{token}",
                               json={"q": f"m{i}"}).json()["id"] for i in range(20)]
        assert len(set(ids)) == 20
        rows = _rows(tmp_path / "async" / "out.csv", 20)
        assert sorted(r["q"] for r in rows) == sorted(f"m{i}" for i in range(20))
        # exactly once, judged when nothing can come any more: the runtime drained and exited, and its
        # SQLite queue holds nothing for any step
        async_proc = procs[1][0]
        stop_cli(async_proc)
        assert async_proc.returncode == 0
        store = open_state(tmp_path / "async" / "state", flows["async"].name, create=False)
        try:
            assert store.depths() == {} and store.dead_count() == 0
        finally:
            store.close()
        assert sorted(r["q"] for r in _rows(tmp_path / "async" / "out.csv", 20)) == \
            sorted(f"m{i}" for i in range(20))
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                stop_cli(proc)
