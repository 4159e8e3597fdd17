"""``flownb schedule`` through the real entry point (``flownb.cli.main``)."""

import pytest

from flownb.cli import main
from flownb.schedule import ScheduleStore


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")


def run(capsys, *argv):
    rc = main(["schedule", *argv])
    out = capsys.readouterr()
    return rc, out.out + out.err


def test_add_list_history_remove(tmp_path, capsys, params_nb):
    state = str(tmp_path / "st")
    rc, out = run(capsys, "--state-dir", state, "add", str(params_nb), "--cron", "0 3 * * *", "--name", "rep",
                  "-p", "n", "6", "--tz", "Europe/Berlin", "--keep", "3", "--catchup", "last", "--timeout", "60")
    assert rc == 0 and "added" in out
    s = ScheduleStore(state).get("rep")
    assert (s.parameters, s.tz, s.keep, s.catchup, s.timeout) == ({"n": 6}, "Europe/Berlin", 3, "last", 60)
    rc, out = run(capsys, "list", "--state-dir", state)           # accepted after the action too
    assert rc == 0 and "rep" in out and "0 3 * * *" in out
    rc, out = run(capsys, "--state-dir", state, "history", "rep")
    assert rc == 0 and "runs of 'rep'" in out
    rc, out = run(capsys, "--state-dir", state, "remove", "rep")
    assert rc == 0 and ScheduleStore(state).names() == []


def test_bad_input_exits_2_with_a_hint(tmp_path, capsys, params_nb):
    state = str(tmp_path / "st")
    rc, out = run(capsys, "--state-dir", state, "add", str(params_nb), "--cron", "0 3 * * *", "--name", "x",
                  "-p", "nn", "1")
    assert rc == 2 and "did you mean 'n'" in out and "rate (float)" in out
    rc, out = run(capsys, "--state-dir", state, "add", str(params_nb), "--cron", "3am", "--name", "x")
    assert rc == 2 and "5 fields" in out
    rc, out = run(capsys, "--state-dir", state, "run-now", "nope")
    assert rc == 2 and "no schedule named 'nope'" in out


@pytest.mark.slow
def test_run_now_prints_the_failure(tmp_path, capsys, params_nb):
    state = str(tmp_path / "st")
    assert (
        run(
            capsys,
            "--state-dir",
            state,
            "add",
            str(params_nb),
            "--cron",
            "0 3 * * *",
            "--name",
            "f",
            "-p",
            "fail",
            "true",
        )[0]
        == 0
    )
    rc, out = run(capsys, "--state-dir", state, "run-now", "f")
    assert rc == 1 and "failed" in out and "ValueError: bad n=3" in out
    rc, out = run(capsys, "--state-dir", state, "history", "f")
    assert "failed" in out and "ValueError" in out


@pytest.mark.slow
def test_serve_runs_due_schedules_and_stops_on_sigterm(tmp_path, params_nb):
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    state = tmp_path / "st"
    assert (
        main(
            [
                "schedule",
                "--state-dir",
                str(state),
                "add",
                str(params_nb),
                "--cron",
                "* * * * * */2",
                "--name",
                "often",
                "-p",
                "n",
                "2",
            ]
        )
        == 0
    )
    flownb = Path(sys.executable).parent / "flownb"
    proc = subprocess.Popen(
        [str(flownb), "schedule", "--state-dir", str(state), "serve", "--interval", "0.2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "COLUMNS": "250"},
    )
    store = ScheduleStore(state)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(r.status == "ok" for r in store.history("often")):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "flownb scheduler" in out and "of 'often': ok" in out
    assert not [r for r in store.history("often") if r.status == "running"]  # runs in progress finished first
