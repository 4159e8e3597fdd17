"""The webhook on RabbitMQ: back-pressure (429), an unreachable broker (503, never a 202 for a lost
message), and sync replies through the reply queue — all against the real broker."""

from __future__ import annotations

import asyncio
import collections
import threading
import time

import httpx
import pika
import pytest

from flownb.flow import Flow, step
from flownb.runtime.amqp import names
from flownb.runtime.amqp.ingress import AmqpIngest
from flownb.runtime.amqp.step_worker import StepWorker
from flownb.runtime.amqp.worker import run_workers

from .conftest import BROKER, TcpProxy, amqp_delete, amqp_drain, make_flow, serve_hook

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq]


@pytest.fixture
def flow_env(secrets_env):
    made = []

    def make(**config):
        s = secrets_env()
        flow = make_flow(token_env=s["token_env"], **config)
        made.append(flow)
        return flow, s["token"]
    yield make
    for f in made:
        amqp_delete(f)


def test_full_first_queue_answers_429_and_queues_nothing_more(flow_env, monkeypatch):
    flow, token = flow_env()
    monkeypatch.setenv("FLOWNB_MAX_QUEUE_LENGTH", "2")  # the runtime's topology limits step queues
    with serve_hook(flow, AmqpIngest(flow, BROKER)) as server:
        url = f"{server.url}/hooks/{flow.name}/{token}"
        responses = [httpx.post(url, json={"n": i}) for i in range(4)]
        assert [r.status_code for r in responses] == [202, 202, 429, 429]
        assert all(r.headers["retry-after"] == "1" for r in responses[2:])
        assert "full" in responses[2].json()["error"]
        queued = amqp_drain(flow)
        assert [m.id for m in queued] == [r.json()["id"] for r in responses[:2]]
        # room again: accepted again
        assert httpx.post(url, json={"n": 9}).status_code == 202
        assert [m.body["n"] for m in amqp_drain(flow)] == [9]


def test_the_publisher_is_used_and_basic_publish_remains_the_fallback(flow_env, monkeypatch):
    """The installed aiormq has what FastPublisher needs; without it, aiormq's basic_publish queues."""
    flow, token = flow_env()
    ingest = AmqpIngest(flow, BROKER)
    with serve_hook(flow, ingest) as server:
        assert ingest._publisher is not None  # a newer aiormq that moved its internals fails here
        assert httpx.post(f"{server.url}/hooks/{flow.name}/{token}", json={"n": 1}).status_code == 202
    monkeypatch.setattr("flownb.runtime.amqp.ingress.supported", lambda channel: False)
    ingest = AmqpIngest(flow, BROKER)
    with serve_hook(flow, ingest) as server:
        assert ingest._publisher is None
        ids = [httpx.post(f"{server.url}/hooks/{flow.name}/{token}", json={"n": n}).json()["id"] for n in (2, 3)]
    queued = amqp_drain(flow)
    assert [m.body["n"] for m in queued] == [1, 2, 3] and [m.id for m in queued][1:] == ids


def test_unroutable_message_is_503_not_429(flow_env):
    """The first queue deleted under a running server: the broker returns the publish (mandatory)."""
    flow, token = flow_env()
    with serve_hook(flow, AmqpIngest(flow, BROKER)) as server:
        url = f"{server.url}/hooks/{flow.name}/{token}"
        assert httpx.post(url, json={"n": 0}).status_code == 202
        conn = pika.BlockingConnection(pika.URLParameters(BROKER))
        try:
            conn.channel().queue_delete(names.step_queue(flow.name, flow.steps[0].name))
        finally:
            conn.close()
        r = httpx.post(url, json={"n": 1})
        assert r.status_code == 503 and "no queue is bound" in r.json()["error"]
        assert r.headers["retry-after"]


def test_bodies_across_frames_and_unicode_arrive_whole(flow_env):
    """Bodies larger than one AMQP frame (split into body frames) and non-ASCII text, concurrently."""
    flow, token = flow_env(max_body=2_000_000)
    with serve_hook(flow, AmqpIngest(flow, BROKER)) as server:
        url = f"{server.url}/hooks/{flow.name}/{token}"
        bodies = [{"n": i, "text": "é✓😀" * (i * 25_000), "tail": i} for i in range(6)]

        async def post_all():
            async with httpx.AsyncClient(timeout=30) as client:
                return await asyncio.gather(*[client.post(url, json=b) for b in bodies])
        responses = asyncio.run(post_all())
        assert [r.status_code for r in responses] == [202] * 6
        got = {m.id: m for m in amqp_drain(flow)}
        assert sorted(got) == sorted(r.json()["id"] for r in responses)
        for r, b in zip(responses, bodies, strict=True):
            m = got[r.json()["id"]]
            assert m.body["text"] == b["text"] and m.body["tail"] == b["tail"]


