"""A broker URL that lists several nodes, the first of them down (nothing listens on port 1): the
webhook ingress and a worker go on to the next node. (``flownb dlq``:
tests/runtime/amqp/test_dead_letters.py; a real cluster losing a node: test_cluster_amqp.py.)"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest
from amqp_components import drain_queue, publish_to_step, sink_counts, wait_for

from flownb.flow import Flow, step
from flownb.runtime.amqp import names
from flownb.runtime.amqp.ingress import AmqpIngest

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq]


def _dead_first(broker: str) -> str:
    """The short form: the same credentials and vhost on a dead node, then on ``broker``'s node."""
    u = urllib.parse.urlsplit(broker)
    return f"amqp://{u.username}:{u.password}@127.0.0.1:1,127.0.0.1:{u.port or 5672}{u.path}"


def test_the_webhook_ingress_fails_over_to_the_next_node_when_the_first_is_down(broker, monkeypatch):
    monkeypatch.setenv("WH_TOKEN_NODES", "t0ken")
    flow = Flow(name="nodes-hook", trigger=step("hook", "webhook", token_env="WH_TOKEN_NODES"),
                steps=[step("sink", "log", level="debug")])

    async def scenario() -> list[str]:
        ingest = AmqpIngest(flow, _dead_first(broker), max_backoff=0.2)
        await ingest.start()
        try:
            return [(await ingest.submit({"n": i}, {}, reply=False)).id for i in range(20)]
        finally:
            await ingest.close()

    accepted = asyncio.run(scenario())
    queued = [m["id"] for m, _props in drain_queue(broker, names.step_queue(flow.name, "sink"))]
    assert sorted(queued) == sorted(accepted) and len(accepted) == 20


def test_a_worker_given_a_dead_node_first_by_repeated_broker_options_consumes_from_the_next(broker, tmp_path):
    """``flownb worker --broker DEAD --broker LIVE --broker DEAD`` declares the flow and consumes
    through LIVE (every --broker counts, not only the last one)."""
    import flownb
    db = tmp_path / "sink.db"
    flow = flownb.Flow(name="nodes", trigger=flownb.step("src", "amqptest.count", total=0),
                       steps=[flownb.step("sink", "amqptest.sink", path=str(db))])
    spec = flow.save(tmp_path / "flow.yaml")
    u = urllib.parse.urlsplit(broker)
    dead = u._replace(netloc=f"{u.username}:{u.password}@127.0.0.1:1").geturl()
    log = tmp_path / "sink.log"
    proc = subprocess.Popen([sys.executable, str(Path(__file__).parent / "run_worker.py"), "worker", str(spec),
                             "--step", "sink", "--broker", dead, "--broker", broker, "--broker", dead],
                            env={"PATH": "/usr/bin"}, stdout=subprocess.DEVNULL, stderr=log.open("wb"), cwd=tmp_path)
    try:
        wait_for(lambda: b"consuming" in log.read_bytes() or proc.poll() is not None, timeout=60,
                 what="the worker consuming")
        assert proc.poll() is None, log.read_text()
        publish_to_step(broker, flow, "sink", range(50))
        wait_for(lambda: sink_counts(db)[0] == 50, timeout=60, what="the 50 records at the sink")
    finally:
        proc.terminate()
    assert proc.wait(60) == 0, log.read_text()
