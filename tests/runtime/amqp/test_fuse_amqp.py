"""``fuse: [a, b]`` on RabbitMQ: one worker runs the group as one stage; retries and dead letters stay
per step (a retry of the second step resumes at it, in the same worker)."""

from __future__ import annotations

import pytest
from amqp_components import sink_counts, wait_for

import flownb
from flownb.errors import RuntimeFailure
from flownb.runtime.amqp.dlq import AmqpDeadLetters
from flownb.runtime.amqp.worker import make_worker

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq]


def _flow(name, db) -> flownb.Flow:
    return flownb.Flow(
        name=name,
        trigger=flownb.step("src", "amqptest.count", total=300, batch=100, poison=[10, 150], interval="100ms"),
        steps=[flownb.step("shape", "mapping", fields={"n": "n", "poison": "poison"}),
               flownb.step("work", "amqptest.work", retry={"max_attempts": 3, "initial": "200ms"}),
               flownb.step("sink", "amqptest.sink", path=str(db))],
        fuse=[["shape", "work"]])


def test_a_fused_group_runs_in_one_worker_and_keeps_retries_and_dead_letters_per_step(broker, running, tmp_path):
    db = tmp_path / "sink.db"
    flow = _flow("fused", db)
    r = running(flow, ["src", "shape", "sink"], broker)   # no worker of its own for 'work'
    dead = wait_for(lambda: (lambda d: d if len(d) == 2 else None)(AmqpDeadLetters(flow, broker).list()),
                    timeout=60, what="the two poison messages dead-lettered")
    wait_for(lambda: sink_counts(db)[0] == 298, what="298 messages at the sink")
    r.stop()
    assert sink_counts(db) == (298, 298)
    # retried at 'work' (3 attempts, in the fused worker) and dead-lettered there, with the body
    # 'work' received from 'shape'
    assert sorted(d.message.body["n"] for d in dead) == [10, 150]
    assert all(d.step == "work" and d.error.attempt == 3 and d.message.body["poison"] is True for d in dead)


def test_a_step_of_a_fused_group_has_no_worker_of_its_own(tmp_path):
    flow = _flow("fused-solo", tmp_path / "sink.db").resolved()
    with pytest.raises(RuntimeFailure, match=r"step 'work' runs in the worker of step 'shape'.*--step shape"):
        make_worker(flow, "work", "amqp://guest:guest@127.0.0.1:5672/")
