"""A broker that goes silent on a connection that stays up must not leave a step worker waiting
forever (issue 12, "bounded and loud"). Seen on a cluster: after the node leading a flow's quorum
queues was SIGKILLed, workers connected to a surviving node held their inputs for confirms that
never came, or were left registered as consumers of queues that delivered nothing — no basic.cancel,
no connection error, heartbeats fine. Here a TCP relay in front of the machine's broker stops
forwarding the broker's frames while the TCP connection stays open: within FLOWNB_BROKER_TIMEOUT
the worker says what it waited for (WARNING) and starts over on a new connection, which moves the
messages."""

from __future__ import annotations

import logging
import threading
import time
import urllib.parse

import pytest
from amqp_components import publish_to_step, sink_counts, wait_for
from relay import Relay

import flownb
from flownb.runtime.amqp import names
from flownb.runtime.amqp.topology import connect

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq]
TIMEOUT = 3.0  # FLOWNB_BROKER_TIMEOUT of these workers


@pytest.fixture
def relay(broker):
    r = Relay(urllib.parse.urlsplit(broker).port or 5672)
    yield r
    r.close()


def _through(broker: str, relay: Relay) -> str:
    u = urllib.parse.urlsplit(broker)
    return u._replace(netloc=f"{u.username}:{u.password}@127.0.0.1:{relay.port}").geturl()


def _depth(broker: str, queue: str) -> int:
    """Ready messages of ``queue`` (0 while it does not exist yet)."""
    import pika.exceptions
    conn = connect(broker)
    try:
        return conn.channel().queue_declare(queue, passive=True).method.message_count
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == 404:
            return 0
        raise
    finally:
        if conn.is_open:
            conn.close()


def test_a_worker_the_broker_stops_delivering_to_says_so_and_reconnects(broker, relay, running, tmp_path, caplog,
                                                                         monkeypatch):
    """Idle, with ready messages in its queue that never arrive: the worker's probe of its queues
    goes unanswered (or answers 'ready' while nothing comes) — a WARNING and a new connection within
    the timeout, then the messages reach the sink."""
    monkeypatch.setenv("FLOWNB_BROKER_TIMEOUT", f"{TIMEOUT}s")
    db = tmp_path / "sink.db"
    flow = flownb.Flow(name="silent", trigger=flownb.step("src", "amqptest.count", total=0),
                       steps=[flownb.step("sink", "amqptest.sink", path=str(db))])
    with caplog.at_level(logging.WARNING, logger="flownb.runtime.amqp.step_worker"):
        r = running(flow, ["sink"], _through(broker, relay))
        publish_to_step(broker, flow, "sink", range(10))
        wait_for(lambda: sink_counts(db)[0] == 10, what="the first 10 at the sink")
        relay.mute()
        t0 = time.monotonic()
        publish_to_step(broker, flow, "sink", range(10, 20))
        wait_for(lambda: "reconnecting" in caplog.text, timeout=TIMEOUT * 5,
                 what=f"the worker to notice the silent broker within {TIMEOUT * 5:.0f} s")
        noticed = time.monotonic() - t0
        assert "has not answered" in caplog.text or "nothing delivered" in caplog.text, caplog.text
        relay.unmute()  # the old connection's close goes through; the new one is not muted anyway
        wait_for(lambda: sink_counts(db)[0] == 20, timeout=60, what="the next 10 at the sink after the reconnect")
    assert relay.accepted >= 2  # a new connection
    assert r.workers[0].consuming.is_set()
    print(f"\nsilent broker noticed after {noticed:.1f} s (timeout {TIMEOUT} s)")
    assert noticed < TIMEOUT * 5


