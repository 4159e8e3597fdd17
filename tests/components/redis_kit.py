"""Helpers of the Redis tests (Redis on 127.0.0.1:6379, and private servers on other ports)."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
import redis
from mqtt_kit import free_port, listening

PORT = 6379


def require_redis() -> None:
    if not listening(PORT):
        pytest.skip("Redis is not running on 127.0.0.1:6379 (scripts/services starts it)")


def client(port: int = PORT, password: str | None = None) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, password=password, decode_responses=True)


class PrivateRedis:
    """A redis-server of this test alone on a free port (nothing on disk), to stop and start at will;
    the machine's Redis on 6379 is never touched."""

    def __init__(self, tmp: Path, *args: str):
        self.args = list(args)
        self.exe = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not Path(self.exe).exists():
            pytest.skip("redis-server is not installed")
        self.port, self.dir, self.proc = free_port(), tmp, None

    def start(self) -> PrivateRedis:
        self.proc = subprocess.Popen([self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(self.dir), *self.args],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not listening(self.port):
            assert self.proc.poll() is None, "the private redis-server exited"
            assert time.monotonic() < deadline, "the private redis-server does not listen"
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None
