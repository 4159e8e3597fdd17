"""Helpers for testing your own flows: a real HTTP target to point ``http.request`` steps at.

``flow.test(sample)`` (a :class:`TestResult`) runs a flow in memory on sample rows. What a flow
does to an outside API is better tested against a real server than a mock, so this module starts
one on 127.0.0.1 that records what it receives and can play an outage::

    from flownb.testing import HttpTarget

    with HttpTarget(fail_first=3, status=503, retry_after=0) as crm:
        flow = flownb.Flow(name="push", trigger=..., steps=[
            flownb.step("push", "http.request", method="POST", url=f"{crm.url}/contacts")])
        result = flow.test(sample, live=True)   # live: really send (flow.test is dry by default)
    assert [r.json for r in crm.received] == result.outputs["push"] ...
    assert crm.refused == 3

Answers: during the outage (the first ``fail_first`` requests, and every request within
``outage`` seconds of the first one) ``status`` with an optional ``Retry-After``; then ``answer``
(a JSON body, 200 unless ``answer_status``), or the request's own JSON echoed when ``answer`` is
None. Requests during the outage are counted in :attr:`HttpTarget.refused`, not recorded.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Self
from urllib.parse import parse_qsl, urlsplit

from .runtime.local.flow_test import TestResult

__all__ = ["HttpTarget", "Received", "TestResult"]


@dataclass(frozen=True)
class Received:
    """One request the target accepted."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # names in lower case
    body: bytes = field(repr=False)

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


class HttpTarget:
    """A threaded HTTP/1.1 server on 127.0.0.1 (a free port) that records requests; a context manager."""

    def __init__(self, *, fail_first: int = 0, outage: float = 0.0, status: int = 503,
                 retry_after: float | None = None, answer: Any = None, answer_status: int = 200):
        if fail_first < 0 or outage < 0:
            raise ValueError("fail_first and outage must be >= 0")
        self.fail_first, self.outage, self.status = fail_first, outage, status
        self.retry_after, self.answer, self.answer_status = retry_after, answer, answer_status
        self.received: list[Received] = []
        self.refused = 0
        self._seen = 0
        self._first: float | None = None
        self._lock = threading.Lock()
        self._server: http.server.ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the target is not running: use it as `with HttpTarget() as target:`")
        host, port = self._server.server_address[:2]
        assert isinstance(host, str)  # an AF_INET server's address is (host, port)
        return f"http://{host}:{port}"

    def start(self) -> Self:
        server = _Server(("127.0.0.1", 0), _Handler)
        server.target = self
        threading.Thread(target=server.serve_forever, name="flownb-http-target", daemon=True).start()
        self._server = server
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _decide(self, request: Received) -> tuple[int, dict[str, str], bytes]:
        with self._lock:
            now = time.monotonic()
            self._first = self._first if self._first is not None else now
            self._seen += 1
            down = self._seen <= self.fail_first or now - self._first < self.outage
            if down:
                self.refused += 1
            else:
                self.received.append(request)
        if down:
            headers = {} if self.retry_after is None else {"Retry-After": f"{self.retry_after:g}"}
            return self.status, headers, b'{"error": "unavailable (flownb.testing.HttpTarget outage)"}'
        body = request.body if self.answer is None and request.body else json.dumps(self.answer).encode()
        return self.answer_status, {}, body


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    target: HttpTarget

    def handle_error(self, request, client_address) -> None:  # a client that gave up closed its socket
        pass


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, *args: object) -> None:
        pass

    def _handle(self) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        request = Received(self.command, parts.path, dict(parse_qsl(parts.query)),
                           {k.lower(): v for k, v in self.headers.items()},
                           self.rfile.read(length) if length else b"")
        status, headers, body = self.server.target._decide(request)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle
