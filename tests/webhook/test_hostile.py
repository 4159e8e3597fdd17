"""The hostile-input suite: every case against a real uvicorn server on 127.0.0.1, on RabbitMQ and on
the embedded runtime, and against a real Jupyter server with the jupyter_flownb extension (the third
door into a flow, same pipeline). Each case gets its status, the server stays up, a rejected request
queues nothing, an accepted one is queued exactly once (counted at the first queue)."""

from __future__ import annotations

import os
import secrets
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx
import pytest

from flownb.webhook.app import Hook, create_app
from flownb.webhook.parse import sign
from flownb.webhook.server import webhook_config

from .backends import BACKENDS, Backend
from .conftest import ServerThread, make_flow

pytestmark = [pytest.mark.integration]

MAX_BODY = 4096


@dataclass
class Env:
    url: str
    token: str
    secret: str
    plain: str   # flow without signature
    signed: str  # flow with HMAC
    health: str = ""  # a URL that answers 200 while the server is up

    @property
    def prefix(self) -> str:
        """The path before /hooks ("" or e.g. "/flownb")."""
        return urlsplit(self.url).path


@dataclass
class Case:
    name: str
    send: Callable[[httpx.Client, Env], httpx.Response]
    status: int
    check: Callable[[dict], None] | None = None   # on the queued body, for 202
    position: int | None = None  # a 400 for malformed JSON says where (orjson's offset); others say nothing
    queued: int = field(init=False)

    def __post_init__(self) -> None:
        self.queued = 1 if self.status == 202 else 0


def post(path_flow: str = "plain", *, token: str | None = None, content: bytes | None = None,
         ctype: str | None = "application/json", headers: dict | None = None, query: str = "",
         method: str = "POST", sig: Callable[[Env, bytes], str] | None = None):
    def send(client: httpx.Client, env: Env) -> httpx.Response:
        flow = getattr(env, path_flow) if path_flow in ("plain", "signed") else path_flow
        h = dict(headers or {})
        if ctype is not None:
            h["Content-Type"] = ctype
        if sig is not None:
            h["X-Flownb-Signature"] = sig(env, content or b"")
        url = f"{env.url}/hooks/{flow}/{env.token if token is None else token}{query}"
        return client.request(method, url, content=content, headers=h)
    return send


def eq(expected: dict) -> Callable[[dict], None]:
    def check(body: dict) -> None:
        got = {k: v for k, v in body.items() if not k.startswith("_")}
        assert got == expected
    return check


def at_limit(client: httpx.Client, env: Env, over: int) -> httpx.Response:
    """A text body sized so that it and the headers the server copies into ``_headers`` (exactly the
    ones sent: httpx's defaults are dropped) are ``MAX_BODY + over`` bytes."""
    url = f"{env.url}/hooks/{env.plain}/{env.token}"
    n = MAX_BODY
    for _ in range(5):  # the Content-Length digits depend on n
        req = client.build_request("POST", url, content=b"x" * n, headers={"Content-Type": "text/plain"})
        for h in ("accept", "accept-encoding", "user-agent", "connection"):
            req.headers.pop(h, None)
        headers = sum(len(k) + len(v) for k, v in req.headers.items())
        n = MAX_BODY + over - headers
    req = client.build_request("POST", url, content=b"x" * n, headers={"Content-Type": "text/plain"})
    for h in ("accept", "accept-encoding", "user-agent", "connection"):
        req.headers.pop(h, None)
    assert n + sum(len(k) + len(v) for k, v in req.headers.items()) == MAX_BODY + over
    return client.send(req)


def nested(n: int) -> bytes:
    return b'{"a":' * n + b"1" + b"}" * n