def test_broker_unreachable_at_start_then_back(flow_env):
    flow, token = flow_env()
    proxy = TcpProxy()
    proxy.thread.start()  # listening socket not opened yet: the broker is unreachable
    try:
        with serve_hook(flow, AmqpIngest(flow, proxy.url, connect_timeout=0.5, max_backoff=0.2)) as server:
            url = f"{server.url}/hooks/{flow.name}/{token}"
            r = httpx.post(url, json={"a": 1})
            assert r.status_code == 503 and r.headers["retry-after"] == "1"
            assert httpx.get(server.url + "/healthz").status_code == 503
            proxy.start()
            deadline = time.monotonic() + 10
            while httpx.get(server.url + "/healthz").status_code != 200:
                assert time.monotonic() < deadline, "did not reconnect"
                time.sleep(0.05)
            r = httpx.post(url, json={"a": 2})
            assert r.status_code == 202
            assert [m.id for m in amqp_drain(flow)] == [r.json()["id"]]
    finally:
        proxy.stop()


async def _load(url: str, stop: threading.Event, results: list) -> None:
    """16 clients posting until ``stop``; each result is (sent, answered, status, json, retry-after)."""
    async with httpx.AsyncClient(timeout=30) as client:
        async def one_client(k: int) -> None:
            i = 0
            while not stop.is_set():
                sent = time.monotonic()
                r = await client.post(url, json={"k": k, "i": i})
                results.append((sent, time.monotonic(), r.status_code, r.json(), r.headers.get("retry-after")))
                i += 1
        await asyncio.gather(*(one_client(k) for k in range(16)))


def _until(what: str, predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(0.02)


def test_broker_lost_mid_load_gives_503_never_a_lost_202(flow_env):
    """Each phase lasts until its outcome was seen (under generous deadlines), and a 202 is judged by
    causality, not by when its answer arrived: a request sent after the cut and answered before the
    broker was back cannot have been confirmed, so it must not get a 202."""
    flow, token = flow_env()
    proxy = TcpProxy().start()
    try:
        with serve_hook(flow, AmqpIngest(flow, proxy.url, max_backoff=0.2)) as server:
            url = f"{server.url}/hooks/{flow.name}/{token}"
            results: list = []
            stop = threading.Event()
            loader = threading.Thread(target=asyncio.run, args=(_load(url, stop, results),))
            loader.start()
            try:
                _until("20 requests accepted before the cut", lambda: sum(r[2] == 202 for r in results) >= 20)
                proxy.cut()            # every broker connection dropped, new ones refused
                cut_at = time.monotonic()
                _until("5 requests sent after the cut refused with 503",
                       lambda: sum(r[0] >= cut_at and r[2] == 503 for r in results) >= 5)
                proxy.start()          # the broker is reachable again
                back_at = time.monotonic()
                _until("a request sent after the broker came back accepted",
                       lambda: any(r[0] > back_at and r[2] == 202 for r in results))
            finally:
                stop.set()
                loader.join(60)
            assert server.alive()
        statuses = collections.Counter(s for _, _, s, _, _ in results)
        assert set(statuses) <= {202, 503}, statuses
        assert all(ra == "1" for _, _, s, _, ra in results if s == 503)
        assert not [r for r in results if r[0] >= cut_at and r[1] <= back_at and r[2] == 202]
        accepted = [p["id"] for _, _, s, p, _ in results if s == 202]
        queued = collections.Counter(m.id for m in amqp_drain(flow))
        assert all(queued[i] == 1 for i in accepted), "a 202 was answered for a message that is not queued"
        assert sum(queued.values()) - len(accepted) <= statuses[503]  # unconfirmed ones may be there
    finally:
        proxy.stop()


def test_sync_reply_comes_back_from_the_last_step(flow_env):
    """The real step worker (StepWorker) of the last step answers on the reply queue: the reply is that
    step's output, the mapping's result, not the request echoed back."""
    flow, token = flow_env(reply="sync", timeout="20s")
    flow = Flow(name=flow.name, trigger=flow.trigger,
                steps=[step("sink", "mapping", fields={"echo": "q", "seen": "true"})])
    with serve_hook(flow, AmqpIngest(flow, BROKER)) as server:
        stop = threading.Event()
        worker = threading.Thread(target=run_workers, args=([StepWorker(flow.resolved(), "sink", BROKER)], stop),
                                  daemon=True)
        worker.start()
        try:
            url = f"{server.url}/hooks/{flow.name}/{token}"
            with httpx.Client(timeout=30) as client:
                for q in ("a", "b"):
                    r = client.post(url, json={"q": q})
                    assert r.status_code == 200, r.text
                    assert r.json() == {"echo": q, "seen": True}
                    assert len(r.headers["flownb-id"]) == 32
        finally:
            stop.set()
            worker.join(60)
        assert not worker.is_alive()
    assert amqp_drain(flow) == []  # both requests were consumed (acked) by the step worker


def test_sync_timeout_is_504_and_the_message_stays_queued(flow_env):
    flow, token = flow_env(reply="sync", timeout="300ms")
    with serve_hook(flow, AmqpIngest(flow, BROKER)) as server:
        r = httpx.post(f"{server.url}/hooks/{flow.name}/{token}", json={"q": "late"})
        assert r.status_code == 504
        assert "still be processed" in r.json()["error"]
        queued = amqp_drain(flow)
        assert [m.id for m in queued] == [r.json()["id"]] and queued[0].body["q"] == "late"
