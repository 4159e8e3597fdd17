"""docs/local.md and docs/webhook.md on the embedded runtime, through the real ``flownb run SPEC --port``:
FLOWNB_MAX_QUEUE → 429 with Retry-After (nothing queued), and a sync request with no output within
``timeout`` → 504 with its id, the message still processed. The first step waits for a gate file, so
"the queue is full" and "no output yet" hold for exactly as long as the test wants."""

from __future__ import annotations

import csv
import os
import secrets
import time
import uuid
from pathlib import Path

import httpx
import pytest

from flownb.flow import Flow, step

from .conftest import free_port, start_cli, stop_cli

pytestmark = [pytest.mark.integration]

GATE = '''
import os, time

def wait(body, ctx):
    while not os.path.exists(GATE):
        time.sleep(0.02)
    return body
'''


def _flow(tmp: Path, token_env: str, **hook) -> Flow:
    return Flow(name=f"wl-{uuid.uuid4().hex[:10]}",
                trigger=step("hook", "webhook", token_env=token_env, **hook),
                steps=[step("gate", "python", source=f"GATE = {str(tmp / 'gate')!r}\n" + GATE,
                            function="wait"),
                       step("sink", "csv.write", path=str(tmp / "out.csv"), columns=["n"], fsync=False)])


def _rows(path: Path, n: int, timeout: float = 60) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        rows = [r["n"] for r in csv.DictReader(path.open())] if path.exists() else []
        if len(rows) >= n or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def _serve(tmp: Path, flow: Flow, env: dict):
    spec = flow.save(tmp / "flow.yaml")
    port = free_port()
    return start_cli(["run", str(spec), "--state-dir", str(tmp / "state")], env, port, within=60), \
        f"http://127.0.0.1:{port}/hooks/{flow.name}"


def test_flownb_max_queue_answers_429_and_queues_nothing_more(tmp_path):
    token_env = f"WL_TOKEN_{uuid.uuid4().hex[:8].upper()}"
    token = secrets.token_urlsafe(24)
    env = {**os.environ, token_env: token, "FLOWNB_MAX_QUEUE": "3"}
    flow = _flow(tmp_path, token_env)
    proc, url = _serve(tmp_path, flow, env)
    try:
        with httpx.Client(timeout=30) as client:
            answers = [client.post(f"{url}/{token}", json={"n": i}) for i in range(5)]
            assert [r.status_code for r in answers] == [202, 202, 202, 429, 429], [r.text for r in answers]
            assert all(r.headers["retry-after"] == "1" for r in answers[3:])
            assert "full" in answers[3].json()["error"]
            (tmp_path / "gate").touch()  # the step drains its queue: room again
            assert sorted(_rows(tmp_path / "out.csv", 3)) == ["0", "1", "2"]
            # a client honouring Retry-After gets in (the depth the server checks is re-read every 0.1 s)
            deadline = time.monotonic() + 30
            while (again := client.post(f"{url}/{token}", json={"n": 9})).status_code == 429:
                assert time.monotonic() < deadline, "still 429 with the queue drained"
                time.sleep(float(again.headers["retry-after"]))
            assert again.status_code == 202, again.text
            assert sorted(_rows(tmp_path / "out.csv", 4)) == ["0", "1", "2", "9"]
    finally:
        out = stop_cli(proc)
    assert proc.returncode == 0, out
    assert sorted(_rows(tmp_path / "out.csv", 4)) == ["0", "1", "2", "9"]  # the refused ones never ran


def test_embedded_sync_timeout_is_504_and_the_message_is_still_processed(tmp_path):
    token_env = f"WL_TOKEN_{uuid.uuid4().hex[:8].upper()}"
    token = secrets.token_urlsafe(24)
    env = {**os.environ, token_env: token}
    flow = _flow(tmp_path, token_env, reply="sync", timeout="500ms")
    proc, url = _serve(tmp_path, flow, env)
    try:
        with httpx.Client(timeout=30) as client:
            r = client.post(f"{url}/{token}", json={"n": 1})
            assert r.status_code == 504, r.text
            assert "still be processed" in r.json()["error"] and len(r.json()["id"]) == 32
            assert _rows(tmp_path / "out.csv", 1, timeout=0) == []  # no output yet: the gate is shut
            (tmp_path / "gate").touch()
            assert _rows(tmp_path / "out.csv", 1) == ["1"]  # queued, and processed once the step could
            ok = client.post(f"{url}/{token}", json={"n": 2})  # an answer within the timeout: 200
            assert ok.status_code == 200 and ok.json()["n"] == 2, ok.text
    finally:
        out = stop_cli(proc)
    assert proc.returncode == 0, out
    assert _rows(tmp_path / "out.csv", 2) == ["1", "2"]
