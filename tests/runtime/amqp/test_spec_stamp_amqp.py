"""Every message carries the hash of the spec that produced it (``meta.spec``) on RabbitMQ, read back
from the queues a real worker process wrote: the trigger's messages, a step's outputs, a retry in its
delay queue and the dead letters (whose error keeps the spec they died under); ``flownb dlq list/show``
and ``flownb.dead_letters`` show it, and a replay stamps the spec it ran under. The embedded runtime:
tests/runtime/test_spec_stamp_local.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from amqp_components import drain_queue, wait_for

import flownb
from flownb.runtime.amqp import names
from flownb.runtime.amqp.topology import ERROR_HEADER, queue_depths, retry_levels
from flownb.workbench import REPLAY_SPEC

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq]

RUN_WORKER = Path(__file__).parent / "run_worker.py"
N = 20  # n = 3 waits in the delay queue; 0, 5, 10, 15 die at 'check'


def _flow(sink: Path, fixed: bool = False) -> flownb.Flow:
    rule = '$number(n % 5 = 0 ? "n/a" : "1")' if not fixed else '$number(n % 5 = 0 ? "0" : "1")'
    return flownb.Flow(name="stamped", trigger=flownb.step("src", "amqptest.count", total=N, poison=[3]),
                       steps=[flownb.step("work", "amqptest.work", retry={"max_attempts": 2, "initial": "10m"}),
                              flownb.step("check", "mapping", fields={"n": "n", "v": rule}),
                              flownb.step("sink", "amqptest.sink", path=str(sink))])


def _worker(spec: Path, step: str, broker: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(RUN_WORKER), "worker", str(spec), "--step", step],
                            env={**os.environ, "FLOWNB_BROKER_URL": broker},
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)


def _drain(broker: str, queue: str) -> list[tuple[dict, dict]]:
    return [(m, props.headers or {}) for m, props in drain_queue(broker, queue)]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(RUN_WORKER), *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "250"})


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
def test_messages_retries_and_dead_letters_on_the_broker_carry_the_spec_hash(broker, tmp_path, monkeypatch,
                                                                            queue_type):
    monkeypatch.setenv("FLOWNB_QUEUE_TYPE", queue_type)
    flow = _flow(tmp_path / "sink.db")
    h = flow.spec_hash(short=True)
    spec = flow.save(tmp_path / "flow.yaml")
    procs = [_worker(spec, s, broker, tmp_path / f"{s}.log") for s in ("work", "check", "src")]  # no sink worker
    try:
        wait_for(lambda: queue_depths(flow, broker)["sink"]["ready"] == N - 5, timeout=90,
                 what="the checked records waiting at 'sink'")
        wait_for(lambda: queue_depths(flow, broker)["check"]["dead"] == 4, what="the dead letters of 'check'")
        assert queue_depths(flow, broker)["work"]["retry"] == 1
    finally:
        for p in procs:
            p.terminate()
        logs = {p.args[-1]: (p.wait(60), (tmp_path / f"{p.args[-1]}.log").read_text()) for p in procs}
    assert all(code == 0 for code, _ in logs.values()), logs

    df = flownb.dead_letters(flow, broker=broker)
    assert sorted(df["n"]) == [0, 5, 10, 15] and list(df["_spec"]) == [h] * 4
    listed = _cli("dlq", "list", str(spec), "--broker", broker, "--step", "check")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.count(h) == 4, listed.stdout
    shown = _cli("dlq", "show", str(spec), "--broker", broker, "--id", str(df["_id"].iloc[0]))
    assert shown.returncode == 0 and orjson.loads(shown.stdout)["spec"] == h, shown.stdout + shown.stderr

    at_sink = _drain(broker, names.step_queue(flow.name, "sink"))  # outputs of the step 'check'
    assert sorted(m["body"]["n"] for m, _ in at_sink) == [n for n in range(N) if n % 5 and n != 3]
    assert {(m["meta"]["step"], m["meta"]["spec"]) for m, _ in at_sink} == {("check", h)}
    level = retry_levels(flow.step("work").retry_policy)[0]
    [(retried, headers)] = _drain(broker, names.retry_queue(flow.name, "work", level))  # the trigger's message
    assert (retried["body"]["n"], retried["meta"]["step"], retried["meta"]["spec"]) == (3, "src", h)
    assert retried["meta"]["attempt"] == 2 and orjson.loads(headers[ERROR_HEADER])["spec"] == h

    fixed = _flow(tmp_path / "sink.db", fixed=True)
    h2 = fixed.spec_hash(short=True)
    assert h2 != h
    done = flownb.replay(df, fixed, broker=broker)
    assert len(done) == 4
    replayed = _drain(broker, names.step_queue(flow.name, "check"))
    assert sorted(m["body"]["n"] for m, _ in replayed) == [0, 5, 10, 15]
    assert {(m["meta"]["spec"], m["headers"][REPLAY_SPEC]) for m, _ in replayed} == {(h2, fixed.spec_hash())}
    plan = _cli("plan", str(spec), str(fixed.save(tmp_path / "fixed.yaml")), "--broker", broker)
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert f"spec {flow.spec_hash()} → {fixed.spec_hash()}" in plan.stdout
    assert "queued messages per spec version: not counted on RabbitMQ" in plan.stdout
