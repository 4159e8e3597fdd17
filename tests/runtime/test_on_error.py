"""Error flows (flownb.runtime.on_error) on the embedded runtime: the spec, what a delivery holds,
the window, a delivery that fails and is sent again, setup() and poll failures, the cursor across
restarts, flow.test (dry) and `flownb run --until-idle`. The same on RabbitMQ:
tests/runtime/amqp/test_on_error_amqp.py; on every path: tests/parity/flows/on-error."""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import flownb
from flownb.errors import ConfigError, SpecError
from flownb.flow import OnError, from_spec
from flownb.runtime.local import LocalRuntime
from flownb.runtime.local.runtime import VirtualClock
from flownb.runtime.on_error import Window, delivery, event
from flownb.testing import HttpTarget

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "components"))
from setup_flows import flow as setup_flow  # noqa: E402
from setup_flows import free_port, trigger_flow  # noqa: E402
from smtp_kit import SmtpServer  # noqa: E402

CHECK = flownb.step("check", "mapping", fields={
    "id": "id", "v": "value < 0 ? $error('negative value ' & $string(value)) : value * 2"})


def _flow(name: str, on_error, **kw) -> flownb.Flow:
    return flownb.Flow(name=name, trigger=flownb.step("in", "webhook", token_env="OE_TOKEN"), steps=[CHECK],
                       on_error=on_error, **kw)


def _errors_table(db: Path, every: str = "1m", batch: int = 50) -> dict:
    return {"every": every, "batch": batch, "steps": [
        {"name": "each", "component": "split", "config": {"path": "events"}},
        {"name": "row", "component": "mapping", "config": {"fields": {
            "id": "message_id", "step": "step", "kind": "kind", "error": "error", "value": "body.value"}}},
        {"name": "errors", "component": "sql.upsert",
         "config": {"url": f"sqlite:///{db}", "table": "errors", "key": ["id"], "create": True}}]}


def _rows(db: Path) -> list[tuple]:
    if not db.exists():
        return []
    with sqlite3.connect(db) as conn:
        try:
            return conn.execute("SELECT id, step, kind, value FROM errors ORDER BY value").fetchall()
        except sqlite3.OperationalError:
            return []


# -- the spec ----------------------------------------------------------------------------------------

def test_on_error_takes_a_list_of_steps_or_a_mapping_and_round_trips(tmp_path):
    short = from_spec(yaml.safe_load("""
name: f
trigger: {name: in, component: webhook}
steps: [{name: check, component: mapping, config: {fields: {id: id}}}]
on_error: [{name: say, component: log}]
"""))
    assert short.on_error == OnError(steps=[flownb.step("say", "log")])
    assert short.on_error.batch == 50 and short.on_error.every == 60.0
    full = _flow("f", {"every": "5m", "batch": 10, "steps": [{"name": "say", "component": "log"}]})
    assert full.on_error is not None and full.on_error.every == 300.0
    assert flownb.load(full.save(tmp_path / "f.yaml")) == full
    assert full.to_yaml().count("on_error:") == 1
    assert full.spec_hash() != _flow("f", None).spec_hash()


def test_on_error_is_validated_like_steps():
    with pytest.raises(SpecError, match="used twice"):
        from_spec({"name": "f", "trigger": {"name": "in", "component": "webhook"},
                   "steps": [{"name": "check", "component": "log"}],
                   "on_error": [{"name": "check", "component": "log"}]})
    with pytest.raises(SpecError, match="at least 1"):
        from_spec({"name": "f", "trigger": {"name": "in", "component": "webhook"}, "on_error": []})
    with pytest.raises(SpecError, match="unknown field"):
        from_spec({"name": "f", "trigger": {"name": "in", "component": "webhook"},
                   "on_error": {"steps": [{"name": "say", "component": "log"}], "evry": "1m"}})
    bad = _flow("f", [{"name": "post", "component": "http.request", "config": {"methd": "POST"}}])
    with pytest.raises(ConfigError) as err:
        bad.validate_components()
    assert err.value.step == "post"


