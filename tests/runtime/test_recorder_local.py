"""The flight recorder on the embedded runtime (docs/debugging.md "Trace a record"): the path of a
sampled record through the steps in the state database, written in the batch's transaction,
redacted, pruned by ``keep``; ``flownb.trace`` and ``flownb trace``. The same on RabbitMQ:
tests/runtime/amqp/test_recorder_amqp.py; the model: tests/test_recorder.py."""

from __future__ import annotations

import sqlite3

import pandas as pd
import pytest
from runtimes import sink_counts
from workbench_kit import make, records

import flownb
from flownb.cli import main
from flownb.flow import RecordPolicy
from flownb.recorder import REDACTED, sampled
from flownb.runtime.local import LocalRuntime
from flownb.runtime.local.store import QueueStore


def recorded(flow: flownb.Flow, **policy) -> flownb.Flow:
    return flow.model_copy(update={"record": RecordPolicy(**{"sample": 1.0, **policy})})


def _run(flow, state, bodies, clock=None):
    with LocalRuntime(flow, state, clock=clock) as rt:
        msgs = [rt.submit(b) for b in bodies]
        rt.drain()
    return msgs


def _table(state, flow, sql="SELECT trace, step, outcome, input, output FROM recorder ORDER BY id"):
    db = sqlite3.connect(state / f"{flow.name}.db")
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def test_a_sampled_record_is_recorded_at_every_step_with_input_output_and_outcome(tmp_path):
    flow = recorded(make(tmp_path / "sink.db"))
    msgs = _run(flow, tmp_path / "state", records(3))
    path = flownb.trace(msgs[1].trace, flow, state_dir=tmp_path / "state")
    assert list(path.columns[:7]) == ["step", "seq", "input", "output", "outcome", "error", "at"]
    assert list(path["step"]) == ["price", "sink"] and list(path["seq"]) == [0, 1]
    assert list(path["outcome"]) == ["delivered", "filtered"]  # the sink emits nothing
    price, sink = path.iloc[0], path.iloc[1]
    assert price["input"]["amount"] == "10" and price["output"] == [
        {"n": 1, "total": 20, "customer": {"email": "c1@example.com", "tier": None}, "note": "row 1"}]
    assert sink["input"] == price["output"][0] and sink["output"] == []
    assert pd.isna(price["error"]) and path["at"].dt.tz is not None and path["at"].is_monotonic_increasing
    assert path.attrs["trace"] == msgs[1].trace


def test_a_dead_letter_leads_to_its_path(tmp_path):
    flow = recorded(make(tmp_path / "sink.db"))
    state = tmp_path / "state"
    _run(flow, state, records(6))
    dead = flownb.dead_letters(flow, state_dir=state)
    assert len(dead) == 2
    for _, letter in dead.iterrows():
        path = flownb.trace(letter["_trace"], flow, state_dir=state)
        assert list(path["step"]) == ["price"] and list(path["outcome"]) == ["dead"]
        assert path["error"][0] == letter["_error"] and path["error_type"][0] == letter["_error_type"]
        assert path["input"][0]["n"] == letter["n"] and path["output"][0] == []
    # a unique prefix of the trace id is enough
    assert len(flownb.trace(dead["_trace"][0][:10], flow, state_dir=state)) == 1


def test_retries_are_recorded_as_attempts_of_the_same_step(tmp_path):
    flow = recorded(flownb.Flow(name="rec-retry", trigger=flownb.step("src", "lt.count", total=0),
                                steps=[flownb.step("flaky", "lt.flaky", fail_times=2,
                                                   retry={"max_attempts": 5, "initial": 0.01, "max": 0.01})]))
    msgs = _run(flow, tmp_path / "state", [{"n": 1}])
    path = flownb.trace(msgs[0].trace, flow, state_dir=tmp_path / "state")
    assert list(path["outcome"]) == ["retry", "retry", "delivered"]
    assert list(path["attempt"]) == [1, 2, 3]
    assert list(path["error_type"][:2]) == ["RetryableError"] * 2 and "attempt 1" in path["error"][0]
    assert path["output"][2] == [{"n": 1, "attempts": 3}]


def test_sampling_is_per_trace_every_step_of_a_sampled_record_and_none_of_the_others(tmp_path):
    flow = recorded(make(tmp_path / "sink.db"), sample=0.3)
    state = tmp_path / "state"
    bodies = [{**b, "amount": "1"} for b in records(200)]  # all delivered: two steps each
    msgs = _run(flow, state, bodies)
    assert sink_counts(tmp_path / "sink.db")[0] == 200
    steps: dict[str, list[str]] = {}
    for trace, step, *_ in _table(state, flow):
        steps.setdefault(trace, []).append(step)
    expected = {m.trace for m in msgs if sampled(m.trace, 0.3)}
    assert set(steps) == expected and 30 < len(expected) < 90
    assert all(s == ["price", "sink"] for s in steps.values())


