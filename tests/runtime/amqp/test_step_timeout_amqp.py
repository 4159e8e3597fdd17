"""A step whose component hangs (a call without a timeout) holds its batch in the processing thread
for ever while the worker looks alive: its queue waits, nothing moves. With ``FLOWNB_STEP_TIMEOUT``
the worker gives up on such a batch as on a dead thread: ``flownb worker`` says why and exits 70,
the broker gives the batch back, and after ``FLOWNB_MAX_DELIVERIES`` such deaths the message that
hangs is dead-lettered as poison, while the others go through (docs/rabbitmq.md). A JSONata
expression that never ends needs no such help: the step's evaluation deadline dead-letters the
message ("evaluation exceeded") and the worker goes on."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from amqp_components import publish_to_step, sink_counts, wait_for

import flownb
from flownb.runtime.amqp.dlq import AmqpDeadLetters
from flownb.runtime.amqp.topology import queue_depths

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq]
RUN_WORKER = Path(__file__).parent / "run_worker.py"


#: never ends (jsonatapy: a recursive lambda that recurses for ever) for n = 1, else n * 10
SPIN = "n = 1 ? ($f := function($n){ $n > -1 ? $f($n) : 0 }; $f(1)) : n * 10"


def _worker(spec: Path, broker: str, log: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(RUN_WORKER), "worker", str(spec), "--step", "work"],
                            env={**os.environ, "FLOWNB_BROKER_URL": broker, **env},
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)


def test_a_step_that_hangs_ends_its_worker_with_70_and_is_dead_lettered_as_poison(broker, running, tmp_path):
    db = tmp_path / "sink.db"
    flow = flownb.Flow(name=f"hang-{uuid.uuid4().hex[:8]}",
                       trigger=flownb.step("src", "amqptest.count", total=0),
                       steps=[flownb.step("work", "amqptest.hang", on=1),
                              flownb.step("sink", "amqptest.sink", path=str(db))])
    spec = flow.save(tmp_path / "flow.yaml")
    sink = running(flow, ["sink"], broker)
    log = tmp_path / "worker.log"
    publish_to_step(broker, flow, "work", range(3))  # n = 1 hangs

    def dead() -> int:
        return queue_depths(flow.resolved(), broker)["work"]["dead"]
    deaths = 0
    t0 = time.monotonic()
    while True:
        assert deaths <= 2, f"still not dead-lettered after {deaths} deaths:\n{log.read_text()[-3000:]}"
        p = _worker(spec, broker, log, FLOWNB_STEP_TIMEOUT="2s", FLOWNB_MAX_DELIVERIES="2")
        try:
            wait_for(lambda p=p: p.poll() is not None or dead() == 1, 40,
                     what=f"the hanging worker to exit or its message to be dead-lettered:\n{log.read_text()[-3000:]}")
        finally:
            if p.poll() is None:
                p.terminate()  # the message that hangs is dead-lettered: this worker has nothing to hang on
                assert p.wait(60) == 0
        if p.returncode != 0:
            assert p.returncode == 70, log.read_text()[-3000:]
            deaths += 1
        if dead() == 1:
            break
    print(f"\n{deaths} worker deaths, the hanging message dead-lettered after {time.monotonic() - t0:.0f} s")
    assert deaths == 2  # the batch (0, 1, 2), then 1 alone as a suspect; the third worker dead-letters it
    assert "longer than FLOWNB_STEP_TIMEOUT (2 s)" in log.read_text()
    wait_for(lambda: sink_counts(db)[0] == 2, 30, what="the two other messages at the sink")
    sink.stop()
    assert queue_depths(flow.resolved(), broker)["work"] == {"ready": 0, "dead": 1, "retry": 0}


def test_a_never_ending_expression_is_dead_lettered_and_the_worker_goes_on(broker, running, tmp_path):
    """A real ``flownb worker`` for a mapping step whose expression never ends for one message: that
    message is dead-lettered with EvaluationTimeout after the step's timeout (1 s), the others reach
    the sink, the same worker process goes on with messages published afterwards and exits 0."""
    db = tmp_path / "sink.db"
    flow = flownb.Flow(name=f"spin-{uuid.uuid4().hex[:8]}",
                       trigger=flownb.step("src", "amqptest.count", total=0),
                       steps=[flownb.step("work", "mapping", fields={"n": "n", "y": SPIN}, timeout="1s"),
                              flownb.step("sink", "amqptest.sink", path=str(db))])
    assert flownb.rules.compile(SPIN).engine == "jsonatapy"
    spec = flow.save(tmp_path / "flow.yaml")
    resolved = flow.resolved()
    sink = running(flow, ["sink"], broker)
    log = tmp_path / "worker.log"
    publish_to_step(broker, flow, "work", range(3))  # n = 1 never ends
    p = _worker(spec, broker, log)
    store = AmqpDeadLetters(resolved, broker)
    try:
        wait_for(lambda: sink_counts(db)[0] == 2 and len(store.list()) == 1, 60,
                 what=f"two at the sink, one dead letter:\n{log.read_text()[-3000:]}")
        publish_to_step(broker, flow, "work", range(10, 13))  # the same worker goes on
        wait_for(lambda: sink_counts(db)[0] == 5, 60, what=f"the later three at the sink:\n{log.read_text()[-3000:]}")
        assert p.poll() is None, log.read_text()[-3000:]
    finally:
        if p.poll() is None:
            p.terminate()
        code = p.wait(60)
        sink.stop()
    assert code == 0, log.read_text()[-3000:]
    [dead] = store.list()
    assert dead.step == "work" and dead.message.body == {"n": 1}
    assert dead.error.type == "EvaluationTimeout" and not dead.error.retryable and dead.message.attempt == 1
    assert dead.error.message == ("evaluation exceeded 1 s (step 'work', field 'y'); simplify the expression "
                                  "or raise the step's timeout")
    assert sink_counts(db) == (5, 5)
    assert queue_depths(resolved, broker)["work"] == {"ready": 0, "dead": 1, "retry": 0}


def test_the_step_timeout_is_a_positive_duration_or_unset(monkeypatch):
    from flownb.errors import RuntimeFailure
    from flownb.runtime.health import step_timeout
    monkeypatch.delenv("FLOWNB_STEP_TIMEOUT", raising=False)
    assert step_timeout() is None
    monkeypatch.setenv("FLOWNB_STEP_TIMEOUT", "15m")
    assert step_timeout() == 900.0
    for bad in ("0s", "soon", "-5s"):
        monkeypatch.setenv("FLOWNB_STEP_TIMEOUT", bad)
        with pytest.raises(RuntimeFailure, match="FLOWNB_STEP_TIMEOUT=.* is not a positive duration; set it to"):
            step_timeout()
