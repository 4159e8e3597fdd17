"""http.request and http.poll against a real HTTP server on 127.0.0.1 started by these tests."""

from __future__ import annotations

import email.utils
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from flownb.components.http import retry_after_seconds
from flownb.errors import ConfigError, FatalError, RetryableError
from flownb.message import Message

pytestmark = pytest.mark.integration

EVENTS = [{"id": i, "ts": 100 + i // 2, "name": f"e{i}"} for i in range(1, 12)]  # ts repeats in pairs


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    calls: list[dict] = []

    def log_message(self, *args):  # keep test output quiet
        pass

    def _send(self, status: int, payload, headers: dict | None = None, ctype="application/json"):
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _handle(self):
        parts = urlsplit(self.path)
        q = {k: v[0] for k, v in parse_qs(parts.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        Handler.calls.append({"method": self.command, "path": parts.path, "query": q})
        route = parts.path.strip("/").split("/")
        if route[0] == "echo":
            return self._send(201, {"method": self.command, "path": parts.path, "query": q,
                                    "headers": {k.lower(): v for k, v in self.headers.items()},
                                    "body": raw.decode()}, {"ETag": '"v1"', "X-Other": "no"})
        if route[0] == "status":
            headers = {"Retry-After": q["retry_after"]} if "retry_after" in q else {}
            return self._send(int(route[1]), b"bad things happened: " + b"x" * 500, headers, "text/plain")
        if route[0] == "slow":
            time.sleep(float(q.get("delay", 2)))
            return self._send(200, {"ok": True})
        if route[0] == "redirect":  # /redirect/<status>?to=<path>: a redirect with that status
            return self._send(int(route[1]), b"", {"Location": q["to"]}, "text/plain")
        if route[0] == "text":
            return self._send(200, b"plain words", ctype="text/plain")
        if route[0] == "events":  # ?since=ts (inclusive), pages of 3 linked by rel=next
            since = int(q.get("since", 0))
            page = int(q.get("page", 0))
            rows = [e for e in EVENTS if e["ts"] >= since]
            chunk = rows[page * 3:(page + 1) * 3]
            headers = {}
            if (page + 1) * 3 < len(rows):
                headers["Link"] = f'</events?since={since}&page={page + 1}>; rel="next", </events>; rel="first"'
            return self._send(200, {"data": {"items": chunk}}, headers)
        if route[0] == "cursor-pages":  # next URL in the body
            page = int(q.get("page", 0))
            nxt = f"/cursor-pages?page={page + 1}" if page < 2 else None
            return self._send(200, {"results": [{"id": page * 10 + i} for i in range(2)], "next": nxt})
        return self._send(404, {"error": "no route"})

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle


class QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):  # a client that timed out closed its socket
        pass


@pytest.fixture(scope="module")
def server():
    srv = QuietServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there any more: connections are refused
    return port


def msg(body: dict) -> Message:
    return Message(body=body, flow="f", step="src")


# -- http.request -------------------------------------------------------------------------------

def test_post_sends_body_headers_token_and_idempotency_key(server, step_runner, monkeypatch):
    monkeypatch.setenv("FLOWNB_TEST_TOKEN", "s3cret")
    runner = step_runner("http.request", {
        "method": "POST", "url": "{{ base }}/echo/{customer.id}", "token_env": "FLOWNB_TEST_TOKEN",
        "headers": {"X-Tenant": "{tenant}"}, "query": {"src": "flownb", "n": "{n}"}},
        parameters={"base": server})
    m = msg({"customer": {"id": "a b/c"}, "tenant": "acme", "n": 3})
    out = runner.run(m)
    assert out.ok, out.error
    got = out.outputs[0].body
    assert got["method"] == "POST"
    assert got["path"] == "/echo/a%20b%2Fc"
    assert got["query"] == {"src": "flownb", "n": "3"}
    assert got["headers"]["authorization"] == "Bearer s3cret"
    assert got["headers"]["x-tenant"] == "acme"
    assert got["headers"]["idempotency-key"] == m.id
    assert json.loads(got["body"]) == m.body


@pytest.mark.parametrize("mode", ["response", "merge", "input"])
def test_output_modes(server, step_runner, mode):
    runner = step_runner("http.request", {"method": "PUT", "url": f"{server}/echo", "output": mode,
                                          "output_field": "crm", "body": "payload"})
    out = runner.run(msg({"payload": {"x": 1}, "keep": True}))
    body = out.outputs[0].body
    if mode == "input":
        assert body == {"payload": {"x": 1}, "keep": True}
        return
    resp = body if mode == "response" else body["crm"]
    assert resp["status"] == 201
    assert resp["headers"] == {"content-type": "application/json", "etag": '"v1"'}
    assert json.loads(resp["body"]["body"]) == {"x": 1}  # body expression sent only the payload
    if mode == "merge":
        assert body["keep"] is True


def test_form_body_is_url_encoded(server, step_runner):
    """docs/components.md: body_format form sends the body URL-encoded; a list is the field repeated (as
    the webhook reads a repeated field back as a list)."""
    runner = step_runner("http.request", {"method": "POST", "url": f"{server}/echo", "body_format": "form"})
    got = runner.run(msg({"name": "Ann Lee", "q": "a&b=c", "tags": ["x", "y"], "n": 3, "ok": True,
                          "none": None, "obj": {"k": 1}})).outputs[0].body
    assert got["headers"]["content-type"] == "application/x-www-form-urlencoded"
    # values as JSON text, never Python's repr (it sent "['x', 'y']", "True", "None")
    assert parse_qs(got["body"], keep_blank_values=True) == {
        "name": ["Ann Lee"], "q": ["a&b=c"], "tags": ["x", "y"], "n": ["3"], "ok": ["true"], "none": [""],
        "obj": ['{"k":1}']}


@pytest.mark.parametrize(("status", "method"), [(301, "GET"), (302, "GET"), (303, "GET"), (307, "POST"),
                                                (308, "POST")])
def test_redirects_are_followed(server, step_runner, status, method):
    """docs/components.md: redirects are followed; 307/308 keep the method and body (303 turns a POST
    into a GET, as 301/302 do in every HTTP client)."""
    runner = step_runner("http.request", {"method": "POST", "url": f"{server}/redirect/{status}?to=/echo/moved",
                                          "output": "response"})
    out = runner.run(msg({"a": 1}))
    assert out.ok, out.error
    resp = out.outputs[0].body
    assert resp["status"] == 201 and resp["body"]["path"] == "/echo/moved"
    assert resp["body"]["method"] == method
    assert (json.loads(resp["body"]["body"]) if method == "POST" else resp["body"]["body"]) == \
        ({"a": 1} if method == "POST" else "")
    calls = [c["path"] for c in Handler.calls[-2:]]
    assert calls == [f"/redirect/{status}", "/echo/moved"]


def test_text_response_and_get_without_body(server, step_runner):
    runner = step_runner("http.request", {"method": "GET", "url": f"{server}/text"})
    assert runner.run(msg({"a": 1})).outputs[0].body == {"body": "plain words"}
    echo = step_runner("http.request", {"method": "GET", "url": f"{server}/echo"})
    assert echo.run(msg({"a": 1})).outputs[0].body["body"] == ""


def test_429_retry_after_seconds_and_http_date(server, step_runner):
    runner = step_runner("http.request", {"url": f"{server}/status/429?retry_after=7"})
    out = runner.run(msg({}))
    assert out.retry_after == 7.0 and out.error.retryable and "HTTP 429" in out.error.message
    when = email.utils.formatdate(time.time() + 120, usegmt=True)
    assert 100 < retry_after_seconds(when) <= 120
    assert retry_after_seconds("garbage") is None


def test_503_is_retried_with_backoff_then_dead_lettered(server, step_runner):
    runner = step_runner("http.request", {"url": f"{server}/status/503"},
                         retry={"max_attempts": 2, "initial": "3s"})
    m = msg({})
    first = runner.run(m)
    assert first.retry_after == 3.0 and "HTTP 503" in first.error.message
    m.attempt = 2
    last = runner.run(m)
    assert last.dead and last.error.retryable


def test_timeout_is_retryable(server, step_runner):
    runner = step_runner("http.request", {"method": "GET", "url": f"{server}/slow?delay=1.5",
                                          "timeout": "200ms"})
    out = runner.run(msg({}))
    assert out.retry_after is not None and "timed out" in out.error.message


def test_refused_connection_is_retryable(step_runner):
    runner = step_runner("http.request", {"url": f"http://127.0.0.1:{closed_port()}/x"})
    out = runner.run(msg({}))
    assert out.retry_after is not None and "ConnectError" in out.error.message


def test_400_is_fatal_with_status_and_excerpt(server, step_runner):
    runner = step_runner("http.request", {"url": f"{server}/status/400"})
    out = runner.run(msg({}))
    assert out.dead and not out.error.retryable
    assert "HTTP 400" in out.error.message and "bad things happened" in out.error.message
    assert len(out.error.message) < 400  # an excerpt, not the whole body


def test_missing_placeholder_field_is_fatal(server, step_runner):
    runner = step_runner("http.request", {"url": f"{server}/echo/{{id}}"})
    out = runner.run(msg({"other": 1}))
    assert out.dead and "no field 'id'" in out.error.message


def test_request_config_errors(flow_factory):
    with pytest.raises(ConfigError, match="exactly one of 'url' or 'url_expr'"):
        flow_factory(steps=[("http.request", {})]).validate_components()
    with pytest.raises(ConfigError, match="must start with http"):
        flow_factory(steps=[("http.request", {"url": "ftp://x"})]).validate_components()
    with pytest.raises(ConfigError, match="timeout"):
        flow_factory(steps=[("http.request", {"url": "http://x", "timeout": "soon"})]).validate_components()


# -- http.poll ----------------------------------------------------------------------------------

def test_poll_follows_link_header_and_keeps_an_inclusive_cursor_exact(server, trigger_runner):
    Handler.calls.clear()
    runner = trigger_runner("http.poll", {"url": f"{server}/events", "items": "data.items",
                                          "cursor_param": "since", "cursor_field": "ts", "key_field": "id"})
    msgs, _, state = runner.poll({})
    assert [m.body["id"] for m in msgs] == list(range(1, 12))
    assert len(Handler.calls) == 4  # 11 items, pages of 3
    assert state == {"cursor": 105, "seen": [10, 11]}
    # the API's "since" is inclusive: the items with ts 105 come back but are not emitted again
    msgs, _, state = runner.poll(state)
    assert msgs == [] and state["cursor"] == 105
    EVENTS.append({"id": 12, "ts": 105, "name": "late"})
    try:
        msgs, _, state = runner.poll(state)
    finally:
        EVENTS.pop()
    assert [m.body["id"] for m in msgs] == [12] and state["seen"] == [10, 11, 12]


def test_poll_next_expression_and_max_pages_backlog(server, trigger_runner):
    runner = trigger_runner("http.poll", {"url": f"{server}/cursor-pages", "items": "results",
                                          "next": "next", "max_pages": 2, "interval": "5m"})
    msgs, _, state = runner.poll({})
    assert [m.body["id"] for m in msgs] == [0, 1, 10, 11]
    assert runner.next_delay(state) == 0.0  # more pages were waiting
    runner2 = trigger_runner("http.poll", {"url": f"{server}/cursor-pages", "items": "results",
                                           "next": "next", "interval": "5m"})
    msgs, _, state = runner2.poll({})
    assert [m.body["id"] for m in msgs] == [0, 1, 10, 11, 20, 21]
    assert runner2.next_delay(state) == 300.0


def test_poll_errors_map_to_retryable_and_fatal(server, trigger_runner):
    with pytest.raises(RetryableError) as err:
        trigger_runner("http.poll", {"url": f"{server}/status/429?retry_after=3"}).poll({})
    assert err.value.after == 3.0
    with pytest.raises(RetryableError):
        trigger_runner("http.poll", {"url": f"http://127.0.0.1:{closed_port()}/"}).poll({})
    with pytest.raises(FatalError, match="HTTP 404"):
        trigger_runner("http.poll", {"url": f"{server}/nope"}).poll({})
    with pytest.raises(FatalError, match="list of objects"):
        trigger_runner("http.poll", {"url": f"{server}/cursor-pages", "items": "next"}).poll({})


def test_poll_config_errors(flow_factory):
    with pytest.raises(ConfigError, match="both 'cursor_param' and 'cursor_field'"):
        flow_factory(("http.poll", {"url": "http://x", "cursor_param": "since"})).validate_components()


# -- JSONata (flownb.rules) ---------------------------------------------------------------------

def test_jsonata_url_expr_and_body(server, step_runner):
    runner = step_runner("http.request", {
        "url_expr": f"'{server}/echo/' & $lowercase(customer.name)",
        "body": "{ 'total': $sum(items.(qty * price)), 'skus': items.sku }", "output": "response"})
    out = runner.run(msg({"customer": {"name": "ACME"},
                          "items": [{"sku": "a", "qty": 2, "price": 1.5}, {"sku": "b", "qty": 1, "price": 4}]}))
    assert out.ok, out.error
    sent = out.outputs[0].body["body"]
    assert sent["path"] == "/echo/acme"
    assert json.loads(sent["body"]) == {"total": 7, "skus": ["a", "b"]}


def test_jsonata_items_and_next_in_poll(server, trigger_runner):
    runner = trigger_runner("http.poll", {"url": f"{server}/cursor-pages", "items": "results[id % 10 = 1]",
                                          "next": "next ? next : null"})
    msgs, _, _ = runner.poll({})
    assert [m.body["id"] for m in msgs] == [1, 11, 21]


def test_jsonata_compile_error_at_validation(flow_factory):
    from flownb.errors import ExpressionError
    with pytest.raises(ExpressionError) as err:
        flow_factory(steps=[("http.request", {"url": "http://x", "body": "{ 'a': }"})]).validate_components()
    assert err.value.field == "config.body" and err.value.step == "s0"


def test_poll_batch_size_goes_on_from_the_next_page_across_polls_and_a_restart(server, trigger_runner):
    """A listing longer than batch_size is read one batch per poll: the next page's URL is in the
    committed state, so a fresh runner (a restart) goes on there; each item comes once, in order."""
    cfg = {"url": f"{server}/events", "items": "data.items", "cursor_param": "since", "cursor_field": "ts",
           "key_field": "id", "batch_size": 4, "interval": "5m"}
    runner = trigger_runner("http.poll", cfg)
    Handler.calls.clear()
    msgs, _, state = runner.poll({})
    assert [m.body["id"] for m in msgs] == [1, 2, 3, 4, 5, 6]  # pages of 3: stops after the page reaching 4
    assert len(Handler.calls) == 2 and state["next_url"] and runner.next_delay(state) == 0.0
    got = [m.body["id"] for m in msgs]
    for _ in range(5):  # a restart: a fresh runner with the committed state
        runner = trigger_runner("http.poll", cfg)
        msgs, _, state = runner.poll(state)
        got += [m.body["id"] for m in msgs]
        if "next_url" not in state:
            break
    assert got == list(range(1, 12))
    assert state == {"cursor": 105, "seen": [10, 11]} and runner.next_delay(state) == 300.0
