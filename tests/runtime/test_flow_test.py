"""``flow.test(sample)``: the local engine in memory with a virtual clock."""

from __future__ import annotations

import time

import pandas as pd
import pytest

from flownb import action
from flownb.errors import SpecError
from flownb.runtime.local import TestResult


def test_outputs_per_step_from_list_sample(flow_factory):
    flow = flow_factory(("double", "lt.double", {}), ("even", "lt.even", {}))
    r = flow.test([{"n": i} for i in range(6)])
    assert isinstance(r, TestResult)
    assert r.outputs["src"] == [{"n": i} for i in range(6)]
    assert r.outputs["double"] == [{"n": i, "w": 2 * i} for i in range(6)]
    assert r.outputs["even"] == [{"n": i, "w": 2 * i} for i in (0, 2, 4)]
    assert r.last == r.outputs["even"]
    assert r.counts["even"] == {"in": 6, "out": 3, "retried": 0, "dead": 0,
                                "seconds": pytest.approx(r.timings["even"], abs=1e-5), "errors": 0}
    assert set(r.timings) == {"src", "double", "even"}
    assert r.dead_letters == []


def test_frame_is_a_dataframe_and_unknown_step_suggests(flow_factory):
    flow = flow_factory(("double", "lt.double", {}), ("even", "lt.even", {}))
    r = flow.test([{"n": 1}, {"n": 2}])
    df = r.frame("double")
    assert list(df.columns) == ["n", "w"] and df["w"].tolist() == [2, 4]
    assert r.frame("even").shape == (1, 2)
    with pytest.raises(SpecError, match="did you mean 'double'"):
        r.frame("doubel")


def test_dataframe_sample_nan_is_left_out_and_dates_iso(flow_factory):
    seen = []

    @action("lttest.collect")
    def collect(body, ctx):
        seen.append(body)
        return body

    flow = flow_factory(("c", "lttest.collect", {}))
    df = pd.DataFrame({"n": [1, 2], "x": [1.5, float("nan")],
                       "at": pd.to_datetime(["2024-01-02T03:04:05", "2024-05-06T00:00:00"])})
    r = flow.test(df)
    assert r.outputs["c"][1] == {"n": 2, "at": "2024-05-06T00:00:00.000"}  # NaN: missing (docs/records.md)
    assert r.outputs["c"][0]["at"] == "2024-01-02T03:04:05.000"
    assert seen == r.outputs["c"]


def test_retries_use_a_virtual_clock(flow_factory):
    flow = flow_factory(("flaky", "lt.flaky", {"fail_times": 3},
                         {"retry": {"max_attempts": 4, "initial": "1h", "max": "1d"}}))
    t0 = time.monotonic()
    r = flow.test([{"n": 1}, {"n": 2}])
    assert time.monotonic() - t0 < 5            # three hours of back-off, no real waiting
    assert [b["attempts"] for b in r.outputs["flaky"]] == [4, 4]
    assert r.counts["flaky"]["retried"] == 6


def test_dead_letters_in_result(flow_factory):
    flow = flow_factory(("flaky", "lt.flaky", {"fail_times": 9}, {"retry": {"max_attempts": 2}}),
                        ("fatal", "lt.fatal", {}))
    r = flow.test([{"n": 1}])
    assert r.outputs["flaky"] == [] and len(r.dead_letters) == 1
    d = r.dead_letters[0]
    assert d.step == "flaky" and d.error.attempt == 2 and d.message.body == {"n": 1}
    r2 = flow_factory(("fatal", "lt.fatal", {})).test([{"n": 1, "poison": True}, {"n": 2}])
    assert [d.error.type for d in r2.dead_letters] == ["FatalError"]
    assert r2.outputs["fatal"] == [{"n": 2}]


def test_no_sample_polls_the_trigger_once(flow_factory):
    flow = flow_factory(("double", "lt.double", {}), trigger=("lt.count", {"total": 50, "batch": 20}))
    r = flow.test()
    assert [b["n"] for b in r.outputs["double"]] == list(range(20))


def test_bad_samples_are_clear_errors(flow_factory):
    flow = flow_factory(("double", "lt.double", {}))
    with pytest.raises(SpecError, match="sample row 1 is a str"):
        flow.test([{"n": 1}, "oops"])


def test_webhook_trigger_needs_a_sample(flow_factory):
    from flownb import register
    from flownb.components.base import WebhookTrigger

    class Hook(WebhookTrigger):
        pass

    register("lttest.hook", Hook)
    flow = flow_factory(("double", "lt.double", {}), trigger=("lttest.hook", {}))
    with pytest.raises(SpecError, match="pass a sample"):
        flow.test()
    assert flow.test([{"n": 3}]).last == [{"n": 3, "w": 6}]


