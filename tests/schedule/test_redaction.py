"""Scheduled runs keep secrets out of what they leave behind: the output notebook (keys and values of
every output), the run's log, the recorded error, the CLI's output; files 0600 in 0700 directories.
Real papermill runs in child processes (docs/secrets.md)."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import nbformat
import pytest

from flownb.schedule import add_schedule, run_now

pytestmark = pytest.mark.slow
FLOWNB = str(Path(sys.executable).parent / "flownb")


def secret_notebook(path: Path, var: str, *, sleep: float = 0.0) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                   "language_info": {"name": "python"}}
    nb.cells = [
        nbformat.v4.new_code_cell("import os, time\nfrom IPython.display import HTML, JSON, display\n"
                                  f"secret = os.environ[{var!r}]"),
        nbformat.v4.new_code_cell('print("the token is", secret)'),
        nbformat.v4.new_code_cell('display(JSON({secret: 1, "nested": {secret: [secret]}}))\n'
                                  'display(HTML(f"<b>{secret}</b>"))\n'
                                  '{secret: 1}'),
        nbformat.v4.new_code_cell(f"time.sleep({sleep})" if sleep else "pass"),
        nbformat.v4.new_code_cell('raise ValueError(f"rejected {secret}")'),
    ]
    nbformat.write(nb, path)
    return path


def new_token() -> str:
    return f"Sched-{uuid.uuid4().hex}/Q+z"


def assert_clean(token: str, data: bytes, where: str) -> None:
    for form in (token, base64.b64encode(token.encode()).decode(), token.replace("/", "%2F")):
        assert form.encode() not in data, f"{where} holds the secret"


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def check_outputs(store, rec, token: str, masked: str) -> None:
    out, log = Path(rec.output), Path(rec.log)
    run_dir = out.parent
    assert mode(out) == 0o600 and mode(log) == 0o600
    assert mode(run_dir) == 0o700 and mode(store.runs_dir) == 0o700
    assert sorted(p.suffix for p in run_dir.iterdir()) == [".ipynb", ".log"]  # no partial, no result left
    assert_clean(token, out.read_bytes(), "the output notebook")
    assert_clean(token, log.read_bytes(), "the run's log")
    db = b"".join(p.read_bytes() for p in store.state_dir.glob("schedules.db*"))
    assert_clean(token, db, "the schedule database")
    nb = nbformat.read(out, as_version=4)
    text = json.dumps(nb)
    assert masked in text
    assert f"the token is {masked}" in log.read_text()  # the cell's output is logged, redacted
    return nb


@pytest.fixture
def explicit(monkeypatch):
    var = f"FLOWNB_TEST_SCHED_VALUE_{uuid.uuid4().hex[:6].upper()}"  # a name that does not look secret
    monkeypatch.setenv(var, new_token())
    return var


def test_failed_run_output_log_and_error_are_redacted(store, tmp_path, explicit):
    token = os.environ[explicit]
    masked = f"[REDACTED:{explicit}]"
    nb_path = secret_notebook(tmp_path / "leaky.ipynb", explicit)
    add_schedule(store, nb_path, cron="0 3 * * *", name="leaky", secret_env=[explicit])
    rec = run_now(store, "leaky")
    assert rec.status == "failed", rec
    assert (rec.error_name, rec.error_value) == ("ValueError", f"rejected {masked}")
    nb = check_outputs(store, rec, token, masked)
    assert "raise ValueError" in nb.cells[rec.error_cell].source  # the index still points at the cell
    outputs = [o for c in nb.cells for o in c.get("outputs", [])]
    display = next(o for o in outputs if "application/json" in o.get("data", {}))
    assert display["data"]["application/json"] == {masked: 1, "nested": {masked: [masked]}}
    assert nb.metadata.papermill.output_path == rec.output


def test_a_variable_named_like_a_secret_is_redacted_without_being_listed(store, tmp_path, monkeypatch):
    var = f"FLOWNB_TEST_SCHED_{uuid.uuid4().hex[:6].upper()}_TOKEN"
    token = new_token()
    monkeypatch.setenv(var, token)
    nb_path = secret_notebook(tmp_path / "guess.ipynb", var)
    # through the real console script: what `run-now` prints is clean as well
    state = str(store.state_dir)
    r = subprocess.run([FLOWNB, "schedule", "--state-dir", state, "add", str(nb_path), "--name", "guess",
                        "--cron", "0 3 * * *"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([FLOWNB, "schedule", "--state-dir", state, "run-now", "guess"],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "1000"})
    assert r.returncode == 1, r.stderr  # the notebook raised
    assert f"rejected [REDACTED:{var}]" in r.stdout
    assert_clean(token, (r.stdout + r.stderr).encode(), "flownb schedule run-now output")
    rec = store.history("guess")[0]
    check_outputs(store, rec, token, f"[REDACTED:{var}]")


def test_a_run_killed_at_its_timeout_leaves_only_a_redacted_notebook(store, tmp_path, explicit):
    token = os.environ[explicit]
    nb_path = secret_notebook(tmp_path / "stuck.ipynb", explicit, sleep=120)
    # long enough for a kernel to start and run the first cells on a loaded 2-core machine
    add_schedule(store, nb_path, cron="0 3 * * *", name="stuck", secret_env=[explicit], timeout=15)
    t0 = time.monotonic()
    rec = run_now(store, "stuck")
    assert rec.status == "timeout" and time.monotonic() - t0 < 40
    out = Path(rec.output)
    assert out.exists() and mode(out) == 0o600
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []
    assert_clean(token, out.read_bytes(), "the output notebook of a killed run")
    assert_clean(token, Path(rec.log).read_bytes(), "the log of a killed run")
    nb = nbformat.read(out, as_version=4)
    if nb.cells[1].get("outputs"):  # the kernel got as far as printing (not guaranteed under load)
        assert f"[REDACTED:{explicit}]" in json.dumps(nb.cells[1].outputs)  # there, redacted


def test_history_masks_an_error_recorded_before_runs_were_redacted(store, tmp_path, explicit, capsys,
                                                                   monkeypatch):
    from flownb.cli import main
    monkeypatch.setenv("COLUMNS", "1000")  # a wide table: nothing folded across lines
    token = os.environ[explicit]
    nb_path = secret_notebook(tmp_path / "old.ipynb", explicit)
    add_schedule(store, nb_path, cron="0 3 * * *", name="old", secret_env=[explicit])
    with store.transaction() as con:  # as an older flownb recorded it
        store.insert_run(con, "old", "failed", trigger="manual", error_name="ValueError",
                         error_value=f"rejected {token}")
    assert main(["schedule", "--state-dir", str(store.state_dir), "history", "old"]) == 0
    out = capsys.readouterr().out
    assert token not in out and f"[REDACTED:{explicit}]" in out


def test_a_run_the_scheduler_cannot_execute_records_its_error_redacted(store, tmp_path, explicit, monkeypatch):
    from flownb.schedule import scheduler as scheduler_module
    from flownb.schedule.runner import claim
    token = os.environ[explicit]
    schedule = add_schedule(store, secret_notebook(tmp_path / "broken.ipynb", explicit), cron="0 3 * * *",
                            name="broken", secret_env=[explicit])

    def cannot_start(store, schedule, run_id):  # e.g. the runs directory cannot be created
        raise OSError(f"cannot start the run with {token}")

    monkeypatch.setattr(scheduler_module, "execute", cannot_start)
    scheduler = scheduler_module.Scheduler(store)
    run_id = claim(store, schedule, trigger="manual", planned_for=time.time())
    scheduler._launch(schedule, run_id)
    assert scheduler.wait_idle(30)
    rec = store.run(run_id)
    assert (rec.status, rec.error_name) == ("failed", "OSError")
    assert rec.error_value == f"cannot start the run with [REDACTED:{explicit}]"
