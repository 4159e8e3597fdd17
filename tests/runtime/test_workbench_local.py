"""The notebook as production's debugger on the embedded runtime: dead letters as a DataFrame,
retest with the fixed rules, replay with edited bodies (docs/debugging.md). The same on RabbitMQ:
tests/runtime/amqp/test_workbench_amqp.py."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import orjson
import pandas as pd
import pytest
from runtimes import sink_counts
from workbench_kit import POISON, fixed, make, records

import flownb
from flownb.cli import main
from flownb.errors import FlownbError, SpecError
from flownb.runtime.local import LocalRuntime
from flownb.workbench import META_COLUMNS, REPLAY_EDITED, REPLAY_SPEC, REPLAYED_FROM, spec_hash

ROOT = Path(__file__).resolve().parents[2]


def _failed_run(tmp_path, n=12):
    flow = make(tmp_path / "sink.db")
    with LocalRuntime(flow, tmp_path / "state") as rt:
        for body in records(n):
            rt.submit(body)
        rt.drain()
    return flow, tmp_path / "state"


def _dead_table(state, flow):
    db = sqlite3.connect(state / f"{flow.name}.db")
    try:
        return db.execute("SELECT id, step, attempt, payload, error FROM dead ORDER BY id").fetchall()
    finally:
        db.close()


def _queued(state, flow, step="price"):
    db = sqlite3.connect(state / f"{flow.name}.db")
    try:
        return [orjson.loads(p) for (p,) in db.execute("SELECT payload FROM queue WHERE step=? ORDER BY id",
                                                       (step,))]
    finally:
        db.close()


def test_dead_letters_is_a_frame_of_bodies_and_errors_and_reads_without_consuming(tmp_path):
    flow, state = _failed_run(tmp_path)
    before = _dead_table(state, flow)
    df = flownb.dead_letters(flow, state_dir=state)
    assert list(df.columns[:8]) == list(META_COLUMNS)
    assert list(df["n"]) == POISON and list(df["amount"]) == ["n/a"] * 4
    assert list(df["customer.email"]) == [f"c{i}@example.com" for i in POISON]  # nested: dotted columns
    assert df["customer.tier"].isna().all()
    assert set(df["_step"]) == {"price"} and set(df["_error_type"]) == {"EvaluationError"}
    assert df["_error"].str.contains("Unable to cast value to a number: n/a").all()
    assert list(df["_attempt"]) == [1] * 4 and df["_id"].is_unique
    assert str(df["_failed_at"].dt.tz) == "UTC" and df["_trace"].str.fullmatch("[0-9a-f]{32}").all()
    again = flownb.dead_letters(str(flow.save(tmp_path / "flow.yaml")), state_dir=state)  # a spec path too
    pd.testing.assert_frame_equal(df, again)
    assert _dead_table(state, flow) == before  # nothing consumed, nothing reordered
    assert flownb.dead_letters(flow, state_dir=state, step="sink").empty
    with pytest.raises(SpecError, match="has no step 'prise'.*price"):
        flownb.dead_letters(flow, state_dir=state, step="prise")
    with pytest.raises(FlownbError, match="no local state"):
        flownb.dead_letters(flow, state_dir=tmp_path / "elsewhere")
    with pytest.raises(SpecError, match="not both"):
        flownb.dead_letters(flow, state_dir=state, broker="amqp://localhost/")


def test_retest_runs_the_fixed_flow_from_the_step_each_record_died_at(tmp_path):
    flow, state = _failed_run(tmp_path)
    df = flownb.dead_letters(flow, state_dir=state)
    sink = tmp_path / "retest-sink.db"
    good = fixed(make(sink, name=flow.name))
    result = good.retest(df)
    assert list(result.index) == list(df.index)
    assert list(result["outcome"]) == ["delivered"] * 4 and result["changed"].all()
    assert list(result["old_error_type"]) == ["EvaluationError"] * 4 and result["new_error"].isna().all()
    assert list(result["from_step"]) == ["price"] * 4
    assert sink_counts(sink) == (4, 4)  # the steps ran (as flow.test): the sink got the 4 records
    # the same records on the unchanged rules: dead again, with the same error, not changed
    again = flow.retest(df, until="price")
    assert list(again["outcome"]) == ["dead"] * 4 and not again["changed"].any()
    assert again["new_error"].str.startswith("price: field 'total': D3030").all()
    # an edited cell is what runs; until= stops before the sink, output is the last step's bodies
    edited = df.copy()
    edited.loc[edited.index[1], "amount"] = "7"
    one = flow.retest(edited.iloc[[1, 2]], until="price")
    assert list(one.index) == [1, 2] and list(one["outcome"]) == ["delivered", "dead"]
    assert one.loc[1, "output"] == [{"n": 3, "total": 14, "customer": {"email": "c3@example.com", "tier": None},
                                     "note": "row 3"}]
    html = result._repr_html_()
    assert "delivered 4" in html and "#e3f4e1" in html  # green rows in JupyterLab
    assert "#fbe3e1" in again._repr_html_()             # red ones
    with pytest.raises(SpecError, match="has no step 'sinc'"):
        flow.retest(df, from_step="sinc")


def test_retest_keeps_the_exact_stored_body_where_no_cell_was_edited(tmp_path):
    # int column with holes would read back as 7.0; a stored null as a missing key — neither may
    # leak into a retest or a replay of an unedited row
    flow = make(tmp_path / "sink.db")
    bodies = [{"n": 1, "amount": "n/a", "extra": {"x": 1}}, {"amount": "n/a", "note": None}]
    with LocalRuntime(flow, tmp_path / "state") as rt:
        for b in bodies:
            rt.submit(b)
        rt.drain()
    df = flownb.dead_letters(flow, state_dir=tmp_path / "state")
    assert df["n"].dtype == "float64" and df["extra.x"].dtype == "float64"  # pandas made them 1.0 and NaN
    out = flow.retest(df, from_step="price", until="price")
    assert list(out["outcome"]) == ["dead", "dead"]
    keep = fixed(flow).retest(df, until="price")
    assert keep.loc[0, "output"][0]["n"] == 1 and isinstance(keep.loc[0, "output"][0]["n"], int)
    assert "note" in keep.loc[1, "output"][0] and keep.loc[1, "output"][0]["note"] is None


def test_replay_sends_edited_bodies_with_provenance_and_removes_only_those(tmp_path):
    flow, state = _failed_run(tmp_path)
    df = flownb.dead_letters(flow, state_dir=state)
    pick = df[df["n"].isin([0, 3, 6])].copy()
    pick.loc[pick["n"] == 0, "amount"] = "15"      # edited
    pick.loc[pick["n"] == 3, "note"] = None         # a field removed
    pick.loc[pick["n"] == 3, "amount"] = "1"
    out = flownb.replay(pick, flow, state_dir=state)
    assert list(out["_id"]) == list(pick["_id"]) and list(out["edited"]) == [True, True, False]
    left = flownb.dead_letters(flow, state_dir=state)
    assert list(left["n"]) == [9]  # the fourth stays
    queued = {m["body"]["n"]: m for m in _queued(state, flow)}
    assert queued[0]["body"] == {"n": 0, "amount": "15", "customer": {"email": "c0@example.com", "tier": None},
                                 "note": "row 0"}
    assert "note" not in queued[3]["body"] and queued[3]["body"]["amount"] == "1"
    assert queued[6]["body"]["amount"] == "n/a"
    for _id, n in zip(pick["_id"], [0, 3, 6], strict=True):
        h = queued[n]["headers"]
        assert h[REPLAYED_FROM] == f"price/{_id}" and h[REPLAY_SPEC] == spec_hash(flow)
        assert (h.get(REPLAY_EDITED) == "true") == (n != 6)
        assert queued[n]["meta"]["attempt"] == 1
    # the next run delivers the edited ones; the unedited one dies again (the rule is not fixed)
    with LocalRuntime(flow, state) as rt:
        rt.drain()
    seen = sqlite3.connect(tmp_path / "sink.db").execute("SELECT n, body FROM seen WHERE n IN (0, 3)").fetchall()
    assert {n: json.loads(b)["total"] for n, b in seen} == {0: 30, 3: 2}
    assert sorted(flownb.dead_letters(flow, state_dir=state)["n"]) == [6, 9]


def test_replay_refuses_bad_rows_and_replays_nothing(tmp_path):
    flow, state = _failed_run(tmp_path)
    df = flownb.dead_letters(flow, state_dir=state)
    before = _dead_table(state, flow)
    bad = pd.concat([df.iloc[:1], df.iloc[:1].assign(_id="999")])
    with pytest.raises(SpecError, match="999 .no such dead letter.*nothing was replayed"):
        flownb.replay(bad, flow, state_dir=state)
    with pytest.raises(SpecError, match="at step 'price', not 'sink'"):
        flownb.replay(df.iloc[:1].assign(_step="sink"), flow, state_dir=state)
    with pytest.raises(SpecError, match="no column.*_id"):
        flownb.replay(df.drop(columns=["_id"]), flow, state_dir=state)
    with pytest.raises(SpecError, match="trigger"):
        flownb.replay(df.iloc[:1].assign(_step="src"), flow, state_dir=state)
    assert _dead_table(state, flow) == before and _queued(state, flow) == []


def test_replay_is_one_transaction_kill_9_before_commit_loses_nothing_and_queues_nothing(tmp_path):
    flow, state = _failed_run(tmp_path)
    spec = flow.save(tmp_path / "flow.yaml")
    before = _dead_table(state, flow)
    script = textwrap.dedent(f"""
        import os, signal, sys, contextlib
        sys.path.insert(0, {str(ROOT / 'tests' / 'runtime')!r})
        import runtimes
        import flownb
        from flownb.runtime.local import store as store_mod
        real = store_mod.QueueStore.transaction
        @contextlib.contextmanager
        def dying(self, *a, **kw):
            with real(self, *a, **kw) as c:
                yield c
                if c.execute("SELECT count(*) FROM queue").fetchone()[0]:
                    os.kill(os.getpid(), signal.SIGKILL)  # inserted and deleted, not committed
        store_mod.QueueStore.transaction = dying
        df = flownb.dead_letters({str(spec)!r}, state_dir={str(state)!r})
        flownb.replay(df, {str(spec)!r}, state_dir={str(state)!r})
    """)
    r = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == -9, r.stderr
    assert _dead_table(state, flow) == before and _queued(state, flow) == []
    flownb.replay(flownb.dead_letters(flow, state_dir=state), flow, state_dir=state)  # and now it works
    assert _dead_table(state, flow) == [] and len(_queued(state, flow)) == 4


def test_cli_dlq_replay_edit_jsonl(tmp_path, capsys):
    flow, state = _failed_run(tmp_path)
    spec = str(flow.save(tmp_path / "flow.yaml"))
    df = flownb.dead_letters(flow, state_dir=state)
    edits = tmp_path / "edits.jsonl"
    # a nested line and a line of df.to_json(orient="records", lines=True) (dotted columns)
    line2 = df.iloc[[1]].assign(amount="2", **{"customer.email": "new@example.com"}).to_json(
        orient="records", lines=True, date_format="iso")
    edits.write_text(json.dumps({"_id": df["_id"][0], "amount": "1", "customer": {"tier": "gold"}}) + "\n"
                     + line2)
    assert main(["dlq", "replay", spec, "--state-dir", str(state), "--edit", str(edits)]) == 0
    assert "replayed 2 dead letter(s), 2 with an edited body" in capsys.readouterr().out
    q = {m["body"]["n"]: m["body"] for m in _queued(state, flow)}
    assert q[0] == {"n": 0, "amount": "1", "customer": {"email": "c0@example.com", "tier": "gold"}, "note": "row 0"}
    assert q[3]["customer"] == {"email": "new@example.com", "tier": None} and q[3]["amount"] == "2"
    # bad input: exit 2, a message naming the line, nothing replayed
    before = _dead_table(state, flow)
    edits.write_text(json.dumps({"_id": df["_id"][2]}) + "\n{not json\n")
    assert main(["dlq", "replay", spec, "--state-dir", str(state), "--edit", str(edits)]) == 2
    assert f"{edits}:2: not JSON" in capsys.readouterr().err
    edits.write_text(json.dumps({"amount": "1"}) + "\n")
    assert main(["dlq", "replay", spec, "--state-dir", str(state), "--edit", str(edits)]) == 2
    assert '"_id"' in capsys.readouterr().err
    assert main(["dlq", "list", spec, "--state-dir", str(state), "--edit", str(edits)]) == 2
    assert _dead_table(state, flow) == before


def test_retest_is_dry_like_flow_test_unless_live(tmp_path):
    # a sink with outside effects (sql.upsert) records what it would write; live=True writes it
    db = tmp_path / "crm.db"
    flow = flownb.Flow(name="wb-dry", trigger=flownb.step("src", "lt.count"),
                       steps=[flownb.step("price", "mapping", fields={"n": "n", "total": "$number(amount) * 2"}),
                              flownb.step("crm", "sql.upsert", url=f"sqlite:///{db}", table="contacts",
                                          key=["n"], create=True)])
    with LocalRuntime(flow, tmp_path / "state") as rt:
        for body in records(6):
            rt.submit(body)
        rt.drain()
    df = flownb.dead_letters(flow, state_dir=tmp_path / "state")
    assert list(df["n"]) == [0, 3]
    db.unlink()  # the live run's table: the retest must not write it again
    fixed_flow = flow.model_copy(update={"steps": [
        flownb.step("price", "mapping", fields={"n": "n", "total": '$number($replace(amount, "n/a", "0")) * 2'}),
        flow.steps[1]]})
    dry = fixed_flow.retest(df)
    assert list(dry["outcome"]) == ["delivered", "delivered"] and not db.exists()
    assert dry.attrs["effects"]["crm"] == [{"upsert": "contacts", "key": {"n": 0}, "row": {"n": 0, "total": 0}},
                                           {"upsert": "contacts", "key": {"n": 3}, "row": {"n": 3, "total": 0}}]
    live = fixed_flow.retest(df, live=True)
    assert list(live["outcome"]) == ["delivered", "delivered"] and live.attrs["effects"] == {}
    assert sqlite3.connect(db).execute("SELECT n, total FROM contacts ORDER BY n").fetchall() == [(0, 0), (3, 0)]


def test_a_secret_in_a_body_is_masked_in_the_frame_and_replayed_as_stored(tmp_path, monkeypatch):
    secret = "s3cr3t-Value-9f8e7d"
    monkeypatch.setenv("WB_CRM_TOKEN", secret)
    flow = flownb.Flow(name="wb-secret", trigger=flownb.step("src", "lt.count"),
                       steps=[flownb.step("price", "mapping", fields={"n": "n", "total": "$number(amount)"}),
                              flownb.step("push", "http.request", method="POST", url="http://127.0.0.1:9/x",
                                          token_env="WB_CRM_TOKEN")])
    with LocalRuntime(flow, tmp_path / "state") as rt:
        rt.submit({"n": 1, "amount": "n/a", "note": f"token {secret}"})
        rt.submit({"n": 2, "amount": "n/a", "note": f"token {secret}"})
        rt.drain()
    df = flownb.dead_letters(flow, state_dir=tmp_path / "state")
    assert secret not in df.to_string() and df["note"].str.contains("REDACTED").all()
    df.loc[1, "amount"] = "5"  # edit another field of the second one
    flownb.replay(df, flow, state_dir=tmp_path / "state")
    queued = {m["body"]["n"]: m["body"] for m in _queued(tmp_path / "state", flow)}
    assert queued[1] == {"n": 1, "amount": "n/a", "note": f"token {secret}"}   # as stored, not as shown
    assert queued[2] == {"n": 2, "amount": "5", "note": f"token {secret}"}


def test_the_readme_loop_runs_as_written(tmp_path, monkeypatch):
    import re
    block = re.search(r"## When production fails: fix it in the notebook\n\n```python\n(.*?)```",
                      (ROOT / "README.md").read_text(), re.S).group(1)
    assert len(block.strip().splitlines()) == 5
    monkeypatch.chdir(tmp_path)
    flow = make(tmp_path / "sink.db", name="readme-loop")
    flow.save("flow.yaml")
    fixed(flow).save("fixed.yaml")
    with LocalRuntime(flow, ".flownb") as rt:
        for body in records(12):
            rt.submit(body)
        rt.drain()
    lines = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    # the cell is edited before the retest, so the retest runs the edit
    assert lines.index('df.loc[df["n"] == 9, "amount"] = "90"') < lines.index("fixed.retest(df)")
    retested: list = []
    original = flownb.Flow.retest

    def keep(self, df, *args, **kwargs):  # the records as the retest got them, and what it made of them
        retested.append((df.copy(), original(self, df, *args, **kwargs)))
        return retested[-1][1]
    monkeypatch.setattr(flownb.Flow, "retest", keep)
    scope = {"flownb": flownb}
    exec(compile(block, "README.md", "exec"), scope)  # noqa: S102 - the README's own lines
    assert len(scope["df"]) == 4 and flownb.dead_letters(flow, state_dir=".flownb").empty
    ((given, frame),) = retested
    assert dict(zip(given["n"], given["amount"], strict=True)) == {0: "n/a", 3: "n/a", 6: "n/a", 9: "90"}
    assert frame["outcome"].tolist() == ["delivered"] * 4 and frame["changed"].all()
    queued = {m["body"]["n"]: m for m in _queued(Path(".flownb"), flow)}
    assert sorted(queued) == [0, 3, 6, 9] and queued[9]["body"]["amount"] == "90"
    assert queued[0]["headers"][REPLAY_SPEC] == fixed(flow).spec_hash()
    with LocalRuntime(fixed(flow), ".flownb") as rt:
        rt.drain()
    # lt.sink declares no outside effects, so the retest wrote too: 8 + 4 (retest) + 4 (replay)
    assert sink_counts(tmp_path / "sink.db") == (12, 16)
