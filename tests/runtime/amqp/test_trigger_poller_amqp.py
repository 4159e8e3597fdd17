"""The active-poller election of a polling trigger's replicas survives dropped connections
(docs/rabbitmq.md, polling triggers): when the broker drops the connection of the replica that
polls — an operator's ``DELETE /api/connections/NAME``, a load balancer — its cursor (classic
topology) or poller token (quorum topology) returns to its queue and the next replica polls, within
seconds. Also when the connection of the replica next in line is dropped at the same moment, so the
broker may hand the token to a consumer whose connection is already closing: nobody is left waiting
for a token nobody holds. Each round the numbers must move on at the sink; at the end each number
emitted arrived (and, with the classic topology's transactions, arrived once)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from pathlib import Path

import pytest
from amqp_components import sink_counts, wait_for
from broker_admin import active_connection, connection_names, consumers, drop_connection
from relay import Relay

import flownb
from flownb.runtime.amqp.topology import queue_depths, trigger_queues
from flownb.runtime.amqp.trigger import TriggerWorker, read_state

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq]

RUN_WORKER = Path(__file__).parent / "run_worker.py"
#: whose connections each round drops: the active poller's; "both": the active one's, then right after
#: the next in line's (the token may be handed to a connection already closing); "next first": the
#: next in line's, then the active one's
ROUNDS = ["active", "both", "next first", "both"]
RESUMES_WITHIN = 20.0  # seconds: a reconnect (back-off 0.5-4 s here) and a single-active-consumer switch


def _replica(spec: Path, broker: str, log: Path, queue_type: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(RUN_WORKER), "worker", str(spec), "--step", "src"],
                            env={**os.environ, "FLOWNB_BROKER_URL": broker, "FLOWNB_QUEUE_TYPE": queue_type},
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)


def _committed(logs: list[Path]) -> int:
    """Polls the replicas have committed so far (each logs one line per poll that emitted)."""
    return sum(log.read_text().count("emitted 1 message(s)") for log in logs)


@pytest.mark.slow
@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
def test_dropping_the_active_pollers_connection_hands_the_poll_to_a_replica(broker, running, tmp_path, monkeypatch,
                                                                           queue_type):
    monkeypatch.setenv("FLOWNB_QUEUE_TYPE", queue_type)
    db = tmp_path / "sink.db"
    flow = flownb.Flow(name=f"poller-{uuid.uuid4().hex[:8]}",
                       trigger=flownb.step("src", "amqptest.count", total=100_000, batch=1, interval="50ms"),
                       steps=[flownb.step("sink", "amqptest.sink", path=str(db))])
    spec = flow.save(tmp_path / "flow.yaml")
    election = trigger_queues(flow.resolved())[1] or trigger_queues(flow.resolved())[0]  # .poller, or .state
    sink = running(flow, ["sink"], broker)
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = []
    try:
        for log in logs:
            procs.append(_replica(spec, broker, log, queue_type))
            wait_for(lambda log=log: "waiting to be the active poller" in log.read_text(), 60, what=f"{log.stem} up")
        wait_for(lambda: len(consumers(broker, election)) == 2, 30, what="both replicas consuming")
        for rnd, how in enumerate(ROUNDS):
            wait_for(lambda n=3 * (rnd + 1): _committed(logs) >= n, RESUMES_WITHIN, what="polls before the drop")
            active = wait_for(lambda: active_connection(broker, election), 30, what="an active poller")
            names = wait_for(lambda: None if (known := connection_names(broker, election)) is None else (known,),
                             30, what="the consumers' connections")[0]
            others = [n for n in names if n != active]
            order = {"active": [active], "both": [active, *others], "next first": [*others, active]}[how]
            for name in order:
                drop_connection(name)
            t0 = time.monotonic()
            # the broker closes them a moment after it answered: count the polls from when they are gone
            wait_for(lambda gone=set(order): (names := connection_names(broker, election)) is not None
                     and not gone & set(names), 10, what="the dropped connections gone")
            before = _committed(logs)
            try:
                wait_for(lambda n=before + 3: _committed(logs) >= n, RESUMES_WITHIN,
                         what=f"round {rnd}: the polls to resume after dropping {how}")
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n--- a:\n{logs[0].read_text()[-3000:]}\n--- b:\n"
                                     f"{logs[1].read_text()[-3000:]}") from None
            print(f"round {rnd} ({how} dropped): polls resumed in {time.monotonic() - t0:.1f} s")
            assert [p.poll() for p in procs] == [None, None], "a replica exited"
            wait_for(lambda: len(consumers(broker, election)) == 2, 30, what="both replicas consuming again")
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        codes = [p.wait(60) for p in procs]
    assert codes == [0, 0], (codes, logs[0].read_text()[-2000:], logs[1].read_text()[-2000:])
    emitted = read_state(flow.resolved(), broker)["next"]
    wait_for(lambda: sink_counts(db)[0] == emitted, 30, what=f"all {emitted} emitted numbers at the sink")
    sink.stop()
    assert queue_depths(flow.resolved(), broker)["sink"] == {"ready": 0, "dead": 0, "retry": 0}
    seen, deliveries = sink_counts(db)
    assert seen == emitted
    if queue_type == "classic":  # one transaction per poll: never emitted twice
        assert deliveries == seen


# a swallowed delivery of the classic topology's cursor is not seen (see TriggerWorker._watch): the
# broker counts it as held, exactly as the cursor an active poller holds between two polls
@pytest.mark.parametrize(("queue_type", "how"), [("classic", "mute"), ("quorum", "mute"), ("quorum", "swallow")])
def test_a_replica_whose_connection_went_quiet_cannot_keep_the_poll_from_the_others(broker, tmp_path, monkeypatch,
                                                                                   caplog, queue_type, how):
    """The replica next in line sits behind a relay that goes quiet — "mute": the broker's frames no
    longer reach it; "swallow": only its deliveries are lost — while its connection stays open (the
    broker still hears its heartbeats). The active poller's connection is then dropped: the broker
    hands the cursor (classic) or the token (quorum) to the quiet replica, which never sees it. Within
    FLOWNB_BROKER_TIMEOUT (and its probe interval) a replica must notice and reconnect, so the polls go on;
    pika's heartbeat check alone would take 65-130 s, and a swallowed delivery would be held forever."""
    timeout = 3.0
    monkeypatch.setenv("FLOWNB_BROKER_TIMEOUT", f"{timeout:g}s")
    monkeypatch.setenv("FLOWNB_QUEUE_TYPE", queue_type)
    flow = flownb.Flow(name=f"quiet-{uuid.uuid4().hex[:8]}",
                       trigger=flownb.step("src", "amqptest.count", total=100_000, batch=1, interval="50ms"),
                       steps=[flownb.step("sink", "amqptest.sink", path=str(tmp_path / "unused.db"))]).resolved()
    election = trigger_queues(flow)[1] or trigger_queues(flow)[0]
    relay = Relay(urllib.parse.urlsplit(broker).port or 5672)
    u = urllib.parse.urlsplit(broker)
    quiet_url = u._replace(netloc=f"{u.username}:{u.password}@127.0.0.1:{relay.port}").geturl()
    a, b = TriggerWorker(flow, broker), TriggerWorker(flow, quiet_url)
    threads = [threading.Thread(target=w.run, daemon=True) for w in (a, b)]
    with caplog.at_level(logging.WARNING, logger="flownb"):
        try:
            threads[0].start()
            wait_for(lambda: a.polls >= 3, 30, what="a polling")
            threads[1].start()
            wait_for(lambda: len(consumers(broker, election)) == 2, 30, what="b waiting behind a")
            if how == "mute":
                relay.mute()
            else:
                relay.swallow_deliveries()
            active = wait_for(lambda: active_connection(broker, election), 30, what="a as the active poller")
            before = a.polls + b.polls
            drop_connection(active)  # a reconnects at once, behind b: the broker picks b
            t0 = time.monotonic()
            wait_for(lambda: a.polls + b.polls >= before + 3, timeout * 5,
                     what=f"the polls to go on within {timeout * 5:g} s (b, {how}: is the "
                          f"{'token' if queue_type == 'quorum' else 'cursor'} stranded with it?)")
            took = time.monotonic() - t0
            relay.unmute()
        finally:
            for w in (a, b):
                w.stop()
            for t in threads:
                t.join(30)
            relay.close()
    assert not any(t.is_alive() for t in threads)
    words = {"mute": "no answer from the broker", "swallow": "with nobody reading it"}[how]
    assert any(words in r.getMessage() for r in caplog.records), caplog.text  # said why it reconnected
    print(f"\npolls resumed {took:.1f} s after the drop (timeout {timeout:g} s)")