def test_the_secrets_of_on_error_steps_are_required(monkeypatch):
    from flownb.secrets import check_env
    f = _flow("f", [{"name": "post", "component": "http.request",
                     "config": {"url": "http://127.0.0.1:9/x", "token_env": "ALERT_TOKEN_X"}}])
    monkeypatch.delenv("ALERT_TOKEN_X", raising=False)
    with pytest.raises(SpecError, match="ALERT_TOKEN_X"):
        check_env(f)


# -- a delivery and its window -----------------------------------------------------------------------

def test_a_delivery_lists_at_most_batch_events_and_counts_all():
    evs = [event("dead_letter", "shop", "check", "EvaluationError", f"bad {i}", at=1000.0 + i) for i in range(3)]
    evs.append(event("setup_failed", "shop", "save", "OperationalError", "connection refused", at=1010.0))
    d = delivery("shop", evs[:2], 7, {("dead_letter", "check"): 6, ("setup_failed", "save"): 1})
    assert d["count"] == 7 and d["omitted"] == 5 and len(d["events"]) == 2
    assert d["by_step"] == {"check": 6, "save": 1} and d["by_kind"] == {"dead_letter": 6, "setup_failed": 1}
    assert d["first_at"] == "1970-01-01T00:16:40.000Z" and d["last_at"] == "1970-01-01T00:16:41.000Z"
    assert d["text"] == ("flow 'shop': 7 failure(s) — check: 6 dead letter(s) (EvaluationError: bad 0); "
                         "save: 1 setup() failure(s)")


def test_a_window_lets_the_first_delivery_out_at_once_then_one_per_every():
    w = Window(60.0)
    assert w.due(0.0)
    w.sent(0.0)
    assert not w.due(59.9) and w.wait(30.0) == 30.0
    assert w.due(60.0)


# -- the embedded runtime ----------------------------------------------------------------------------

def test_every_dead_letter_reaches_the_error_flow_once_across_runs(tmp_path):
    db = tmp_path / "errors.db"
    f = _flow("oe-local", _errors_table(db))
    with LocalRuntime(f, tmp_path / "state") as rt:
        rt.feed([{"id": i, "value": v} for i, v in enumerate([5, -1, 3, -4, -9])])
        rt.run(until_idle=True)
        dead = {d.message.id for d in rt.dead_letters()}
        assert rt.errors is not None and rt.errors.delivered == 3 and rt.errors.pending() == 0
    rows = _rows(db)
    assert {r[0] for r in rows} == dead and [r[3] for r in rows] == [-9, -4, -1]
    assert {(r[1], r[2]) for r in rows} == {("check", "dead_letter")}
    # a restart delivers nothing twice, and only what is new
    with LocalRuntime(f, tmp_path / "state") as rt:
        rt.run(until_idle=True)
        assert rt.errors is not None and rt.errors.delivered == 0
        rt.feed([{"id": 9, "value": -2}])
        rt.run(until_idle=True)
        assert rt.errors.delivered == 1
    assert [r[3] for r in _rows(db)] == [-9, -4, -2, -1]


def test_dead_letters_from_before_on_error_was_configured_are_not_reported(tmp_path):
    with LocalRuntime(_flow("oe-late", None), tmp_path / "state") as rt:
        rt.feed([{"id": 1, "value": -1}])
        rt.run(until_idle=True)
    db = tmp_path / "errors.db"
    with LocalRuntime(_flow("oe-late", _errors_table(db)), tmp_path / "state") as rt:
        rt.feed([{"id": 2, "value": -2}])
        rt.run(until_idle=True)
    assert [r[3] for r in _rows(db)] == [-2]


def test_a_storm_is_one_delivery_per_window_listing_batch_events():
    clock = VirtualClock(1_000_000.0)
    with HttpTarget() as chat:
        f = _flow("oe-storm", {"every": "1m", "batch": 3, "steps": [
            {"name": "post", "component": "http.request", "config": {"url": chat.url + "/hook"}}]})
        with LocalRuntime(f, None, memory=True, clock=clock) as rt:
            rt.feed([{"id": i, "value": -i - 1} for i in range(10)])
            rt.drain()
            rt.notify_errors()
            rt.feed([{"id": 10 + i, "value": -1} for i in range(5)])
            rt.drain()
            rt.notify_errors()           # within the window: held
            clock.advance(59.0)
            rt.notify_errors()
            assert len(chat.received) == 1
            clock.advance(1.0)
            rt.notify_errors()           # the window is over: the five
            rt.notify_errors()           # nothing pending: nothing sent
        first, second = (r.json for r in chat.received)
    assert (first["count"], len(first["events"]), first["omitted"]) == (10, 3, 7)
    assert (second["count"], len(second["events"]), second["omitted"]) == (5, 3, 2)
    assert first["text"].startswith("flow 'oe-storm': 10 failure(s) — check: 10 dead letter(s) (EvaluationError")
    assert {e["body"]["id"] for e in first["events"]} <= set(range(10))


