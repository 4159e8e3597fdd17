"""Every secret value a flow reads is masked from stored errors, logs, stdout/stderr and ``flownb dlq``
output (flownb.secrets.Redactor; docs/secrets.md). The end-to-end tests run ``flownb run`` for real
against a local HTTP server that answers 400 echoing the request's ``Authorization`` header."""

from __future__ import annotations

import base64
import json
import logging
import os
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest

import flownb
from flownb.runtime.core import ErrorInfo
from flownb.secrets import (
    MIN_SECRET_LEN,
    RedactingFilter,
    Redactor,
    activate,
    encodings,
    install_log_redaction,
    redact_notebook,
    required_env,
)
from flownb.testing import HttpTarget

FLOWNB = str(Path(sys.executable).parent / "flownb")
VAR = "FLOWNB_TEST_ECHO_TOKEN"
MASKED = f"[REDACTED:{VAR}]"


class EchoAuthTarget(HttpTarget):
    """Answers 400 with a body echoing the request's Authorization header (a careless server)."""

    def _decide(self, request):
        with self._lock:
            self.received.append(request)
        body = json.dumps({"error": "invalid credentials",
                           "echo": {"authorization": request.headers.get("authorization")}}).encode()
        return 400, {}, body


def new_token() -> str:
    return f"Tok3n-{uuid.uuid4().hex}/Zz+x"


def forms(token: str) -> list[str]:
    """What must not appear anywhere: the value and its encodings."""
    return [token, quote(token, safe=""), base64.b64encode(token.encode()).decode()]


def echo_flow(name: str, url: str) -> flownb.Flow:
    return flownb.Flow(
        name=name,
        trigger=flownb.step("src", "python.poll", source="def p(s, c):\n    return [{'a': 1}]\n",
                            function="p"),
        steps=[flownb.step("push", "http.request", method="POST", url=url + "/contacts", token_env=VAR)])


def assert_clean(token: str, blob: bytes | str, where: str) -> None:
    data = blob if isinstance(blob, bytes) else blob.encode()
    for f in forms(token):
        assert f.encode() not in data, f"{where} holds the secret ({f[:12]}…)"


def state_bytes(state: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(state.rglob("*")) if p.is_file())


