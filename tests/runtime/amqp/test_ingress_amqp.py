"""The webhook ingress on RabbitMQ (runtime/amqp/ingress.py) when its connection goes quiet while it
stays open: a relay stops passing the broker's frames (the broker still hears the ingress's
heartbeats). The request in flight gets a 503 after ``publish_timeout``, as before; the ingress then
probes the connection, gives up on it and opens a new one, so requests are accepted again within
seconds — before, every request waited ``publish_timeout`` for a 503 until aiormq's heartbeat grace
(183 s) ended the connection. Nothing answered 202 is missing from the queue."""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.parse

import pytest
from amqp_components import drain_queue
from relay import Relay

from flownb.flow import Flow, step
from flownb.runtime.amqp import names
from flownb.runtime.amqp.ingress import AmqpIngest
from flownb.runtime.ingress import Unavailable

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq]
PUBLISH_TIMEOUT = 2.0


def test_an_ingress_whose_connection_went_quiet_reconnects_instead_of_answering_503_for_minutes(
        broker, monkeypatch, caplog):
    monkeypatch.setenv("WH_TOKEN_QUIET", "t0ken")
    flow = Flow(name="quiet-hook", trigger=step("hook", "webhook", token_env="WH_TOKEN_QUIET"),
                steps=[step("sink", "log", level="debug")])
    relay = Relay(urllib.parse.urlsplit(broker).port or 5672)
    u = urllib.parse.urlsplit(broker)
    url = u._replace(netloc=f"{u.username}:{u.password}@127.0.0.1:{relay.port}").geturl()

    async def scenario() -> tuple[list[str], float, int]:
        ingest = AmqpIngest(flow, url, publish_timeout=PUBLISH_TIMEOUT, max_backoff=0.2)
        await ingest.start()
        accepted = []
        try:
            accepted.append((await ingest.submit({"n": 0}, {}, reply=False)).id)
            relay.mute()
            t0 = time.monotonic()
            with pytest.raises(Unavailable, match="did not confirm"):
                await ingest.submit({"n": 1}, {}, reply=False)
            refused = 1
            while True:  # what a client retrying on 503 sees
                assert time.monotonic() - t0 < PUBLISH_TIMEOUT * 8, \
                    f"still no 202 {time.monotonic() - t0:.0f} s after the connection went quiet ({refused} 503s)"
                try:
                    accepted.append((await ingest.submit({"n": 2}, {}, reply=False)).id)
                    break
                except Unavailable:
                    refused += 1
                    await asyncio.sleep(0.1)
            return accepted, time.monotonic() - t0, refused
        finally:
            await ingest.close()

    try:
        with caplog.at_level(logging.WARNING, logger="flownb.webhook.amqp"):
            accepted, took, refused = asyncio.run(scenario())
    finally:
        relay.unmute()
        relay.close()
    assert "the connection went quiet" in caplog.text, caplog.text
    assert relay.accepted >= 2  # a new connection
    queued = [m["id"] for m, _props in drain_queue(broker, names.step_queue(flow.name, "sink"))]
    assert set(accepted) <= set(queued), "a 202 was answered for a message that is not queued"
    print(f"\naccepting again {took:.1f} s after the connection went quiet ({refused} requests answered 503)")
