"""Retries, dead letters, replay and back-pressure on a real broker."""

from __future__ import annotations

import threading

import pika
import pytest
from amqp_components import sink_counts, wait_for

import flownb
from flownb.cli import main
from flownb.runtime.amqp import names
from flownb.runtime.amqp.dlq import AmqpDeadLetters
from flownb.runtime.amqp.topology import queue_depths

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq]


def poison_flow(db, fix, total=300, max_attempts=3):
    return flownb.Flow(
        name="poison",
        trigger=flownb.step("src", "amqptest.count", total=total, batch=100, poison=[7], interval="100ms"),
        steps=[flownb.step("work", "amqptest.work", fix_file=str(fix),
                           retry={"max_attempts": max_attempts, "initial": "200ms", "max": "1s"}),
               flownb.step("sink", "amqptest.sink", path=str(db))])


def test_poison_goes_to_the_dlq_after_max_attempts_and_replay_delivers_it(broker, running, tmp_path):
    db, fix = tmp_path / "sink.db", tmp_path / "fixed"
    flow = poison_flow(db, fix)
    r = running(flow, ["src", "work", "sink"], broker)
    wait_for(lambda: sink_counts(db)[0] == 299, what="the 299 good messages")
    store = AmqpDeadLetters(flow, broker)
    dead = wait_for(lambda: store.list(), what="the dead letter")
    assert len(dead) == 1
    d = dead[0]
    assert (d.step, d.message.body, d.error.attempt) == ("work", {"n": 7, "poison": True}, 3)
    assert d.error.type == "RetryableError" and "poison message 7" in d.error.message
    assert "Traceback" in d.error.traceback
    assert store.show(d.id).message.body == d.message.body
    assert store.list() and queue_depths(flow, broker)["work"]["dead"] == 1  # listing keeps them

    fix.touch()  # "the fix"
    assert store.replay("work", [d.id]) == 1
    wait_for(lambda: sink_counts(db)[0] == 300, what="the replayed message")
    r.stop()
    assert store.list() == []
    assert sink_counts(db) == (300, 300)


def test_dlq_cli_lists_and_replays_against_the_broker(broker, running, tmp_path, capsys):
    db, fix = tmp_path / "sink.db", tmp_path / "fixed"
    flow = poison_flow(db, fix, total=20, max_attempts=1)
    spec = flow.save(tmp_path / "flow.yaml")
    r = running(flow, ["src", "work", "sink"], broker)
    wait_for(lambda: AmqpDeadLetters(flow, broker).list(), what="the dead letter")
    assert main(["dlq", "list", str(spec), "--broker", broker]) == 0
    out = capsys.readouterr().out
    assert "1 dead letter(s)" in out and "RetryableError" in out
    fix.touch()
    assert main(["dlq", "replay", str(spec), "--broker", broker, "--step", "work"]) == 0
    assert "replayed 1 dead letter(s)" in capsys.readouterr().out
    wait_for(lambda: sink_counts(db)[0] == 20, what="all 20")
    r.stop()


def test_fatal_errors_dead_letter_at_once(broker, running, tmp_path):
    # a ValueError is not transient: dead-lettered at attempt 1 although 5 attempts are allowed.
    # (A component whose setup() fails is not the messages' fault: they stay queued, see
    # test_setup_failure_amqp.py.)
    source = "def check(body, ctx):\n    raise ValueError(f\"bad record {body['n']}\")\n"
    flow = flownb.Flow(name="fatal", trigger=flownb.step("src", "amqptest.count", total=10, interval="100ms"),
                       steps=[flownb.step("sink", "python", source=source, function="check",
                                          retry={"max_attempts": 5, "initial": "100ms"})])
    running(flow, ["src", "sink"], broker)
    dead = wait_for(lambda: len(AmqpDeadLetters(flow, broker).list()) == 10 and AmqpDeadLetters(flow, broker).list(),
                    what="10 dead letters")
    assert {d.error.type for d in dead} == {"ValueError"}
    assert {d.error.attempt for d in dead} == {1}
    assert sorted(d.message.body["n"] for d in dead) == list(range(10))
    assert {d.error.message for d in dead} == {f"bad record {n}" for n in range(10)}


def _sample_depth(broker: str, queue: str, sampling: threading.Event, out: list[int]) -> None:
    """Append the ready depth of ``queue`` (a passive declare) as often as the broker answers."""
    conn = pika.BlockingConnection(pika.URLParameters(broker))
    try:
        ch = conn.channel()
        while sampling.is_set():
            out.append(ch.queue_declare(queue, passive=True).method.message_count)
    finally:
        conn.close()