def run(*args: str, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([FLOWNB, *args], capture_output=True, text=True, timeout=180, env=env, cwd=cwd)


@pytest.fixture
def env():
    e = dict(os.environ)
    e.update({VAR: new_token(), "COLUMNS": "1000"})  # wide tables: nothing folded across lines
    return e


# -- the rule -------------------------------------------------------------------------------------

def test_values_and_their_encodings_are_masked_with_the_variable_name():
    token = "s3cr3t/Tok+en=x"
    url = "postgresql://app:p%40ss-w0rd@db:5432/shop"
    r = Redactor({"CRM_TOKEN": token, "DB_URL": url, "SHORT": "abc", "EMPTY": ""})
    assert r.names == ["CRM_TOKEN", "DB_URL"]  # empty and < 4 characters: ignored
    assert MIN_SECRET_LEN == 4 and r.redact("abc EMPTY") == "abc EMPTY"
    cases = {
        f"Authorization: Bearer {token}": "Authorization: Bearer [REDACTED:CRM_TOKEN]",
        f"GET /x?t={quote(token, safe='')}": "GET /x?t=[REDACTED:CRM_TOKEN]",
        f"{json.dumps({'t': token})}": '{"t": "[REDACTED:CRM_TOKEN]"}',
        f"url={url}": "url=[REDACTED:DB_URL]",
        "password p@ss-w0rd or p%40ss-w0rd": "password [REDACTED:DB_URL] or [REDACTED:DB_URL]",
        "Basic " + base64.b64encode(b"app:p@ss-w0rd").decode(): "Basic [REDACTED:DB_URL]",
        "b64 " + base64.b64encode(token.encode()).decode(): "b64 [REDACTED:CRM_TOKEN]",
    }
    for text, want in cases.items():
        assert r.redact(text) == want
    assert r.redact(r.redact(f"x {token}")) == "x [REDACTED:CRM_TOKEN]"  # idempotent
    assert r.redact_obj({token: [token, 1, {"k": token}]}) == {
        "[REDACTED:CRM_TOKEN]": ["[REDACTED:CRM_TOKEN]", 1, {"k": "[REDACTED:CRM_TOKEN]"}]}
    assert not Redactor() and Redactor().redact("anything") == "anything"
    assert all(len(f) >= MIN_SECRET_LEN for f in encodings("abcd"))


def test_redactor_from_flow_reads_the_variables_required_env_names(monkeypatch):
    flow = echo_flow("red-unit", "http://127.0.0.1:9")
    assert [v.name for v in required_env(flow)] == [VAR]
    token = new_token()
    r = Redactor.from_flow(flow, environ={VAR: token})
    assert r.redact(token) == MASKED
    monkeypatch.delenv(VAR, raising=False)
    assert not Redactor.from_flow(flow)  # unset: nothing to redact, nothing fails


def test_error_info_log_filter_and_streams(capsys):
    token = new_token()
    flow = echo_flow("red-unit", "http://127.0.0.1:9")
    logger = logging.getLogger("flownb.test.redaction")
    handler = logging.StreamHandler(sys.stderr)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        undo = install_log_redaction(flow, environ={VAR: token})
        try:
            try:
                raise ValueError(f"server said: Bearer {token}")
            except ValueError as exc:
                info = ErrorInfo.from_exception(exc, "push", 1, False)
                logger.warning("failed: %s", exc, exc_info=True)
            print(f"summary {token}")
        finally:
            undo()
        out, err = capsys.readouterr()
        assert token not in info.message and token not in info.traceback and MASKED in info.message
        assert token not in out and "summary " + MASKED in out
        assert token not in err and f"failed: server said: Bearer {MASKED}" in err
        assert "Traceback" in err  # the exception text is logged, redacted
        # undone: nothing is redacted any more (in-process callers and tests are left alone)
        try:
            raise ValueError(token)
        except ValueError as exc:
            assert ErrorInfo.from_exception(exc, "push", 1, False).message == token
        assert not any(isinstance(f, RedactingFilter) for h in root.handlers for f in h.filters)
    finally:
        root.removeHandler(handler)


def test_an_explicit_redactor_and_the_active_ones_combine():
    a, b = new_token(), new_token()
    undo = activate(Redactor({"A": a}))
    try:
        try:
            raise RuntimeError(f"{a} {b}")
        except RuntimeError as exc:
            info = ErrorInfo.from_exception(exc, "s", 1, True, redactor=Redactor({"B": b}))
    finally:
        undo()
    assert info.message == "[REDACTED:A] [REDACTED:B]"


def test_notebook_keys_values_and_every_mime_type():
    token = new_token()
    r = Redactor({VAR: token})
    png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
    nb = {"metadata": {"papermill": {"parameters": {"t": token}}},
          "cells": [{"cell_type": "code", "source": f"t = '{token}'", "metadata": {},
                     "outputs": [
                         {"output_type": "stream", "name": "stdout", "text": [f"token {token}\n"]},
                         {"output_type": "display_data", "metadata": {},
                          "data": {"application/json": {token: 1, "nested": {token: [token]}},
                                   "text/plain": f"{{'{token}': 1}}",
                                   "text/html": f"<td>{token.replace('+', '&#43;')}</td><b>{token}</b>",
                                   "image/svg+xml": f"<svg><text>{token}</text></svg>",
                                   "image/png": png}},
                         {"output_type": "error", "ename": "ValueError", "evalue": f"bad {token}",
                          "traceback": [f"ValueError: bad {token}"]}]}]}
    out = redact_notebook(nb, r, shapes=False)
    assert token not in json.dumps(out)
    data = out["cells"][0]["outputs"][1]["data"]
    assert data["application/json"] == {MASKED: 1, "nested": {MASKED: [MASKED]}}
    assert data["image/png"] == png
    assert out["cells"][0]["source"] == f"t = '{MASKED}'"


# -- for real: flownb run, flownb dlq ---------------------------------------------------------------

def test_flownb_run_keeps_an_echoed_token_out_of_state_logs_and_dlq(tmp_path, env):
    token = env[VAR]
    state = tmp_path / "state"
    with EchoAuthTarget() as target:
        spec = echo_flow("red-run", target.url).save(tmp_path / "flow.yaml")
        r = run("-v", "run", str(spec), "--until-idle", "--state-dir", str(state), env=env, cwd=tmp_path)
        assert r.returncode == 1, r.stderr  # the run dead-lettered the message
        # the server did get the token and echoed it: the leak was there to be stopped
        assert target.received and target.received[0].headers["authorization"] == f"Bearer {token}"
    assert "dead letter(s) stored" in r.stdout
    assert_clean(token, r.stdout, "stdout of flownb run")
    assert_clean(token, r.stderr, "stderr (the log) of flownb run")
    assert MASKED in r.stderr  # the dead-letter warning, with the echoed header masked
    assert_clean(token, state_bytes(state), "the state directory")
    shown = run("dlq", "show", str(spec), "--state-dir", str(state), "--id", "1", env=env, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    error = json.loads(shown.stdout)["error"]
    assert error["type"] == "FatalError" and "HTTP 400" in error["message"]
    assert f"Bearer {MASKED}" in error["message"] and MASKED in error["traceback"]
    listed = run("dlq", "list", str(spec), "--state-dir", str(state), env=env, cwd=tmp_path)
    assert listed.returncode == 0 and "1 dead letter(s)" in listed.stdout
    assert MASKED in listed.stdout  # the mask is not taken for console markup
    for out in (shown, listed):
        assert_clean(token, out.stdout + out.stderr, "flownb dlq output")


def test_dlq_display_masks_dead_letters_stored_unredacted(tmp_path, env, monkeypatch):
    """A dead letter stored before errors were redacted (or by code that did not set a redactor up)
    holds the token; ``flownb dlq list/show`` mask it when displaying, and replay keeps the message."""
    from flownb.runtime.local import LocalRuntime
    token = env[VAR]
    monkeypatch.setenv(VAR, token)
    state = tmp_path / "state"
    with EchoAuthTarget() as target:
        flow = echo_flow("red-old", target.url)
        spec = flow.save(tmp_path / "flow.yaml")
        rt = LocalRuntime(flow, state)
        try:
            rt.poll_backlog()
            rt.drain()
        finally:
            rt.close()
    assert token.encode() in state_bytes(state)  # stored as it was before this change
    shown = run("dlq", "show", str(spec), "--state-dir", str(state), "--id", "1", env=env, cwd=tmp_path)
    listed = run("dlq", "list", str(spec), "--state-dir", str(state), env=env, cwd=tmp_path)
    for out in (shown, listed):
        assert out.returncode == 0, out.stderr
        assert_clean(token, out.stdout + out.stderr, "flownb dlq output")
    assert f"Bearer {MASKED}" in json.loads(shown.stdout)["error"]["message"]
    # without the variable in the environment, the token shape after 'Bearer' is still masked
    bare = {k: v for k, v in env.items() if k != VAR}
    shown = run("dlq", "show", str(spec), "--state-dir", str(state), "--id", "1", env=bare, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert token not in shown.stdout and "Bearer ***" in json.loads(shown.stdout)["error"]["message"]
    assert json.loads(shown.stdout)["message"]["body"] == {"a": 1}
