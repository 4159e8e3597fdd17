"""Helpers of the NATS tests (nats-server with JetStream on 127.0.0.1:4222, and private servers on
other ports). Each test makes streams of its own (unique names and subjects) and deletes them."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from pathlib import Path

import nats
import orjson
import pytest
from mqtt_kit import free_port, listening, unique

PORT = 4222


def require_nats() -> None:
    if not listening(PORT):
        pytest.skip("NATS is not running on 127.0.0.1:4222 (scripts/services starts it)")


def run(coro_fn, port: int = PORT, **kw):
    """``coro_fn(nc, js)`` on a fresh connection; its result."""
    async def main():
        nc = await nats.connect(f"nats://127.0.0.1:{port}", connect_timeout=5, **kw)
        try:
            return await coro_fn(nc, nc.jetstream())
        finally:
            await nc.close()
    return asyncio.run(main())


def make_stream(subjects: list[str], port: int = PORT, **config) -> str:
    name = unique("flownb-test").replace("-", "_")

    async def go(nc, js):
        await js.add_stream(name=name, subjects=subjects, **config)
    run(go, port)
    return name


def delete_stream(name: str, port: int = PORT) -> None:
    async def go(nc, js):
        try:
            await js.delete_stream(name)
        except nats.js.errors.NotFoundError:
            pass
    if listening(port):
        run(go, port)


def js_publish(subject: str, bodies, port: int = PORT) -> None:
    async def go(nc, js):
        for b in bodies:
            await js.publish(subject, b if isinstance(b, bytes) else orjson.dumps(b))
    run(go, port)


def stream_bodies(stream: str, port: int = PORT) -> list[dict]:
    """Every message stored in ``stream``, decoded (an ephemeral consumer reads them)."""
    async def go(nc, js):
        info = await js.stream_info(stream)
        n = info.state.messages
        if not n:
            return []
        sub = await js.pull_subscribe("", stream=stream)
        got: list = []
        while len(got) < n:
            got += await sub.fetch(min(n - len(got), 500), timeout=5)
        return [orjson.loads(m.data) for m in got]
    return run(go, port)


def ack_pending(stream: str, durable: str, port: int = PORT) -> int:
    async def go(nc, js):
        return (await js.consumer_info(stream, durable)).num_ack_pending
    return run(go, port)


def num_pending(stream: str, durable: str, port: int = PORT) -> int:
    """Messages of the stream the consumer has not delivered yet."""
    async def go(nc, js):
        return (await js.consumer_info(stream, durable)).num_pending
    return run(go, port)


class PrivateNats:
    """A nats-server with JetStream of this test alone on a free port (its store in ``tmp``), to stop
    and start at will; the machine's server on 4222 is never touched."""

    def __init__(self, tmp: Path, *args: str):
        self.exe = shutil.which("nats-server") or "/usr/sbin/nats-server"
        if not Path(self.exe).exists():
            pytest.skip("nats-server is not installed")
        self.port, self.dir, self.args, self.proc = free_port(), tmp / "nats-store", list(args), None

    def start(self) -> PrivateNats:
        self.proc = subprocess.Popen([self.exe, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd",
                                      str(self.dir), *self.args], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not listening(self.port):
            assert self.proc.poll() is None, "the private nats-server exited"
            assert time.monotonic() < deadline, "the private nats-server does not listen"
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


__all__ = ["PORT", "PrivateNats", "ack_pending", "delete_stream", "free_port", "js_publish", "make_stream",
           "num_pending", "require_nats", "run", "stream_bodies", "unique"]