def test_the_brokers_consumer_timeout_on_the_poller_token_is_loud_and_keeps_one_poller(private_broker_with, tmp_path,
                                                                                      monkeypatch, caplog):
    """RabbitMQ closes the channel of a delivery left unacked longer than its ``consumer_timeout`` (30
    min by default) — and the active poller never acks its token. Seen on 3.10.8 before: the token's
    channel closed without a word to the worker, the token went to the next replica, and from then on
    both consumed the cursor queue (two "active" pollers passing the cursor between them). Now the
    replica whose channel was closed says so (WARNING) and starts over behind the others. A node of
    this test's own with a consumer_timeout of 3 s, checked every 0.5 s."""
    node = private_broker_with(consumer_timeout=3000)
    node.ctl("eval", "application:set_env(rabbit, channel_tick_interval, 500).")  # channels opened from now on
    broker = node.new_vhost()
    monkeypatch.setenv("FLOWNB_QUEUE_TYPE", "quorum")
    flow = flownb.Flow(name=f"ctimeout-{uuid.uuid4().hex[:8]}",
                       trigger=flownb.step("src", "amqptest.count", total=100_000, batch=1, interval="100ms"),
                       steps=[flownb.step("sink", "amqptest.sink", path=str(tmp_path / "unused.db"))]).resolved()
    cursor_q = trigger_queues(flow)[0]
    workers = [TriggerWorker(flow, broker), TriggerWorker(flow, broker)]
    threads = [threading.Thread(target=w.run, daemon=True) for w in workers]
    from flownb.runtime.amqp.topology import connect
    conn = None
    with caplog.at_level(logging.WARNING, logger="flownb"):
        try:
            threads[0].start()
            wait_for(lambda: workers[0].polls >= 3, 30, what="the first replica polling")
            threads[1].start()
            wait_for(lambda: any("timed out" in r.getMessage() and "closed a channel of trigger 'src'" in r.getMessage()
                                 for r in caplog.records), 30, what="the consumer timeout to be reported")
            conn = connect(broker)
            ch = conn.channel()
            readers = []
            for _ in range(12):  # consumers of the cursor queue, as the broker counts them
                readers.append(ch.queue_declare(cursor_q, passive=True).method.consumer_count)
                conn.sleep(0.25)
            before = workers[0].polls + workers[1].polls
            wait_for(lambda: workers[0].polls + workers[1].polls >= before + 5, 20, what="the polls to go on")
        finally:
            for w in workers:
                w.stop()
            for t in threads:
                t.join(30)
            if conn is not None and conn.is_open:
                conn.close()
    assert not any(t.is_alive() for t in threads)
    # one reader at a time (a replica that starts over is gone from the broker before it comes back)
    assert readers.count(2) <= 2, readers
