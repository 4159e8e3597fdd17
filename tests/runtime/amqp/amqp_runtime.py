"""``AmqpEngine``: the conformance-suite engine (tests/runtime/runtimes.py) on the real RabbitMQ.

Same interface as ``LocalEngine``: ``run(flow, inputs=None, polls=1, tmp=…) -> Result``. Each run
gets a throw-away vhost. The outputs of the flow's last step are captured by appending one step
(``captured``, component ``log``) for which no worker runs: its queue collects them, and they are
read from it at the end. Dead letters come from :class:`AmqpDeadLetters`, the cursor from the state
queue.
"""

from __future__ import annotations

import subprocess
import threading
import time
import uuid

import pika
import pytest

import flownb
from flownb.message import Message
from flownb.runtime.amqp import names
from flownb.runtime.amqp.dlq import AmqpDeadLetters
from flownb.runtime.amqp.step_worker import PERSISTENT, StepWorker
from flownb.runtime.amqp.topology import connect, declare_flow, queue_depths
from flownb.runtime.amqp.trigger import TriggerWorker, read_state
from flownb.runtime.amqp.worker import run_workers

ROOT = "amqp://guest:guest@127.0.0.1:5672/"
CAPTURE = "captured"


def _ctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


class AmqpEngine:
    """Step workers (threads) and the trigger worker against a fresh vhost."""

    name = "amqp"

    def run(self, flow, inputs=None, polls: int = 1, tmp=None, timeout: float = 60.0):
        from runtimes import Result
        try:
            pika.BlockingConnection(pika.URLParameters(ROOT)).close()
        except pika.exceptions.AMQPError:
            pytest.skip("RabbitMQ is not running on 127.0.0.1:5672")
        vhost = f"flownb-conf-{uuid.uuid4().hex[:10]}"
        _ctl("add_vhost", vhost)
        _ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        url = ROOT + vhost
        try:
            full = flow.then(flownb.step(CAPTURE, "log", level="debug")).resolved()
            outputs = self._run(full, url, inputs, polls, timeout)
            dead = AmqpDeadLetters(full, url).list()
            state = read_state(full, url) if inputs is None else {}
            return Result(outputs=outputs, dead_letters=dead, trigger_state=state or {})
        finally:
            _ctl("delete_vhost", vhost)

    def _run(self, flow, url, inputs, polls, timeout) -> list[dict]:
        conn = connect(url)
        ch = conn.channel()
        declare_flow(ch, flow)
        if inputs is None:
            TriggerWorker(flow, url, max_polls=polls, ignore_interval=True).run()
        else:
            ch.confirm_delivery()
            for body in inputs:
                m = Message(body=body, flow=flow.name, step=flow.trigger.name)
                ch.basic_publish(names.exchange(flow.name), flow.steps[0].name, m.to_json(), PERSISTENT)
        workers = [StepWorker(flow, s.name, url) for s in flow.steps if s.name != CAPTURE]
        stop = threading.Event()
        t = threading.Thread(target=run_workers, args=(workers, stop), daemon=True)
        t.start()
        try:
            self._wait_idle(flow, url, workers, timeout)
        finally:
            stop.set()
            t.join(60)
        out = []
        while True:
            method, _props, body = ch.basic_get(names.step_queue(flow.name, CAPTURE), auto_ack=True)
            if method is None:
                break
            out.append(Message.from_json(body).body)
        conn.close()
        return out

    @staticmethod
    def _wait_idle(flow, url, workers, timeout) -> None:
        deadline = time.monotonic() + timeout
        quiet = 0
        while time.monotonic() < deadline:
            depths = queue_depths(flow, url)
            busy = any(d["ready"] or d["retry"] for s, d in depths.items() if s != CAPTURE)
            busy = busy or not all(w.consuming.is_set() and w.idle for w in workers)
            quiet = 0 if busy else quiet + 1
            if quiet >= 3:
                return
            time.sleep(0.05)
        raise AssertionError(f"the flow did not come to rest within {timeout}s: {queue_depths(flow, url)}")