def test_display_bundle_and_text(flow_factory):
    r = flow_factory(("double", "lt.double", {})).test([{"n": 1}])
    bundle = r._repr_mimebundle_()
    assert "text/plain" in bundle
    assert "double: in 1, out 1" in repr(r)


def test_progress_bar_for_long_runs(flow_factory, capsys):
    flow = flow_factory(("double", "lt.double", {}), ("even", "lt.even", {}))
    r = flow.test([{"n": i} for i in range(3000)], progress=True)
    assert len(r.last) == 1500
    err = capsys.readouterr().err
    assert "flow.test" in err and "6000/6000" in err


# -- dry by default: actions with outside effects record what they would send ------------------------

def _effects_flow(tmp_path, url: str):
    import flownb
    return flownb.Flow(name="dry", trigger=flownb.step("src", "webhook", token_env="DRY_HOOK_TOKEN"), steps=[
        flownb.step("shape", "mapping", fields={"id": "id", "email": "$lowercase(email)"}),
        flownb.step("push", "http.request", method="POST", url=url + "/contacts/{id}", token_env="DRY_CRM_TOKEN",
                    output="input"),
        flownb.step("store", "sql.upsert", url=f"sqlite:///{tmp_path / 'shop.db'}", table="contacts",
                    key=["id"], create=True),
        flownb.step("archive", "csv.write", path=str(tmp_path / "out" / "contacts.csv"), columns=["id", "email"]),
    ])


def test_a_dry_test_sends_nothing_and_shows_what_each_action_would_send(tmp_path, monkeypatch):
    from flownb.testing import HttpTarget
    monkeypatch.delenv("DRY_CRM_TOKEN", raising=False)  # a dry run needs no secret
    with HttpTarget() as crm:
        url = crm.url
        r = _effects_flow(tmp_path, url).test([{"id": 1, "email": "A@X.IO"}, {"id": 2, "email": "b@y.io"}])
        assert crm.received == []
    assert not (tmp_path / "shop.db").exists() and not (tmp_path / "out").exists()
    assert r.live is False and r.dead_letters == []
    assert r.last == [{"id": 1, "email": "a@x.io"}, {"id": 2, "email": "b@y.io"}]  # passed on unchanged
    push = r.effects["push"]
    assert [(e["method"], e["url"], e["json"]) for e in push] == [
        ("POST", f"{url}/contacts/1", {"id": 1, "email": "a@x.io"}),
        ("POST", f"{url}/contacts/2", {"id": 2, "email": "b@y.io"})]
    assert push[0]["headers"]["Authorization"] == "Bearer *** ($DRY_CRM_TOKEN)"
    assert r.effects["store"][1] == {"upsert": "contacts", "key": {"id": 2}, "row": {"id": 2, "email": "b@y.io"}}
    assert r.effects["archive"] == [
        {"path": str(tmp_path / "out" / "contacts.csv"), "line": "1,a@x.io", "header": "id,email"},
        {"path": str(tmp_path / "out" / "contacts.csv"), "line": "2,b@y.io", "header": "id,email"}]
    assert "dry run: not sent (push 2, store 2, archive 2)" in r.summary()
    html = r._repr_mimebundle_()["text/html"]
    assert "push: would send (2)" in html and "live=True" in html


def test_a_dry_test_dead_letters_what_the_live_run_would(tmp_path):
    from flownb.testing import HttpTarget
    with HttpTarget() as crm:
        flow = _effects_flow(tmp_path, crm.url)
        r = flow.test([{"email": "no-id@x.io"}])  # no id: the URL placeholder and the key are missing
    (dead,) = r.dead_letters
    assert dead.step == "push" and "id" in dead.error.message


def test_live_sends_for_real(tmp_path, monkeypatch):
    import sqlite3

    from flownb.testing import HttpTarget
    monkeypatch.setenv("DRY_CRM_TOKEN", "s3cr3t-token-value")
    with HttpTarget() as crm:
        r = _effects_flow(tmp_path, crm.url).test([{"id": 1, "email": "A@X.IO"}], live=True)
        assert [x.json for x in crm.received] == [{"id": 1, "email": "a@x.io"}]
    assert r.live is True and r.effects == {}
    with sqlite3.connect(tmp_path / "shop.db") as db:
        assert db.execute("select id, email from contacts").fetchall() == [(1, "a@x.io")]
    assert (tmp_path / "out" / "contacts.csv").read_text() == "id,email\n1,a@x.io\n"


def test_a_test_run_narrates_nothing_per_message_its_result_shows_it(flow_factory, caplog):
    with caplog.at_level("INFO"):  # as a notebook with logging on: every record would be a stderr box
        r = flow_factory(("fatal", "lt.fatal", {})).test([{"n": i, "poison": True} for i in range(20)])
    assert len(r.dead_letters) == 20
    assert [rec.getMessage() for rec in caplog.records if rec.levelno >= 20 and rec.name.startswith("flownb")] == []
