"""A step whose component cannot be set up (its service refuses connections) leaves its messages
queued, reports not ready, retries with back-off and resumes by itself; `run --until-idle` exits
non-zero with the reason. Nothing is dead-lettered."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import threading
import time

import pytest
from setup_flows import Listener, flow, free_port, trigger_flow

import flownb
from flownb.runtime.core import StepRunner
from flownb.runtime.health import HEALTH
from flownb.runtime.local import LocalRuntime

pytestmark = [pytest.mark.integration]


def _rows(path) -> list[dict]:
    if not path.exists():
        return []
    with path.open() as fh:
        return list(csv.DictReader(fh))


def test_serving_runtime_waits_for_setup_and_resumes_by_itself(tmp_path):
    port, out = free_port(), tmp_path / "out.csv"
    HEALTH.reset()
    rt = LocalRuntime(flow("setup-local", port, out), tmp_path / "state")
    stop = threading.Event()
    t = threading.Thread(target=rt.run, kwargs={"stop_event": stop}, daemon=True)
    listener = None
    try:
        rt.feed([{"id": i} for i in range(5)])
        t.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and HEALTH.ready:
            time.sleep(0.05)
        report = HEALTH.report()
        assert report["status"] == "not ready"
        assert "step 'enrich'" in report["not_ready"][0]["where"]
        assert "ConnectionRefusedError" in report["not_ready"][0]["why"]
        time.sleep(1.5)  # a few back-off rounds: still nothing dead, everything waiting at 'enrich'
        assert rt.store.depths() == {"enrich": 5} and rt.store.dead_count() == 0
        failures = rt.runners["enrich"].setup_failures
        assert 1 <= failures <= 3, failures  # backed off, not a tight loop
        listener = Listener(port)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(_rows(out)) < 5:
            time.sleep(0.1)
        assert sorted(int(r["id"]) for r in _rows(out)) == [0, 1, 2, 3, 4]
        assert HEALTH.ready and rt.store.dead_count() == 0
    finally:
        stop.set()
        rt.stop()
        t.join(10)
        rt.close()
        if listener:
            listener.close()
        HEALTH.reset()


def test_until_idle_exits_1_with_the_reason_and_keeps_the_messages(tmp_path):
    port, out = free_port(), tmp_path / "out.csv"
    f = flow("setup-idle", port, out)
    spec = f.save(tmp_path / "flow.yaml")
    state = tmp_path / "state"
    with LocalRuntime(f, state) as rt:
        rt.feed([{"id": i} for i in range(4)])
    res = subprocess.run([sys.executable, "-m", "flownb.cli", "run", str(spec), "--state-dir", str(state),
                          "--until-idle"], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "FLOWNB_RETRY_WAIT": "2"})
    assert res.returncode == 1, res.stderr[-3000:]
    assert "step 'enrich' (python) is not ready: setup() failed" in res.stderr
    assert "ConnectionRefusedError" in res.stderr and "4 message(s) stay queued" in res.stderr
    assert "nothing was dead-lettered" in res.stderr
    listener = Listener(port)
    try:
        again = subprocess.run([sys.executable, "-m", "flownb.cli", "run", str(spec), "--state-dir",
                                str(state), "--until-idle"], capture_output=True, text=True, timeout=120)
    finally:
        listener.close()
    assert again.returncode == 0, again.stderr[-3000:]
    assert sorted(int(r["id"]) for r in _rows(out)) == [0, 1, 2, 3]


def test_a_trigger_whose_setup_fails_is_polled_again_and_the_runtime_lives(tmp_path):
    """The trigger's next_delay needs setup(); while that fails the runtime must keep polling (it
    used to die of the ConfigError the second time setup() was tried)."""
    port, out = free_port(), tmp_path / "out.csv"
    rt = LocalRuntime(trigger_flow("trigger-setup-local", port, out), tmp_path / "state")
    stop = threading.Event()
    died: list[BaseException] = []

    def run() -> None:
        try:
            rt.run(stop_event=stop)
        except BaseException as exc:  # noqa: BLE001
            died.append(exc)
    t = threading.Thread(target=run, daemon=True)
    listener = None
    try:
        t.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(rt.poll_errors) < 2:
            time.sleep(0.05)
        assert len(rt.poll_errors) >= 2 and "ConnectionRefusedError" in rt.poll_errors[0]
        assert t.is_alive() and not died
        listener = Listener(port)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(_rows(out)) < 3:
            time.sleep(0.1)
        assert sorted(int(r["id"]) for r in _rows(out)) == [0, 1, 2]
    finally:
        stop.set()
        rt.stop()
        t.join(10)
        rt.close()
        if listener:
            listener.close()
    assert not died


def test_the_reasons_health_reports_have_the_flows_secrets_masked(tmp_path):
    """/healthz is served to whoever reaches the port: a setup() error or a thread's death that
    quotes a secret shows it masked."""
    from flownb.runtime.health import Health
    from flownb.secrets import Redactor, activate
    secret = "s3cr3t-token-value"
    undo = activate(Redactor({"CRM_TOKEN": secret}))
    health = Health()
    try:
        source = (f"raise ConnectionError('login as bot:{secret} refused')\n\n"
                  f"def step(body, ctx):\n    return body\n")
        f = flownb.Flow(name="masked-health", trigger=flownb.step("src", "webhook", token_env="T"),
                        steps=[flownb.step("s", "python", source=source, function="step")])
        runner = StepRunner(f.resolved(), "s")
        assert not runner.ensure_open(0.0)
        health.fail("step 's'", RuntimeError(f"died holding {secret}"))
        text = str(HEALTH.report()) + str(health.report()) + health.failures[0].traceback
    finally:
        undo()
        HEALTH.reset()
    assert "login as bot:[REDACTED:CRM_TOKEN] refused" in text
    assert "died holding [REDACTED:CRM_TOKEN]" in text
    assert secret not in text