def test_redacted_fields_are_replaced_before_they_are_stored(tmp_path):
    flow = recorded(make(tmp_path / "sink.db"), redact=["customer.email", "note"])
    state = tmp_path / "state"
    msgs = _run(flow, state, records(4))
    rows = _table(state, flow)
    assert len(rows) == 4 * 2 - 2  # two die at price
    for _trace, _step, _outcome, inp, out in rows:
        assert "@example.com" not in inp + out and "row " not in inp + out
    path = flownb.trace(msgs[1].trace, flow, state_dir=state)
    assert path["input"][0]["customer"] == {"email": REDACTED, "tier": None}
    assert path["output"][0][0]["note"] == REDACTED and path["input"][1]["customer"]["email"] == REDACTED
    # the flow itself ran on the real values
    db = sqlite3.connect(tmp_path / "sink.db")
    assert "c1@example.com" in db.execute("select body from seen where n=1").fetchone()[0]
    db.close()


def test_rows_older_than_keep_are_pruned_as_the_runtime_runs(tmp_path):
    flow = recorded(make(tmp_path / "sink.db"), keep="1h")
    state, now = tmp_path / "state", [1_000_000.0]
    old = _run(flow, state, records(3), clock=lambda: now[0])
    assert {r[0] for r in _table(state, flow)} == {m.trace for m in old}
    now[0] += 1800  # within keep: nothing pruned
    half = _run(flow, state, records(3), clock=lambda: now[0])
    assert {r[0] for r in _table(state, flow)} == {m.trace for m in old + half}
    now[0] += 2 * 3600  # the first runs are now older than keep
    new = _run(flow, state, records(3), clock=lambda: now[0])
    assert {r[0] for r in _table(state, flow)} == {m.trace for m in new}
    gone = flownb.trace(old[1].trace, flow, state_dir=state)
    assert gone.empty and "older than keep (keep: 1h)" in gone.attrs["note"]


def test_the_rows_are_written_in_the_batchs_transaction_no_extra_commit(tmp_path, monkeypatch):
    counts = []
    original = QueueStore.transaction

    def counting(self, *a, **kw):
        counts[-1] += 1
        return original(self, *a, **kw)
    monkeypatch.setattr(QueueStore, "transaction", counting)
    for i, flow in enumerate([make(tmp_path / "a.db"), recorded(make(tmp_path / "b.db"))]):
        counts.append(0)
        _run(flow, tmp_path / f"state{i}", records(30))
    assert counts[0] == counts[1] > 0
    assert len(_table(tmp_path / "state1", flow)) == 30 * 2 - 10


def test_an_in_memory_run_records_nothing(tmp_path):
    flow = recorded(make(tmp_path / "sink.db"))
    with LocalRuntime(flow, None, memory=True) as rt:  # flow.test and retest: nothing to trace later
        assert rt.recorder is None
    with LocalRuntime(flow, tmp_path / "state") as rt:
        assert rt.recorder is not None


def test_cli_trace_prints_the_path_plain_when_not_a_terminal(tmp_path, capsys):
    flow = recorded(make(tmp_path / "sink.db"))
    state = tmp_path / "state"
    msgs = _run(flow, state, records(2))
    spec = str(flow.save(tmp_path / "flow.yaml"))
    assert main(["trace", spec, msgs[0].trace, "--state-dir", str(state)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split("\t") == ["step", "seq", "input", "output", "outcome", "error", "at", "attempt"]
    assert len(lines) == 2
    step, seq, inp, out, outcome, error, at, attempt = lines[1].split("\t")
    assert attempt == "1"
    assert (step, seq, outcome, out) == ("price", "0", "dead", "[]") and '"amount": "n/a"' in inp
    assert error.startswith("EvaluationError: field 'total'") and at.endswith("+00:00")
    assert main(["trace", spec, msgs[1].trace, "--state-dir", str(state)]) == 0
    assert [ln.split("\t")[4] for ln in capsys.readouterr().out.splitlines()[1:]] == ["delivered", "filtered"]


def test_cli_trace_prints_a_table_on_a_terminal_and_explains_a_trace_it_does_not_have(tmp_path, capsys,
                                                                                     monkeypatch):
    flow = recorded(make(tmp_path / "sink.db"))
    state = tmp_path / "state"
    msgs = _run(flow, state, records(2))
    spec = str(flow.save(tmp_path / "flow.yaml"))
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["trace", spec, msgs[1].trace, "--state-dir", str(state)]) == 0
    out = capsys.readouterr().out
    assert f"trace {msgs[1].trace}" in out and "delivered" in out and "filtered" in out and "│" in out
    assert main(["trace", spec, "f" * 32, "--state-dir", str(state)]) == 1
    err = capsys.readouterr().err
    assert "no recorded path for trace" in err and "not sampled (record.sample: 1" in err
    assert main(["trace", spec, "f" * 32, "--db", str(tmp_path / "none.db")]) == 1
    assert "no recorder database" in capsys.readouterr().err


@pytest.mark.parametrize("kw", [{}, {"state_dir": "x", "db": "y"}])
def test_trace_needs_one_place_to_read(tmp_path, kw):
    with pytest.raises(flownb.SpecError):
        flownb.trace("0" * 32, **kw)
