"""Real servers for the webhook tests: uvicorn on a free 127.0.0.1 port, RabbitMQ, a TCP proxy."""

from __future__ import annotations

import asyncio
import secrets
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pika
import pytest
import uvicorn

from flownb.flow import Flow, step
from flownb.message import Message
from flownb.runtime.amqp import names
from flownb.runtime.amqp.topology import retry_levels
from flownb.webhook.app import Hook, create_app
from flownb.webhook.server import uvicorn_config, webhook_config
from tests.processes import free_port

BROKER = "amqp://guest:guest@127.0.0.1:5672/"




def start_cli(args: list[str], env: dict, port: int, *, within: float = 60) -> subprocess.Popen:
    """``python -m flownb.cli ARGS --port PORT`` in a real process, returned once its /healthz answers 200
    (output on its stdout pipe; fails the test when it exits or is not up ``within`` seconds)."""
    proc = subprocess.Popen([sys.executable, "-m", "flownb.cli", *args, "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + within
    while True:
        assert proc.poll() is None, proc.stdout.read().decode()
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the webhook server did not come up"
        time.sleep(0.1)


def stop_cli(proc: subprocess.Popen) -> str:
    """SIGINT, as Ctrl-C (killed after 30 s); returns what the process printed."""
    proc.send_signal(signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out.decode(errors="replace")


class ServerThread:
    """A real uvicorn server (uvloop + httptools) running an app in a background thread."""

    def __init__(self, app: Any):
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn_config(app, "127.0.0.1", self.port))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)

    def alive(self) -> bool:
        return self.thread.is_alive() and httpx.get(self.url + "/healthz", timeout=5).status_code in (200, 503)


def make_flow(name: str | None = None, **config: Any) -> Flow:
    return Flow(name=name or f"wh-{uuid.uuid4().hex[:10]}",
                trigger=step("hook", "webhook", **config), steps=[step("sink", "log", level="debug")])


@pytest.fixture
def secrets_env(monkeypatch) -> Callable[..., dict[str, str]]:
    """Put a fresh token (and HMAC secret) into uniquely named environment variables."""
    def make(with_secret: bool = False) -> dict[str, str]:
        tag = uuid.uuid4().hex[:8].upper()
        out = {"token_env": f"WH_TOKEN_{tag}", "token": secrets.token_urlsafe(24)}
        monkeypatch.setenv(out["token_env"], out["token"])
        if with_secret:
            out["hmac_secret_env"] = f"WH_SECRET_{tag}"
            out["secret"] = secrets.token_hex(16)
            monkeypatch.setenv(out["hmac_secret_env"], out["secret"])
        return out
    return make


# -- RabbitMQ ------------------------------------------------------------------------------------

def amqp_drain(flow: Flow, url: str = BROKER) -> list[Message]:
    """Take every message from the flow's first queue (basic_get + ack) and return them."""
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        ch = conn.channel()
        out = []
        while True:
            method, _props, body = ch.basic_get(names.step_queue(flow.name, flow.steps[0].name))
            if method is None:
                return out
            out.append(Message.from_json(body))
            ch.basic_ack(method.delivery_tag)
    finally:
        conn.close()


def amqp_delete(flow: Flow, url: str = BROKER) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        ch = conn.channel()
        for s in flow.steps:
            for level in retry_levels(s.retry_policy):
                ch.queue_delete(names.retry_queue(flow.name, s.name, level))
            for queue in (names.step_queue(flow.name, s.name), names.retry_ready_queue(flow.name, s.name),
                          names.dead_letter_queue(flow.name, s.name)):
                ch.queue_delete(queue)
        ch.queue_delete(names.state_queue(flow.name, flow.trigger.name))
        ch.exchange_delete(names.exchange(flow.name))
    finally:
        conn.close()


class TcpProxy:
    """A loopback TCP forwarder that can be cut (every connection closed, new ones refused) and restored,
    to make the broker unreachable without touching the shared RabbitMQ."""

    def __init__(self, target_port: int = 5672):
        self.target = ("127.0.0.1", target_port)
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: asyncio.AbstractServer | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def _call(self, coro) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    async def _pipe(self, reader, writer) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _handle(self, reader, writer) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self.writers |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        self.writers -= {writer, up_writer}

    async def _start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)

    async def _cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in list(self.writers):
            w.transport.abort()
        self.writers.clear()
        await self.server.wait_closed()

    def start(self) -> TcpProxy:
        if not self.thread.is_alive():
            self.thread.start()
        self._call(self._start())
        return self

    def cut(self) -> None:
        self._call(self._cut())

    def stop(self) -> None:
        if self.server is not None and self.server.is_serving():
            self.cut()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def serve_hook(flow: Flow, ingest: Any) -> ServerThread:
    hook = Hook.from_env(flow.name, webhook_config(flow), ingest)
    return ServerThread(create_app([hook]))