def test_a_failed_delivery_is_logged_and_sent_again_next_window(caplog):
    clock = VirtualClock(1_000_000.0)
    with HttpTarget(fail_first=1, status=500) as chat:
        f = _flow("oe-retry", {"every": "30s", "steps": [
            {"name": "post", "component": "http.request", "config": {"url": chat.url + "/hook"},
             "retry": {"max_attempts": 1}}]})
        with LocalRuntime(f, None, memory=True, clock=clock) as rt:
            rt.feed([{"id": 1, "value": -1}, {"id": 2, "value": -2}])
            rt.drain()
            with caplog.at_level(logging.ERROR, logger="flownb.on_error"):
                rt.notify_errors()
            assert chat.refused == 1 and not chat.received
            assert "on_error step 'post' (http.request) failed" in caplog.text
            assert "stay pending and are sent again in 30s" in caplog.text
            assert rt.errors is not None and rt.errors.pending() == 2
            clock.advance(29.0)
            rt.notify_errors()
            assert not chat.received
            clock.advance(1.0)
            rt.notify_errors()
            assert rt.errors.pending() == 0
        assert [r.json["count"] for r in chat.received] == [2]


def test_setup_failures_and_failed_polls_are_events(tmp_path):
    port = free_port()  # nothing listens: the python step's setup() and the trigger's are refused
    with HttpTarget() as chat:
        on_error = {"every": "1s", "steps": [
            {"name": "post", "component": "http.request", "config": {"url": chat.url + "/hook"}}]}
        f = setup_flow("oe-setup", port, tmp_path / "out.csv").model_copy(
            update={"on_error": OnError.model_validate(on_error)})
        with LocalRuntime(f, None, memory=True, clock=VirtualClock(1_000_000.0)) as rt:
            rt.feed([{"id": 1}])
            rt.drain_pass()
            rt.notify_errors(force=True)
        t = trigger_flow("oe-poll", port, tmp_path / "out2.csv").model_copy(
            update={"on_error": OnError.model_validate(on_error)})
        with LocalRuntime(t, None, memory=True) as rt:
            rt.poll_once()
            rt.notify_errors(force=True)
        setup, poll = (r.json for r in chat.received)
    (ev,) = setup["events"]
    assert (ev["kind"], ev["step"], ev["error_type"]) == ("setup_failed", "enrich", "ConfigError")
    assert "Connection refused" in ev["error"] and ev["message_id"] is None and ev["body"] is None
    (ev,) = poll["events"]
    assert (ev["kind"], ev["step"], ev["error_type"]) == ("poll_failed", "src", "ConfigError")
    assert "Connection refused" in ev["error"]