#: a quorum queue's x-max-length is reached asynchronously (RabbitMQ 3.10: the queue tells its
#: publishers to reject only after the enqueue that crossed the limit, and lets them in again below
#: 80 %): publishes already in flight get in, so its depth can pass the limit by one burst of the
#: upstream worker's outputs — at most its prefetch window (100 here) — plus the crossing one.
#: Classic queues enforce the limit exactly.
PEAK = {"classic": 40, "quorum": 40 + 100 + 1}


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
def test_full_queues_push_back_without_losing_messages(broker, running, tmp_path, monkeypatch, queue_type):
    monkeypatch.setenv("FLOWNB_QUEUE_TYPE", queue_type)
    monkeypatch.setenv("FLOWNB_MAX_QUEUE_LENGTH", "40")
    db = tmp_path / "sink.db"
    flow = flownb.Flow(
        name="pressure", trigger=flownb.step("src", "amqptest.count", total=1500, batch=30, interval="10ms"),
        steps=[flownb.step("work", "amqptest.work", prefetch=100),
               flownb.step("sink", "amqptest.sink", path=str(db), sleep_ms=2, prefetch=10)])
    from flownb.runtime.amqp.metrics import NACKED
    nacked_before = NACKED.labels("pressure", "work")._value.get()  # both variants run in this process
    peaks: list[int] = []
    sampling = threading.Event()
    sampler = threading.Thread(target=_sample_depth, args=(broker, names.step_queue("pressure", "sink"),
                                                          sampling, peaks), daemon=True)
    r = running(flow, ["src", "work", "sink"], broker)
    sampling.set()
    sampler.start()
    try:
        wait_for(lambda: sink_counts(db)[0] == 1500, timeout=120, what="1500 messages through full queues")
    finally:
        sampling.clear()
        sampler.join(30)
    r.stop()
    assert sink_counts(db) == (1500, 1500)
    # the sink queue's depth, read back to back on one channel the whole time (was: every 0.2 s)
    assert len(peaks) > 100 and max(peaks) <= PEAK[queue_type], (len(peaks), max(peaks, default=None))
    assert NACKED.labels("pressure", "work")._value.get() > nacked_before  # the broker did refuse publishes


def test_dlq_fails_over_past_a_dead_node_and_logs_library_lines_only_with_v(broker, running, tmp_path):
    """``flownb dlq`` against a broker URL whose first node is down (nothing listens on port 1): from
    FLOWNB_BROKER_URL (the short form, a second host in one URL) and from a repeated --broker, it
    goes on to the live node. ``dlq show`` prints the dead letter and, without -v, none of pika's
    lines; with -v pika's DEBUG lines too."""
    import json
    import os
    import subprocess
    import sys
    import urllib.parse
    from pathlib import Path

    db, fix = tmp_path / "sink.db", tmp_path / "fixed"
    flow = poison_flow(db, fix, total=20, max_attempts=1)
    spec = flow.save(tmp_path / "flow.yaml")
    r = running(flow, ["src", "work", "sink"], broker)
    dead = wait_for(lambda: AmqpDeadLetters(flow, broker).list(), what="the dead letter")
    r.stop()
    vhost = urllib.parse.urlsplit(broker).path  # /flownb-test-…
    short = f"amqp://guest:guest@127.0.0.1:1,127.0.0.1:5672{vhost}"  # the dead node first
    run_worker = Path(__file__).parent / "run_worker.py"  # flownb's CLI with the test components

    def flownb_cli(*args: str, url: str | None = None) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if k != "FLOWNB_BROKER_URL"}
        if url:
            env["FLOWNB_BROKER_URL"] = url
        return subprocess.run([sys.executable, str(run_worker), *args], capture_output=True, text=True,
                              timeout=120, env=env, cwd=tmp_path)

    quiet = flownb_cli("dlq", "show", str(spec), "--id", dead[0].id, url=short)
    assert quiet.returncode == 0, quiet.stderr
    shown = json.loads(quiet.stdout)
    assert shown["message"]["body"] == {"n": 7, "poison": True} and shown["error"]["type"] == "RetryableError"
    assert "pika" not in quiet.stderr and "INFO" not in quiet.stderr, quiet.stderr
    loud = flownb_cli("-v", "dlq", "show", str(spec), "--id", dead[0].id, url=short)
    assert loud.returncode == 0 and json.loads(loud.stdout) == shown, loud.stderr
    assert "DEBUG pika" in loud.stderr  # with -v the libraries' lines too
    listed = flownb_cli("dlq", "list", str(spec), "--broker", f"amqp://guest:guest@127.0.0.1:1{vhost}",
                        "--broker", broker)
    assert listed.returncode == 0 and "1 dead letter(s)" in listed.stdout, listed.stderr
    assert "pika" not in listed.stderr, listed.stderr
    down = flownb_cli("dlq", "list", str(spec), "--broker", f"amqp://guest:guest@127.0.0.1:1{vhost}")
    assert down.returncode == 1 and "cannot connect to RabbitMQ" in down.stderr, down.stderr