def test_a_worker_to_which_ready_messages_are_never_delivered_says_so_and_reconnects(broker, relay, running, tmp_path,
                                                                                      caplog, monkeypatch):
    """The watchdog's third case: the broker answers the worker (heartbeats, its queue probe: 'ready
    messages') and its consumer stays registered, but no delivery reaches it — here the relay drops
    every basic.deliver, so the broker counts the first prefetch window as delivered and the rest
    stays ready. Idle with ready messages for longer than the timeout: a WARNING saying so and a new
    connection, which gets every message (the swallowed ones redelivered): nothing lost."""
    from flownb.runtime.amqp.topology import queue_depths
    monkeypatch.setenv("FLOWNB_BROKER_TIMEOUT", f"{TIMEOUT}s")
    db = tmp_path / "sink.db"
    flow = flownb.Flow(name="undelivered", trigger=flownb.step("src", "amqptest.count", total=0),
                       steps=[flownb.step("sink", "amqptest.sink", path=str(db))])
    with caplog.at_level(logging.WARNING, logger="flownb.runtime.amqp.step_worker"):
        r = running(flow, ["sink"], _through(broker, relay), prefetch=5)
        publish_to_step(broker, flow, "sink", range(10))
        wait_for(lambda: sink_counts(db)[0] == 10, what="the first 10 at the sink")
        relay.swallow_deliveries()
        t0 = time.monotonic()
        publish_to_step(broker, flow, "sink", range(10, 30))
        wait_for(lambda: "reconnecting" in caplog.text, timeout=TIMEOUT * 5,
                 what=f"the worker to notice that nothing is delivered within {TIMEOUT * 5:.0f} s")
        noticed = time.monotonic() - t0
        assert "nothing delivered for" in caplog.text and "hold ready messages" in caplog.text, caplog.text
        assert "has not answered" not in caplog.text  # the probe was answered: only deliveries were missing
        assert relay.swallowed == 5  # one prefetch window, unacked on the old connection
        wait_for(lambda: sink_counts(db)[0] == 30, timeout=60, what="all 30 at the sink after the reconnect")
    assert relay.accepted >= 2  # a new connection
    assert r.workers[0].consuming.is_set()
    r.stop()
    assert queue_depths(flow.resolved(), broker)["sink"] == {"ready": 0, "dead": 0, "retry": 0}
    assert sink_counts(db) == (30, 30)  # the swallowed 5 never ran before: each message once
    print(f"\nundelivered ready messages noticed after {noticed:.1f} s (timeout {TIMEOUT} s)")
    assert noticed < TIMEOUT * 5


def test_deliveries_lost_with_nothing_left_ready_end_at_the_brokers_consumer_timeout(private_broker_with, running,
                                                                                      tmp_path, caplog):
    """The watchdog's blind spot: every message was delivered (the queue reports none ready) and the
    deliveries were lost on the way; the worker holds nothing and sees nothing to wait for. The
    broker's consumer_timeout (30 min by default; 3 s on this test's own node, checked every 0.5 s)
    closes the channel of those unacked deliveries: the worker says so and starts over, and the
    messages arrive."""
    node = private_broker_with(consumer_timeout=3000)
    node.ctl("eval", "application:set_env(rabbit, channel_tick_interval, 500).")  # channels opened from now on
    broker = node.new_vhost()
    relay = Relay(urllib.parse.urlsplit(broker).port or 5672)
    db = tmp_path / "sink.db"
    flow = flownb.Flow(name="lostdeliveries", trigger=flownb.step("src", "amqptest.count", total=0),
                       steps=[flownb.step("sink", "amqptest.sink", path=str(db))])
    try:
        with caplog.at_level(logging.WARNING, logger="flownb.runtime.amqp.step_worker"):
            running(flow, ["sink"], _through(broker, relay), prefetch=5)
            publish_to_step(broker, flow, "sink", range(3))
            wait_for(lambda: sink_counts(db)[0] == 3, what="the first 3 at the sink")
            relay.swallow_deliveries()
            publish_to_step(broker, flow, "sink", range(3, 6))  # fewer than the prefetch: none stays ready
            wait_for(lambda: sink_counts(db)[0] == 6, timeout=30, what="the lost 3 at the sink after the timeout")
        assert relay.swallowed == 3
        assert "channel closed by the broker" in caplog.text and "timed out" in caplog.text, caplog.text
    finally:
        relay.close()