def _chunks(total: int):
    for _ in range(total // 1024):
        yield b"x" * 1024


#: every header docs/webhook.md says is dropped from ``_headers``: the named ones, and a name containing
#: token, secret, signature, password, api-key or apikey (any case)
DROPPED_HEADERS = {"Authorization": "Bearer s3cret", "Proxy-Authorization": "Basic cHg6cHc=",
                   "Cookie": "sid=1", "Set-Cookie": "sid=2", "X-Api-Key": "k1", "X-Api-Token": "t",
                   "X-Flownb-Signature": "t=1,v1=00", "X-Vendor-Token-Id": "t2", "X-Client-SECRET": "s",
                   "X-Hub-Signature-256": "sha256=00", "X-Db-Password": "pw", "X-Partner-Api-Key": "k2",
                   "X-Apikey": "k3"}


def _headers_check(body: dict) -> None:
    h = body["_headers"]
    # exactly what the client sent minus the dropped ones (httpx's own headers included)
    assert set(h) == {"host", "accept", "accept-encoding", "connection", "user-agent", "content-type",
                      "content-length", "x-request-id", "x-keep"}, h
    assert (h["x-request-id"], h["x-keep"]) == ("abc-123", "kept")
    assert body["_query"] == {"source": "shop", "tag": ["a", "b"]}


CASES = [
    Case("valid json object", post(content=b'{"order": 1, "items": [1, 2]}'), 202, eq({"order": 1, "items": [1, 2]})),
    Case("truncated json", post(content=b'{"order": 1, "items": [1,'), 400, position=25),
    Case("invalid json (unquoted key)", post(content=b"{order: 1}"), 400, position=1),
    Case("trailing garbage after json", post(content=b'{"a": 1} {"b": 2}'), 400, position=9),
    # orjson reports offset 0 for invalid UTF-8 (the bad byte is at 7): what the server says today
    Case("invalid utf-8 in json", post(content=b'{"a": "\xff\xfe"}'), 400, position=0),
    Case("lone surrogate escape", post(content=b'{"a": "\\ud800"}'), 400, position=7),
    Case("NaN is not json", post(content=b'{"a": NaN}'), 400, position=6),
    Case("number overflowing a double", post(content=b'{"a": 1e999}'), 400, position=6),
    Case("odd but valid unicode", post(content='{"e": "😀\u200b\u202eabc\u0301", "n": "\\u0000"}'.encode()),
         202, eq({"e": "😀\u200b\u202eabc\u0301", "n": "\x00"})),
    Case("duplicate keys keep the last", post(content=b'{"a": 1, "a": 2}'), 202, eq({"a": 2})),
    Case("deeply nested json", post(content=nested(600)), 400),
    Case("nesting past the parser's own limit", post(content=b"[" * 2000 + b"]" * 2000), 400, position=1025),
    Case("nesting just over max_depth", post(content=nested(65)), 400),
    Case("nesting at max_depth", post(content=nested(64)), 202),
    Case("json array kept under 'json'", post(content=b"[1, 2, 3]"), 202, eq({"json": [1, 2, 3]})),
    Case("empty json body", post(content=b""), 400),
    Case("empty body, no content type", post(content=b"", ctype=None), 202, eq({})),
    Case("body over max_body (content-length)", post(content=b'{"a": "' + b"x" * MAX_BODY + b'"}'), 413),
    Case("body over max_body (chunked)",
         lambda c, e: c.post(f"{e.url}/hooks/{e.plain}/{e.token}", content=_chunks(MAX_BODY * 4),
                             headers={"Content-Type": "text/plain"}), 413),
    # max_body counts what is stored: the body and the request headers copied into its _headers
    Case("body exactly max_body", lambda c, e: at_limit(c, e, 0), 202),
    Case("body plus copied headers one byte over max_body", lambda c, e: at_limit(c, e, 1), 413),
    Case("body within max_body, headers pushing it over",
         post(content=b"x" * (MAX_BODY - 100), ctype="text/plain", headers={"x-pad": "p" * 200}), 413),
    Case("wrong token", post(token="wrong-token-wrong-token", content=b"{}"), 403),
    Case("token prefix only", lambda c, e: post(token=e.token[:-1], content=b"{}")(c, e), 403),
    Case("token with a suffix", lambda c, e: post(token=e.token + "x", content=b"{}")(c, e), 403),
    Case("unknown flow", post("no-such-flow", content=b"{}"), 404),
    Case("no token segment", lambda c, e: c.post(f"{e.url}/hooks/{e.plain}", content=b"{}"), 404),
    Case("GET not allowed", post(method="GET", content=None, ctype=None), 405),
    Case("PUT not allowed", post(method="PUT", content=b"{}"), 405),
    Case("unsupported content type", post(content=b"\x00\x01", ctype="application/octet-stream"), 415),
    Case("body without content type", post(content=b'{"a": 1}', ctype=None), 415),
    Case("json declared utf-16", post(content=b'{"a": 1}', ctype="application/json; charset=utf-16"), 415),
    Case("form body, repeated field", post(content=b"a=1&b=x+y&b=z", ctype="application/x-www-form-urlencoded"),
         202, eq({"a": "1", "b": ["x y", "z"]})),
    Case("text body", post(content="héllo\nworld".encode(), ctype="text/plain"), 202, eq({"raw": "héllo\nworld"})),
    Case("latin-1 text", post(content="héllo".encode("latin-1"), ctype="text/plain; charset=latin-1"),
         202, eq({"raw": "héllo"})),
    Case("text not in its charset", post(content=b"\xff\xfe\xfd", ctype="text/plain"), 400),
    Case("vendor +json type", post(content=b'{"a": 1}', ctype="application/vnd.x+json"), 202, eq({"a": 1})),
    Case("very long url", post(content=b"{}", query="?q=" + "a" * 9000), 414),
    Case("many headers", post(content=b"{}", headers={f"x-h{i}": "v" for i in range(150)}), 431),
    Case("headers over the total size limit", post(content=b"{}", headers={"x-big": "b" * 40_000}), 431),
    Case("few headers, together over the size limit",
         post(content=b"{}", headers={f"x-h{i}": "b" * 4000 for i in range(10)}), 431),
    Case("credentials dropped and query kept",
         post(content=b'{"_query": "spoof"}', query="?source=shop&tag=a&tag=b",
              headers={**DROPPED_HEADERS, "X-Request-Id": "abc-123", "X-Keep": "kept"}), 202, _headers_check),
    # -- signed flow --------------------------------------------------------------------------------
    Case("valid signature", post("signed", content=b'{"a": 1}', sig=lambda e, b: sign(e.secret, b)), 202,
         eq({"a": 1})),
    Case("missing signature", post("signed", content=b'{"a": 1}'), 401),
    Case("wrong signature", post("signed", content=b'{"a": 1}', sig=lambda e, b: sign("not-the-secret", b)), 401),
    Case("signature of another body", post("signed", content=b'{"a": 2}', sig=lambda e, b: sign(e.secret, b'{"a": 1}')),
         401),
    Case("valid signature replayed outside the window",
         post("signed", content=b'{"a": 1}', sig=lambda e, b: sign(e.secret, b, int(time.time()) - 600)), 401),
    Case("timestamp from the future", post("signed", content=b'{"a": 1}',
                                           sig=lambda e, b: sign(e.secret, b, int(time.time()) + 600)), 401),
    Case("malformed signature header", post("signed", content=b'{"a": 1}', sig=lambda e, b: "v1=abc"), 401),
    Case("rotated secret: one of two v1 matches",
         post("signed", content=b'{"a": 1}',
              sig=lambda e, b: sign(e.secret, b) + "," + sign("old", b).split(",")[1]), 202, eq({"a": 1})),
    Case("signed flow, wrong token, valid signature",
         post("signed", token="x" * 32, content=b"{}", sig=lambda e, b: sign(e.secret, b)), 403),
]


# the amqp backend queues into the real broker: its parameter carries the marker
BACKEND_MARKS = {"amqp": [pytest.mark.rabbitmq]}


@pytest.fixture(scope="module",
                params=[pytest.param(name, marks=BACKEND_MARKS.get(name, [])) for name in BACKENDS])
def served(request, tmp_path_factory):
    backend: Backend = BACKENDS[request.param](tmp_path_factory.mktemp("hostile"))
    tag = uuid.uuid4().hex[:8].upper()
    token, secret = secrets.token_urlsafe(24), secrets.token_hex(16)
    env_names = {f"WH_TOKEN_{tag}": token, f"WH_SECRET_{tag}": secret}
    os.environ.update(env_names)
    plain = make_flow(token_env=f"WH_TOKEN_{tag}", max_body=MAX_BODY, tolerance="5m")
    signed = make_flow(token_env=f"WH_TOKEN_{tag}", hmac_secret_env=f"WH_SECRET_{tag}", tolerance="5m")
    try:
        if request.param == "jupyter":  # the extension's server reads nothing from its environment
            server = backend.serve([plain, signed])
            try:
                env = Env(f"{server.url}/flownb", token, secret, plain.name, signed.name, f"{server.url}/api")
                yield backend, env, server, {plain.name: plain, signed.name: signed}
            finally:
                server.stop()
            return
        hooks = [Hook.from_env(f.name, webhook_config(f), backend.ingest(f)) for f in (plain, signed)]
        with ServerThread(create_app(hooks)) as server:
            yield backend, Env(server.url, token, secret, plain.name, signed.name, f"{server.url}/healthz"), \
                server, {plain.name: plain, signed.name: signed}
    finally:
        for k in env_names:
            os.environ.pop(k, None)
        backend.cleanup([plain, signed])


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_case(served, case: Case):
    backend, env, server, flows = served
    with httpx.Client(timeout=20) as client:
        resp = case.send(client, env)
        assert resp.status_code == case.status, resp.text
        assert resp.headers["content-type"].startswith("application/json")
        payload = resp.json()
        queued = {name: backend.drain(flow) for name, flow in flows.items()}
        all_msgs = [m for msgs in queued.values() for m in msgs]
        assert len(all_msgs) == case.queued, [m.body for m in all_msgs]
        if case.status == 202:
            assert all_msgs[0].id == payload["id"]
            if case.check:
                case.check(all_msgs[0].body)
        else:
            assert payload["status"] == case.status and payload["error"]
        if case.status == 405:
            assert resp.headers["allow"] == "POST"
        if case.status == 400:  # a JSON syntax error says exactly where; no other 400 has a position
            assert payload.get("position") == case.position, payload
        assert client.get(env.health).status_code == 200


def test_malformed_json_reports_position(served):
    backend, env, server, flows = served
    resp = httpx.post(f"{env.url}/hooks/{env.plain}/{env.token}", content=b'{"a": 1,, "b": 2}',
                      headers={"Content-Type": "application/json"})
    assert resp.status_code == 400
    assert resp.json()["position"] == 8
    assert "position 8" in resp.json()["error"]


def test_over_limit_is_refused_while_streaming(served):
    """The 413 comes back while the client is still sending: the server does not read it all first."""
    backend, env, server, flows = served
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(f"POST {env.prefix}/hooks/{env.plain}/{env.token} HTTP/1.1\r\nHost: x\r\n"
                  f"Content-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
        chunk = b"x" * 1024
        for _ in range(MAX_BODY // 1024 + 2):
            s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        # the request is not finished (no terminating chunk), yet the answer is there
        answer = s.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert all(not backend.drain(f) for f in flows.values())


def test_declared_length_over_limit_is_refused_before_the_body(served):
    backend, env, server, flows = served
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(f"POST {env.prefix}/hooks/{env.plain}/{env.token} HTTP/1.1\r\nHost: x\r\n"
                  f"Content-Type: text/plain\r\nContent-Length: {10 ** 9}\r\n\r\n".encode())
        answer = s.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    if isinstance(server, ServerThread):
        assert server.alive()
    else:  # the Jupyter server
        assert httpx.get(env.health, timeout=5).status_code == 200


def test_many_accepted_requests_each_queued_once(served):
    backend, env, server, flows = served
    with httpx.Client(timeout=20) as client:
        ids = [client.post(f"{env.url}/hooks/{env.plain}/{env.token}", json={"n": i}).json()["id"]
               for i in range(50)]
    msgs = backend.drain(flows[env.plain])
    assert sorted(m.id for m in msgs) == sorted(ids)
    assert sorted(m.body["n"] for m in msgs) == list(range(50))


def _raw_head_with(server_port: int, path: str, header_bytes: int) -> bytes:
    """Send a request head with one header of ``header_bytes`` bytes; what came back (b"": closed)."""
    with socket.create_connection(("127.0.0.1", server_port), timeout=20) as s:
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  f"Content-Length: 2\r\nX-Big: ".encode())
        chunk = b"b" * (1 << 16)
        sent = 0
        try:
            while sent < header_bytes:
                s.sendall(chunk)
                sent += len(chunk)
            s.sendall(b"\r\n\r\n{}")
        except OSError:  # the server answered and closed while we were still sending
            pass
        try:
            return s.recv(65536)
        except OSError:
            return b""


def test_one_16_mb_header_is_refused_and_nothing_is_stored(served):
    backend, env, server, flows = served
    answer = _raw_head_with(server.port, f"{env.prefix}/hooks/{env.plain}/{env.token}", 16 << 20)
    if isinstance(server, ServerThread):  # uvicorn: the head is bounded by the protocol (431, closed)
        assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
        assert server.alive()
    else:  # tornado (Jupyter) closes the connection at its max_header_size (64 KiB)
        assert answer == b"" or answer.startswith(b"HTTP/1.1 431"), answer[:200]
        assert httpx.get(env.health, timeout=5).status_code == 200
    assert all(not backend.drain(f) for f in flows.values())


def test_a_client_that_disconnects_mid_body_is_one_info_line(served, caplog):
    import logging
    backend, env, server, flows = served
    log_file = getattr(server, "log", None)
    start = os.path.getsize(log_file.name) if log_file is not None else 0
    caplog.set_level(logging.INFO)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(f"POST {env.prefix}/hooks/{env.plain}/{env.token} HTTP/1.1\r\nHost: x\r\n"
                  f"Content-Type: text/plain\r\nContent-Length: 1000\r\n\r\nonly part".encode())
        time.sleep(0.3)
    time.sleep(1.0)
    if isinstance(server, ServerThread):
        records = [r for r in caplog.records if r.levelno >= logging.INFO
                   and ("disconnect" in r.getMessage().lower() or r.levelno >= logging.ERROR)]
        assert [r.levelno for r in records] == [logging.INFO], [r.getMessage() for r in records]
        assert not any(r.exc_info for r in caplog.records)
    else:
        log_file.flush()
        with open(log_file.name) as f:
            f.seek(start)
            text = f.read()
        assert "Traceback" not in text and "[E " not in text, text
    assert all(not backend.drain(f) for f in flows.values())
    with httpx.Client(timeout=10) as client:
        assert client.get(env.health).status_code == 200
