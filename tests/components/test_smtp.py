"""smtp.send against a real SMTP server the tests start on loopback (aiosmtpd on a free port): mails
through ``flownb run``, STARTTLS with a login by password_env, a server without STARTTLS refused,
a wrong password keeping the step not ready, refused recipients (5xx dead-letters that message,
4xx retries), a server restarted between batches, the dry run."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from flownb.components.base import classify
from flownb.errors import FlownbError
from flownb.flow import load as load_flow
from flownb.message import Message

sys.path.insert(0, str(Path(__file__).parent))
from flow_kit import records_in, run, write_flow
from mqtt_kit import free_port
from smtp_kit import SmtpServer

pytestmark = [pytest.mark.integration]


def test_mails_through_the_embedded_runtime(tmp_path):
    (tmp_path / "in.csv").write_text("id,email,name\n" + "".join(f"{i},u{i}@example.com,User {i}\n"
                                                                 for i in range(1, 31)))
    with SmtpServer(tmp_path) as server:
        spec = write_flow(tmp_path, "mail",
                          {"component": "csv.poll", "config": {"path": "in.csv", "cursor": "id"}},
                          [{"name": "send", "component": "smtp.send",
                            "config": {"port": server.port, "security": "none", "sender": "Shop <shop@example.com>",
                                       "to": "{email}", "subject": "Order {id}", "text": "'Hello ' & name",
                                       "html": "'<p>Hello ' & name & '</p>'", "bcc": "audit@example.com"}}])
        assert "30 record(s) in from 'src'" in records_in(run(spec, tmp_path / "state"))
        assert len(server.received) == 30
        got = {m["To"]: (frm, rcpt, m) for frm, rcpt, m in server.received}
        frm, rcpt, mail = got["u7@example.com"]
        assert frm == "shop@example.com" and rcpt == ["u7@example.com", "audit@example.com"]
        assert mail["Subject"] == "Order 7" and mail["Bcc"] is None and mail["From"] == "Shop <shop@example.com>"
        assert mail["Message-ID"].endswith("@flownb>")
        parts = {p.get_content_type(): p.get_payload(decode=True).decode().strip() for p in mail.walk()
                 if not p.is_multipart()}
        assert parts == {"text/plain": "Hello User 7", "text/html": "<p>Hello User 7</p>"}
        assert "no new records since cursor 30" in records_in(run(spec, tmp_path / "state"))
        assert len(server.received) == 30


def test_starttls_and_login_by_password_env(tmp_path, monkeypatch, step_runner):
    with SmtpServer(tmp_path, tls=True, login=("flownb", "s3cret-pw")) as server:
        monkeypatch.setenv("FLOWNB_T_SMTP_PW", "s3cret-pw")
        runner = step_runner("smtp.send", {"port": server.port, "ca_file": str(server.cert), "username": "flownb",
                                           "password_env": "FLOWNB_T_SMTP_PW", "sender": "a@example.com",
                                           "to": "{to}", "subject": "hi"})
        outcomes = runner.run_batch([Message(body={"to": "b@example.com", "n": 1}),
                                     Message(body={"to": "c@example.com", "n": 2})])
        assert all(o.ok for o in outcomes) and [o.outputs[0].body["n"] for o in outcomes] == [1, 2]
        assert [r[1] for r in server.received] == [["b@example.com"], ["c@example.com"]]
        assert '"n": 1' in server.received[0][2].get_payload()  # default text: the body as JSON

        # a wrong password: the step is not ready (its messages stay queued), the error says what to check
        monkeypatch.setenv("FLOWNB_T_SMTP_PW", "wrong")
        from flownb.runtime.core import StepRunner
        flow = load_flow(write_flow(tmp_path, "pw", {"component": "csv.poll", "config": {"path": "x", "cursor": "id"}},
                                    [{"name": "send", "component": "smtp.send",
                                      "config": {"port": server.port, "ca_file": str(server.cert),
                                                 "username": "flownb", "password_env": "FLOWNB_T_SMTP_PW",
                                                 "sender": "a@example.com", "to": "b@example.com",
                                                 "subject": "x"}}])).resolved()
        step = StepRunner(flow, "send")
        assert not step.ensure_open(time.time())
        err = str(step.setup_error)
        assert "refused the login" in err and "check 'username' and 'password_env'" in err and "wrong" not in err
        # no ca_file: the self-signed certificate is not trusted
        flow2 = flow.model_copy(update={"steps": [flow.steps[0].model_copy(update={"config": {
            **flow.steps[0].config, "ca_file": None}})]}).revalidated()
        step = StepRunner(flow2, "send")
        assert not step.ensure_open(time.time())
        assert "TLS with the SMTP server" in str(step.setup_error) and "ca_file" in str(step.setup_error)


def test_starttls_required_but_not_offered_says_what_to_do(tmp_path):
    with SmtpServer(tmp_path) as server:
        import flownb
        from flownb.runtime.core import StepRunner
        flow = flownb.Flow(name="x", trigger=flownb.step("src", "csv.poll", path="x", cursor="id"),
                           steps=[flownb.step("send", "smtp.send", port=server.port, sender="a@example.com",
                                              to="b@example.com", subject="s")])
        step = StepRunner(flow, "send")
        assert not step.ensure_open(time.time())
        assert "does not offer STARTTLS" in str(step.setup_error) and "security: none" in str(step.setup_error)
        assert server.received == []


def test_refused_recipients_permanent_dead_letters_temporary_retries(tmp_path, step_runner):
    refuse = {"gone@example.com": "550 5.1.1 no such user", "full@example.com": "452 4.2.2 mailbox full"}
    with SmtpServer(tmp_path, refuse=refuse) as server:
        runner = step_runner("smtp.send", {"port": server.port, "security": "none", "sender": "a@example.com",
                                           "to": "{to}", "subject": "s {n}"})
        outcomes = runner.run_batch([Message(body={"to": "ok@example.com", "n": 1}),
                                     Message(body={"to": "gone@example.com", "n": 2}),
                                     Message(body={"to": "full@example.com", "n": 3}),
                                     Message(body={"to": "not an address", "n": 4}),
                                     Message(body={"n": 5}),
                                     Message(body={"to": "gone@example.com, ok2@example.com", "n": 6})])
        assert [o.ok for o in outcomes] == [True, False, False, False, False, True]
        assert not outcomes[1].error.retryable and "550" in outcomes[1].error.message
        assert outcomes[2].error.retryable and "452" in outcomes[2].error.message
        assert "no valid recipient address" in outcomes[3].error.message
        assert "has no field 'to'" in outcomes[4].error.message
        assert [r[1] for r in server.received] == [["ok@example.com"], ["ok2@example.com"]]


def test_a_server_restarted_between_batches_is_reconnected_and_one_down_is_retryable(tmp_path, step_runner):
    server = SmtpServer(tmp_path).__enter__()
    port = server.port
    runner = step_runner("smtp.send", {"port": port, "security": "none", "sender": "a@example.com",
                                       "to": "b@example.com", "subject": "s"})
    assert runner.run_batch([Message(body={"n": 1})])[0].ok
    server.__exit__()
    down = runner.run_batch([Message(body={"n": 2}), Message(body={"n": 3})])
    assert [o.ok for o in down] == [False, False] and all(o.error.retryable for o in down)
    assert "will retry" in down[0].error.message
    again = SmtpServer(tmp_path)
    again.port = port
    from aiosmtpd.controller import Controller
    again.controller = Controller(again.handler, hostname="127.0.0.1", port=port)
    with again:
        assert runner.run_batch([Message(body={"n": 2})])[0].ok
        assert len(again.received) == 1
    import flownb
    from flownb.runtime.core import StepRunner
    flow = flownb.Flow(name="x", trigger=flownb.step("src", "csv.poll", path="x", cursor="id"),
                       steps=[flownb.step("send", "smtp.send", port=free_port(), sender="a@example.com",
                                          to="b@example.com", subject="s", security="none")])
    step = StepRunner(flow, "send")
    assert not step.ensure_open(time.time())
    assert classify(step.setup_error) and "is the server running" in str(step.setup_error)


def test_config_is_checked(tmp_path):
    for cfg, match in [({"sender": "a@x", "to": "b@x", "subject": "s", "password_env": "PW"}, "needs 'username'"),
                       ({"sender": "a@x", "to": " ", "subject": "s"}, "'to' is empty"),
                       ({"sender": "a@x", "to": "b@x", "subject": "s", "text": "$nosuch("}, "config.text")]:
        spec = write_flow(tmp_path, "bad", {"component": "csv.poll", "config": {"path": "x", "cursor": "id"}},
                          [{"name": "send", "component": "smtp.send", "config": cfg}])
        with pytest.raises(FlownbError, match=match):
            load_flow(spec).validate_components()


def test_dry_run_records_the_message_without_connecting():
    import flownb
    port = free_port()
    flow = flownb.Flow(name="dry", trigger=flownb.step("src", "csv.poll", path="x", cursor="id"),
                       steps=[flownb.step("send", "smtp.send", port=port, sender="Shop <shop@example.com>",
                                          to="{email}", cc="boss@example.com", subject="Order {id}",
                                          text="'Total: ' & $string(total)")])
    r = flow.test([{"id": 7, "email": "ada@example.com", "total": 12.5}, {"id": 8, "email": "a\nb@example.com"}])
    assert r.last == [{"id": 7, "email": "ada@example.com", "total": 12.5}]
    assert [d.error.type for d in r.dead_letters] == ["FatalError"]
    assert "line break" in r.dead_letters[0].error.message
    assert r.effects["send"] == [{"host": "127.0.0.1", "port": port, "from": "Shop <shop@example.com>",
                                  "to": "ada@example.com", "cc": "boss@example.com",
                                  "recipients": ["ada@example.com", "boss@example.com"], "subject": "Order 7",
                                  "text": "Total: 12.5\n"}]
