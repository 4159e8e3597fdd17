"""``flownb worker`` keeps an echoed secret out of RabbitMQ and its output: a server that answers 400
echoing the request's ``Authorization`` header; the dead letter on the broker (body and error
header), every other queue of the flow, the worker's stdout/stderr and ``flownb dlq list/show``
hold ``[REDACTED:VAR]``, never the token (flownb.secrets; docs/secrets.md)."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import quote

import pika
import pytest
from amqp_components import wait_for

import flownb
from flownb.runtime.amqp import names
from tests.test_redaction import EchoAuthTarget

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq]
FLOWNB = str(Path(sys.executable).parent / "flownb")
VAR = "FLOWNB_TEST_AMQP_ECHO_TOKEN"
MASKED = f"[REDACTED:{VAR}]"


def assert_clean(token: str, data: bytes | str, where: str) -> None:
    data = data if isinstance(data, bytes) else data.encode()
    for form in (token, quote(token, safe=""), base64.b64encode(token.encode()).decode()):
        assert form.encode() not in data, f"{where} holds the secret"


def every_message(broker: str, flow: str) -> list[tuple[str, bytes, dict]]:
    """(queue, body, headers) of every message in the flow's queues, returned to their queues."""
    vhost = broker.rsplit("/", 1)[1]
    out = subprocess.run(["rabbitmqctl", "-q", "list_queues", "-p", vhost, "name", "--no-table-headers"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    queues = [q.strip() for q in out.splitlines() if q.strip().startswith(f"flownb.{flow}.")]
    assert f"flownb.{flow}.push.dlq" in queues, queues
    conn = pika.BlockingConnection(pika.URLParameters(broker))
    found = []
    try:
        for q in queues:
            ch = conn.channel()
            while True:
                method, props, body = ch.basic_get(q, auto_ack=False)
                if method is None:
                    break
                found.append((q, body, dict(props.headers or {})))
            ch.close()  # unacked: back to the queue
    finally:
        conn.close()
    return found


def dlq_depth(broker: str, flow: str) -> int:
    conn = pika.BlockingConnection(pika.URLParameters(broker))
    try:
        q = conn.channel().queue_declare(names.dead_letter_queue(flow, "push"), passive=True)
        return q.method.message_count
    except pika.exceptions.ChannelClosedByBroker:
        return 0
    finally:
        if conn.is_open:
            conn.close()


def test_worker_keeps_an_echoed_token_out_of_rabbitmq_logs_and_dlq(broker, tmp_path):
    token = f"Tok3n-{uuid.uuid4().hex}/Zz+x"
    name = f"red-amqp-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, VAR: token, "COLUMNS": "1000", "FLOWNB_BROKER_URL": broker}
    with EchoAuthTarget() as target:
        flow = flownb.Flow(
            name=name,
            trigger=flownb.step("src", "python.poll", source="def p(s, c):\n    return [{'a': 1}]\n",
                                function="p", interval="1h"),
            steps=[flownb.step("push", "http.request", method="POST", url=target.url + "/contacts",
                               token_env=VAR)])
        spec = flow.save(tmp_path / "flow.yaml")
        out_file, err_file = tmp_path / "worker.out", tmp_path / "worker.err"  # files: -v logs a lot
        with out_file.open("w") as o, err_file.open("w") as e:
            proc = subprocess.Popen([FLOWNB, "-v", "worker", str(spec), "--all", "--broker", broker], env=env,
                                    stdout=o, stderr=e)
            try:
                wait_for(lambda: dlq_depth(broker, name) >= 1 or proc.poll() is not None, timeout=90,
                         what="a dead letter")
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=90)
        out, err = out_file.read_text(), err_file.read_text()
        assert proc.returncode == 0, err[-3000:]
        assert target.received[0].headers["authorization"] == f"Bearer {token}"  # the leak was there
    assert_clean(token, out, "the worker's stdout")
    assert_clean(token, err, "the worker's stderr (its log)")
    messages = every_message(broker, name)
    dead = [(b, h) for q, b, h in messages if q.endswith(".push.dlq")]
    assert dead, messages
    for q, body, headers in messages:
        assert_clean(token, body, f"a message in {q}")
        assert_clean(token, json.dumps(headers, default=str), f"the headers of a message in {q}")
    error = json.loads(dead[0][1]["x-flownb-error"])
    assert "HTTP 400" in error["message"] and f"Bearer {MASKED}" in error["message"]
    assert MASKED in error["traceback"]
    dead_id = json.loads(dead[0][0])["id"]
    shown = subprocess.run([FLOWNB, "dlq", "show", str(spec), "--broker", broker, "--id", dead_id],
                           capture_output=True, text=True, timeout=120, env=env)
    listed = subprocess.run([FLOWNB, "dlq", "list", str(spec), "--broker", broker],
                            capture_output=True, text=True, timeout=120, env=env)
    for r in (shown, listed):
        assert r.returncode == 0, r.stderr
        assert_clean(token, r.stdout + r.stderr, "flownb dlq output")
    assert f"Bearer {MASKED}" in json.loads(shown.stdout)["error"]["message"]
    assert MASKED in listed.stdout