def test_a_worker_whose_publishes_the_broker_never_confirms_says_so_and_reconnects(broker, relay, running, tmp_path,
                                                                                   caplog, monkeypatch):
    """Holding inputs whose outputs the broker never confirms (its prefetch window would stay full
    and nothing more would arrive): a WARNING naming the unconfirmed publishes and a new connection
    within the timeout; the inputs return to the queue and their outputs are published again."""
    monkeypatch.setenv("FLOWNB_BROKER_TIMEOUT", f"{TIMEOUT}s")
    flow = flownb.Flow(name="unconfirmed", trigger=flownb.step("src", "amqptest.count", total=0),
                       steps=[flownb.step("work", "amqptest.work", sleep_ms=1500),
                              flownb.step("sink", "amqptest.sink", path=str(tmp_path / "unused.db"))])
    out_q = names.step_queue(flow.name, "sink")  # no sink worker: the outputs stay in its queue
    with caplog.at_level(logging.WARNING, logger="flownb.runtime.amqp.step_worker"):
        r = running(flow, ["work"], _through(broker, relay))
        worker = r.workers[0]
        publish_to_step(broker, flow, "work", range(5))
        wait_for(lambda: not worker.idle, timeout=30, what="the worker holding the inputs")
        relay.mute()  # while the step runs (1.5 s): its outputs go out, their confirms never come back
        t0 = time.monotonic()
        wait_for(lambda: _depth(broker, out_q) >= 1, timeout=30, what="the outputs published")
        wait_for(lambda: "reconnecting" in caplog.text, timeout=TIMEOUT * 5,
                 what=f"the worker to notice the missing confirms within {TIMEOUT * 5:.0f} s")
        noticed = time.monotonic() - t0
        assert "no confirm from the broker" in caplog.text, caplog.text
        relay.unmute()
        wait_for(lambda: _depth(broker, names.step_queue(flow.name, "work")) == 0 and worker.idle
                 and _unacked_gone(broker, flow), timeout=90, what="every input processed again and acked")
    assert relay.accepted >= 2
    assert _depth(broker, out_q) >= 5  # every output, some twice (at-least-once)
    print(f"\nunconfirmed publishes noticed after {noticed:.1f} s (timeout {TIMEOUT} s)")


def _unacked_gone(broker: str, flow: flownb.Flow) -> bool:
    """Nothing left in the work step's queues (its suspect queue holds the redelivered inputs until
    they ran alone)."""
    from flownb.runtime.amqp.topology import suspect_queue
    return all(_depth(broker, q) == 0 for q in (names.step_queue(flow.name, "work"), suspect_queue(flow.name, "work")))


def test_a_quorum_trigger_whose_poll_the_broker_never_answers_drops_the_connection_and_polls_again(
        broker, relay, tmp_path, caplog, monkeypatch):
    """Every wait of a poll (the room check, the confirms of its messages into quorum step queues —
    a transactional publish into a quorum queue is not confirmed —, tx.commit) is bounded: an answer
    that does not come within the timeout ends the connection and the poll is repeated from the
    committed cursor on a new one: nothing lost (at-least-once)."""
    from flownb.runtime.amqp.trigger import TriggerWorker, read_state
    monkeypatch.setenv("FLOWNB_BROKER_TIMEOUT", f"{TIMEOUT}s")
    monkeypatch.setenv("FLOWNB_QUEUE_TYPE", "quorum")
    total = 60
    flow = flownb.Flow(name="unconfirmedpoll", trigger=flownb.step("src", "amqptest.count", total=total, batch=5,
                                                                   interval="300ms"),
                       steps=[flownb.step("sink", "amqptest.sink", path=str(tmp_path / "unused.db"))]).resolved()
    out_q = names.step_queue(flow.name, "sink")  # no sink worker: what the trigger emitted stays here
    worker = TriggerWorker(flow, _through(broker, relay))
    t = threading.Thread(target=worker.run, daemon=True)
    with caplog.at_level(logging.WARNING, logger="flownb.runtime.amqp.trigger"):
        t.start()
        try:
            wait_for(lambda: _depth(broker, out_q) >= 10, timeout=60, what="the first polls")
            relay.mute()  # the next poll's frames reach the broker; no answer comes back
            t0 = time.monotonic()
            wait_for(lambda: "no answer from the broker" in caplog.text, timeout=TIMEOUT * 5,
                     what=f"the trigger to give up on the broker within {TIMEOUT * 5:.0f} s")
            noticed = time.monotonic() - t0
            relay.unmute()
            wait_for(lambda: _depth(broker, out_q) >= total, timeout=90,
                     what="every record in the step queue after the reconnect")
        finally:
            worker.stop()
            t.join(30)
    assert not t.is_alive()
    assert read_state(flow, broker) == {"next": total}  # the cursor at the end (released by the stopped poller)
    assert relay.accepted >= 2
    got = _depth(broker, out_q)
    print(f"\nunanswered poll noticed after {noticed:.1f} s (timeout {TIMEOUT} s); {got} messages for {total} "
          f"records (duplicates {got - total})")
