"""Real papermill executions in child processes: outcomes, failure details, timeout, overlap, retention."""

import json
import os
import sys
import threading
import time

import nbformat
import pytest

from flownb.schedule import add_schedule, run_now
from flownb.schedule.runner import claim

pytestmark = pytest.mark.slow


def test_ok_run_writes_output_notebook_with_parameters_and_a_progress_log(store, params_nb, tmp_path):
    out = tmp_path / "out.jsonl"
    add_schedule(store, params_nb, cron="0 3 * * *", name="rep", parameters={"n": "4", "out_file": str(out)})
    rec = run_now(store, "rep")
    assert rec.status == "ok", rec
    assert rec.trigger == "manual" and rec.duration > 0 and rec.error_name is None
    assert rec.output.startswith(str(store.runs_dir / "rep")) and rec.output.endswith(".ipynb")
    nb = nbformat.read(rec.output, as_version=4)
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert "n = 4" in injected[0].source
    written = json.loads(out.read_text())
    assert written["total"] == 2.0
    assert written["prefix"] == sys.prefix  # the python3 kernelspec resolved to this venv's interpreter
    logtext = open(rec.log).read()
    assert "Executing:" in logtext and "cell/s" in logtext  # papermill's progress bar, as lines
    assert '"total": 2.0' in logtext  # cell output, logged
    assert store.history("rep")[0] == rec


def test_failure_records_cell_index_error_name_and_value(store, params_nb):
    add_schedule(store, params_nb, cron="0 3 * * *", name="bad", parameters={"n": 9, "fail": True})
    rec = run_now(store, "bad")
    assert rec.status == "failed"
    assert (rec.error_name, rec.error_value) == ("ValueError", "bad n=9")
    nb = nbformat.read(rec.output, as_version=4)
    assert "raise ValueError" in nb.cells[rec.error_cell].source  # the index points at the failing cell


def test_timeout_kills_the_run_and_its_kernel(store, slow_nb, tmp_path):
    pid_file = tmp_path / "kernel.pid"
    add_schedule(
        store,
        slow_nb,
        cron="0 3 * * *",
        name="slow",
        # long enough for a kernel to start and write its pid on a loaded 2-core machine
        timeout=8,
        parameters={"pid_file": str(pid_file), "seconds": 120},
    )
    t0 = time.monotonic()
    rec = run_now(store, "slow")
    assert rec.status == "timeout" and "8s" in rec.error_value
    assert time.monotonic() - t0 < 25  # the timeout, then at most the kill grace and clean-up
    kernel = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(kernel, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"kernel process {kernel} still alive after the run timed out")


def test_a_schedule_never_overlaps_itself(store, slow_nb):
    add_schedule(store, slow_nb, cron="0 3 * * *", name="once", parameters={"seconds": 4})
    results = []
    first = threading.Thread(target=lambda: results.append(run_now(store, "once")))
    first.start()
    deadline = time.monotonic() + 10
    while not store.history("once") and time.monotonic() < deadline:
        time.sleep(0.05)
    second = run_now(store, "once")  # while the first is running
    first.join()
    assert second.status == "skipped" and "still running" in second.error_value
    assert results[0].status == "ok"
    assert sorted(r.status for r in store.history("once")) == ["ok", "skipped"]


def test_allow_overlap_claims_a_second_run(store, params_nb):
    s = add_schedule(store, params_nb, cron="0 3 * * *", name="par", allow_overlap=True)
    a = claim(store, s, trigger="cron", planned_for=1.0)
    b = claim(store, s, trigger="cron", planned_for=2.0)
    assert a and b and a != b
    assert [r.status for r in store.history("par")] == ["running", "running"]


def test_run_of_a_dead_owner_becomes_lost(store, params_nb):
    s = add_schedule(store, params_nb, cron="0 3 * * *", name="orphan")
    with store.transaction() as con:
        store.insert_run(con, "orphan", "running", started_at=time.time(), pid=2**22 + 12345)
    run_id = claim(store, s, trigger="cron", planned_for=1.0)
    statuses = {r.id: r.status for r in store.history("orphan")}
    assert sorted(statuses.values()) == ["lost", "running"]
    assert statuses[run_id] == "running"  # the claim is the new run; the dead owner's became lost


def test_only_the_newest_outputs_are_kept(store, params_nb):
    add_schedule(store, params_nb, cron="0 3 * * *", name="keep", keep=2)
    recs = [run_now(store, "keep") for _ in range(3)]
    assert [r.status for r in recs] == ["ok"] * 3
    files = sorted(p.name for p in (store.runs_dir / "keep").iterdir())
    assert files == sorted(
        [os.path.basename(r.output) for r in recs[1:]] + [os.path.basename(r.log) for r in recs[1:]]
    )
    assert [r.output_exists for r in store.history("keep")] == [True, True, False]
