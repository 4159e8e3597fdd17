"""End to end through the command line: ``flownb worker SPEC --all --port P`` (RabbitMQ) serves the
webhook in a real process; the last step writes a CSV, so every accepted request is counted at the sink."""

from __future__ import annotations

import csv
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from flownb.flow import Flow, step

from .conftest import BROKER, amqp_delete, free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _flow(tmp: Path, token_env: str, **hook) -> Flow:
    return Flow(name=f"wh-{uuid.uuid4().hex[:10]}", trigger=step("hook", "webhook", token_env=token_env, **hook),
                steps=[step("keep", "log", level="debug"),
                       step("sink", "csv.write", path=str(tmp / "out.csv"), columns=["q"], fsync=False)])


def _start(args: list[str], env: dict, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "flownb.cli", *args, "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while True:
        assert proc.poll() is None, proc.stdout.read().decode()
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the webhook server did not come up"
        time.sleep(0.1)


def _stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out.decode(errors="replace")


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
            procs.append((_start(["worker", str(spec), "--all"], env, port), port))
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
        time.sleep(0.5)
        assert len(_rows(tmp_path / "async" / "out.csv", 21, timeout=0.2)) == 20  # exactly once
    finally:
        for proc, _ in procs:
            _stop(proc)
        for flow in flows.values():
            amqp_delete(flow)


def test_run_cli_serves_sync_and_async_on_the_embedded_runtime(tmp_path):
    try:
        from flownb.runtime.local import LocalRuntime  # noqa: F401
    except ImportError:
        pytest.skip("the embedded runtime (flownb.runtime.local.LocalRuntime) is not available yet")
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
            procs.append((_start(["run", str(spec), "--state-dir", str(tmp_path / mode / "state")], env, port), port))
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
        time.sleep(0.5)
        assert len(_rows(tmp_path / "async" / "out.csv", 21, timeout=0.2)) == 20  # exactly once
    finally:
        for proc, _ in procs:
            _stop(proc)