def test_smtp_send_as_an_on_error_action_mails_one_delivery_per_window(tmp_path):
    """An e-mail per delivery to a real SMTP server (aiosmtpd on loopback): the subject from the
    delivery's fields, the text listing each failure; a storm within the window is one mail more."""
    clock = VirtualClock(1_000_000.0)
    with SmtpServer(tmp_path) as server:
        f = _flow("oe-mail", {"every": "10m", "steps": [
            {"name": "mail", "component": "smtp.send", "config": {
                "port": server.port, "security": "none", "sender": "flownb <flownb@example.com>",
                "to": "ops@example.com", "subject": "[{flow}] {count} failure(s)",
                "text": "text & '\n' & $join(events.(step & ': ' & error), '\n')"}}]})
        with LocalRuntime(f, tmp_path / "state", clock=clock) as rt:
            rt.feed([{"id": 1, "value": -1}, {"id": 2, "value": 2}, {"id": 3, "value": -3}])
            rt.drain()
            rt.notify_errors()
            assert len(server.received) == 1
            rt.feed([{"id": 4, "value": -4}])
            rt.drain()
            rt.notify_errors()  # within the window: held
            assert len(server.received) == 1 and rt.errors is not None and rt.errors.pending() == 1
            rt.run(until_idle=True)  # the end of a run delivers what is pending without waiting
            assert rt.errors.pending() == 0
        (frm, rcpt, first), (_f, _r, second) = server.received
    assert frm == "flownb@example.com" and rcpt == ["ops@example.com"]
    assert first["Subject"] == "[oe-mail] 2 failure(s)" and second["Subject"] == "[oe-mail] 1 failure(s)"
    text = first.get_payload(decode=True).decode()
    assert text.startswith("flow 'oe-mail': 2 failure(s) — check: 2 dead letter(s) (EvaluationError")
    assert "\ncheck: field 'v': D3137: negative value -1 (" in text
    assert "\ncheck: field 'v': D3137: negative value -3 (" in text
    assert "negative value -4" in second.get_payload(decode=True).decode()


def test_log_as_an_on_error_action_writes_each_delivery_to_the_log(tmp_path, caplog):
    """``log`` at level error: one log line per delivery with the whole delivery as JSON, for a log
    shipper to alert on; a failed poll is an event like a dead letter."""
    port = free_port()  # nothing listens: the trigger's poll is refused
    on_error = {"every": "1m", "steps": [{"name": "say", "component": "log",
                                          "config": {"level": "error", "prefix": "FLOW FAILED "}}]}
    t = trigger_flow("oe-log", port, tmp_path / "out.csv").model_copy(
        update={"on_error": OnError.model_validate(on_error)})
    with caplog.at_level(logging.ERROR, logger="flownb"), LocalRuntime(t, None, memory=True) as rt:
        rt.poll_once()
        rt.notify_errors()
        rt.poll_once()
        rt.notify_errors()  # within the window: nothing logged yet
        lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("FLOW FAILED ")]
        assert len(lines) == 1
        rt.notify_errors(force=True)
        lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("FLOW FAILED ")]
    assert len(lines) == 2
    import json
    first = json.loads(lines[0].removeprefix("FLOW FAILED "))
    assert (first["flow"], first["count"], first["by_kind"]) == ("oe-log", 1, {"poll_failed": 1})
    (ev,) = first["events"]
    assert (ev["kind"], ev["step"]) == ("poll_failed", "src") and "Connection refused" in ev["error"]
    assert [r.levelname for r in caplog.records if r.getMessage().startswith("FLOW FAILED ")] == ["ERROR"] * 2


def test_flow_test_shows_what_the_error_flow_would_send_without_sending_it():
    with HttpTarget() as chat:
        f = _flow("oe-dry", [{"name": "post", "component": "http.request", "config": {"url": chat.url + "/hook"}}])
        result = f.test([{"id": 1, "value": -1}, {"id": 2, "value": 2}])
        assert not chat.received
        (sent,) = result.effects["post"]
        assert "flow 'oe-dry': 1 failure(s)" in str(sent)
        live = f.test([{"id": 1, "value": -1}], live=True)
        assert [r.json["count"] for r in chat.received] == [1]
        assert "post" not in live.effects


def test_flownb_run_until_idle_delivers_and_says_so(tmp_path):
    db = tmp_path / "errors.db"
    src = tmp_path / "in.csv"
    src.write_text("id,value\n1,5\n2,-1\n3,-4\n")
    spec = flownb.Flow(name="oe-cli", trigger=flownb.step("src", "csv.poll", path=str(src), cursor="id"),
                       steps=[CHECK], on_error=_errors_table(db)).save(tmp_path / "flow.yaml")
    exe = Path(sys.executable).parent / "flownb"
    r = subprocess.run([str(exe), "run", str(spec), "--until-idle", "--state-dir", str(tmp_path / "st")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stderr  # dead letters: exit 1 as without on_error
    assert "on_error: 2 failure(s) delivered to 'each', 'row', 'errors'" in r.stdout
    assert [row[3] for row in _rows(db)] == [-4, -1]
