"""Helpers of the MQTT tests (Mosquitto on 127.0.0.1:1883, and private brokers on other ports)."""

from __future__ import annotations

import getpass
import shutil
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt
import pytest

from tests.processes import free_port

HOST, PORT = "127.0.0.1", 1883


def listening(port: int, host: str = HOST) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
        return True
    except OSError:
        return False


def require_mosquitto() -> None:
    if not listening(PORT):
        pytest.skip("Mosquitto is not running on 127.0.0.1:1883 (scripts/services starts it)")




def unique(prefix: str = "flownb-test") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _client(client_id: str = "", clean: bool = True) -> mqtt.Client:
    return mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or unique("flownb-t"),
                       clean_session=clean, protocol=mqtt.MQTTv311)


def publish(topic: str, bodies, port: int = PORT, qos: int = 1, auth: tuple[str, str] | None = None) -> None:
    """Publish each body (dict → JSON, bytes as they are) with QoS 1, waiting for every PUBACK."""
    c = _client()
    if auth:
        c.username_pw_set(*auth)
    c.connect(HOST, port)
    c.loop_start()
    try:
        infos = [c.publish(topic, b if isinstance(b, bytes) else orjson.dumps(b), qos=qos) for b in bodies]
        for info in infos:
            info.wait_for_publish(10)
            assert info.is_published()
    finally:
        c.disconnect()
        c.loop_stop()


def drop_session(client_id: str, port: int = PORT) -> None:
    """End a persistent session left by a test (connect with clean_session=True)."""
    if not listening(port):
        return
    c = _client(client_id, clean=True)
    c.connect(HOST, port)
    c.loop_start()
    time.sleep(0.2)
    c.disconnect()
    c.loop_stop()


class Collector:
    """A subscriber (its own session) that keeps what it receives on ``topic_filter``."""

    def __init__(self, topic_filter: str, port: int = PORT):
        self.messages: list[tuple[str, dict]] = []
        self._subscribed = threading.Event()
        self.c = _client()
        self.c.on_connect = lambda c, *_: c.subscribe(topic_filter, qos=1)
        self.c.on_subscribe = lambda *_: self._subscribed.set()
        self.c.on_message = lambda _c, _u, m: self.messages.append((m.topic, orjson.loads(m.payload)))
        self.c.connect(HOST, port)
        self.c.loop_start()
        assert self._subscribed.wait(10), "the collector could not subscribe"

    def wait_for(self, n: int, timeout: float = 30) -> list[tuple[str, dict]]:
        deadline = time.monotonic() + timeout
        while len(self.messages) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return list(self.messages)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


class PrivateMosquitto:
    """A Mosquitto of this test alone on a free port, so it can be stopped and started at will
    (the machine's broker on 1883 is never touched)."""

    def __init__(self, tmp: Path):
        if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
            pytest.skip("mosquitto is not installed")
        self.exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.port = free_port()
        self.conf = tmp / "mosquitto.conf"
        self.conf.write_text(f"listener {self.port} {HOST}\nallow_anonymous true\npersistence false\n")
        self.proc: subprocess.Popen | None = None

    def start(self) -> PrivateMosquitto:
        self.proc = subprocess.Popen([self.exe, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not listening(self.port):
            assert self.proc.poll() is None, "the private mosquitto exited"
            assert time.monotonic() < deadline, "the private mosquitto does not listen"
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


class PrivateMosquittoWithLogin(PrivateMosquitto):
    """A private Mosquitto that refuses anonymous clients: user ``flownb`` with ``password``."""

    def __init__(self, tmp: Path, password: str):
        super().__init__(tmp)
        passwd = tmp / "passwd"
        subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), "flownb", password], check=True,
                       capture_output=True, timeout=30)
        passwd.chmod(0o600)
        # started as root, mosquitto would switch to user 'mosquitto', who cannot read the test's files
        self.conf.write_text(f"listener {self.port} {HOST}\nallow_anonymous false\npassword_file {passwd}\n"
                             f"persistence false\nuser {getpass.getuser()}\n")
