"""Issue 12 on RabbitMQ: a message that kills its worker process (SIGABRT: ``os.abort()``, and for
real a JSONata expression that exhausts the memory of a worker run under ``RLIMIT_AS``) is
dead-lettered as poison after ``FLOWNB_MAX_DELIVERIES`` (3) deaths instead of crashing every
restart; its innocent neighbours (the rest of the prefetch window, redelivered with it) reach the
sink exactly once. A Python step that runs out of memory raises MemoryError, which is dead-lettered
at once: the worker lives on. Real ``flownb worker`` processes, one per
step, the crashing one restarted whenever it dies, as a restart policy would."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pika
import pytest
from amqp_components import sink_counts, wait_for

import flownb
from flownb.message import Message
from flownb.runtime.amqp import names
from flownb.runtime.amqp.dlq import AmqpDeadLetters
from flownb.runtime.amqp.topology import TopologyError, connect, declare_flow, queue_depths, suspect_queue

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq, pytest.mark.timeout(300)]


@pytest.fixture(params=["quorum", "classic"])
def queue_kind(request, monkeypatch):
    """Poison detection on both queue types: quorum queues count deliveries, on classic queues (the
    default) the worker counts them itself."""
    monkeypatch.setenv("FLOWNB_QUEUE_TYPE", request.param)
    return request.param
RUN_WORKER = Path(__file__).parent / "run_worker.py"
POISON = 7
TOTAL = 20
BOOM = f"""import os

def f(body, ctx):
    if body['n'] == {POISON}:
        os.abort()  # as an expression that exhausts memory would: SIGABRT, no Python clean-up
    return body
"""

#: a JSONata expression that doubles a string until memory runs out (jsonatapy evaluates it: a user
#: function); under the cap, jsonatapy's failed allocation aborts the process
EXHAUST = f'(n = {POISON} ? ($grow := function($s) {{ $grow($s & $s) }}; $grow("poison")) : n)'
#: a Python step that allocates until Python raises MemoryError
GREEDY = f"""def f(body, ctx):
    if body['n'] == {POISON}:
        s = b'poison'
        while True:
            s = s + s  # doubles until the allocation fails under the cap
    return body
"""
#: the address space of a capped worker (``ulimit -v``): above what an uncapped worker reserves
#: (mostly thread stacks and malloc arenas never touched), far too little for what grows without end
MEMORY_CAP = 2 << 30


def _no_core() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _capped() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))
    _no_core()


def _worker(spec: Path, step: str, broker: str, log: Path, cap: bool = False, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(RUN_WORKER), "worker", str(spec), "--step", step],
                            env={"FLOWNB_BROKER_URL": broker, "PATH": "/usr/bin",
                                 "FLOWNB_QUEUE_TYPE": os.environ.get("FLOWNB_QUEUE_TYPE", "classic"), **env},
                            stdout=subprocess.DEVNULL, stderr=log.open("ab"), cwd=log.parent,
                            preexec_fn=_capped if cap else _no_core)  # noqa: PLW1509 - no threads yet


def _stop(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    return proc.wait(60)


def _flow(db: Path, how: str = "abort") -> flownb.Flow:
    boom = {"abort": flownb.step("boom", "python", source=BOOM, function="f"),
            "memory": flownb.step("boom", "mapping", fields={"n": EXHAUST}, timeout="60s"),
            "greedy": flownb.step("boom", "python", source=GREEDY, function="f")}[how]
    return flownb.Flow(name="poison", trigger=flownb.step("src", "amqptest.count", total=TOTAL, interval="50ms"),
                       steps=[boom, flownb.step("sink", "amqptest.sink", path=str(db))])


@pytest.mark.parametrize("how", ["abort", "memory"])
def test_a_message_that_kills_the_worker_is_dead_lettered_after_3_deaths(broker, tmp_path, queue_kind, how):
    """``abort``: os.abort() in a Python step. ``memory``: the worker runs under ``RLIMIT_AS`` and the
    expression really exhausts it (jsonatapy aborts on a failed allocation), no stand-in."""
    db = tmp_path / "sink.db"
    flow = _flow(db, how)
    cap = how == "memory"
    spec = flow.save(tmp_path / "flow.yaml")
    logs = {s: tmp_path / f"{s}.log" for s in ("src", "boom", "sink")}
    others = [_worker(spec, "sink", broker, logs["sink"])]
    deaths: list[int] = []
    boom = _worker(spec, "boom", broker, logs["boom"], cap=cap)
    try:
        # the step's worker consumes before the trigger emits: the 20 records arrive in one window
        wait_for(lambda: b"consuming" in logs["boom"].read_bytes(), timeout=60, what="boom consuming")
        others.append(_worker(spec, "src", broker, logs["src"]))
        store = AmqpDeadLetters(flow.resolved(), broker)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            code = boom.poll()
            if code is not None:  # died: restart it, as a restart policy would (bounded)
                deaths.append(code)
                assert len(deaths) <= 5, f"the worker keeps dying: {deaths}"
                boom = _worker(spec, "boom", broker, logs["boom"], cap=cap)
                continue
            if store.list() and sink_counts(db)[0] == TOTAL - 1:
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"not at rest after 240 s; deaths {deaths}, sink {sink_counts(db)}, "
                                 f"boom log: {logs['boom'].read_text()[-3000:]}")
        resolved = flow.resolved()
        wait_for(lambda: queue_depths(resolved, broker) == {"boom": {"ready": 0, "dead": 1, "retry": 0},
                                                             "sink": {"ready": 0, "dead": 0, "retry": 0}},
                 timeout=30, what="empty queues but the poison dead letter")
        assert boom.poll() is None, "the restarted worker died again"
    finally:
        codes = [_stop(boom), *(_stop(p) for p in others)]
    assert deaths == [-signal.SIGABRT] * 3, deaths
    assert codes == [0, 0, 0], (codes, {s: p.read_text()[-2000:] for s, p in logs.items()})
    if cap:  # the deaths were memory exhaustion, said so by the allocator on the way out
        assert logs["boom"].read_text(errors="replace").count("memory allocation of") == 3
    [dead] = store.list()
    assert dead.step == "boom" and dead.message.body == {"n": POISON}
    assert dead.error.type == "PoisonMessage"
    assert dead.error.message.startswith("poison: the worker died 3 times while processing it (step 'boom')")
    # every other record reached the idempotent sink, once each; none dead-lettered. Delivery is
    # at-least-once: a worker killed between a confirmed output and its input's ack repeats that
    # output (seen under load in CI: 26 arrivals for 19 records), so arrivals are bounded by what the
    # three deaths can have had in flight (one prefetch window each), as in test_faults.py
    seen, arrivals = sink_counts(db)
    assert seen == TOTAL - 1
    assert seen <= arrivals <= seen + 3 * TOTAL
    assert "PoisonMessage" not in logs["sink"].read_text()


def test_a_python_step_out_of_memory_is_dead_lettered_at_once_and_the_worker_goes_on(broker, tmp_path):
    """The same worker under the same cap, a Python step this time: Python turns the failed
    allocation into MemoryError, which unwinds (freeing what the step built) and fails the message
    like any other error: dead-lettered at its first attempt, no death, no restart."""
    db = tmp_path / "sink.db"
    flow = _flow(db, "greedy")
    spec = flow.save(tmp_path / "flow.yaml")
    logs = {s: tmp_path / f"{s}.log" for s in ("src", "boom", "sink")}
    procs = [_worker(spec, "sink", broker, logs["sink"]), _worker(spec, "boom", broker, logs["boom"], cap=True)]
    resolved = flow.resolved()
    store = AmqpDeadLetters(resolved, broker)
    try:
        wait_for(lambda: b"consuming" in logs["boom"].read_bytes(), timeout=60, what="boom consuming")
        procs.append(_worker(spec, "src", broker, logs["src"]))
        wait_for(lambda: sink_counts(db)[0] == TOTAL - 1 and len(store.list()) == 1, timeout=120,
                 what="19 at the sink and one dead letter")
        wait_for(lambda: queue_depths(resolved, broker) == {"boom": {"ready": 0, "dead": 1, "retry": 0},
                                                            "sink": {"ready": 0, "dead": 0, "retry": 0}},
                 timeout=30, what="empty queues but the dead letter")
        assert procs[1].poll() is None, "the capped worker died"
    finally:
        codes = [_stop(p) for p in procs]
    assert codes == [0, 0, 0], (codes, {s: p.read_text()[-2000:] for s, p in logs.items()})
    [dead] = store.list()
    assert dead.step == "boom" and dead.message.body == {"n": POISON}
    assert dead.error.type == "MemoryError" and dead.message.attempt == 1
    assert sink_counts(db) == (TOTAL - 1, TOTAL - 1)  # no death: nothing redelivered, nothing repeated


def _receive_and_die(broker: str, queue: str, n: int) -> None:
    """Take ``n`` messages without acking, then close: the broker returns them (count + 1)."""
    got = []
    conn = connect(broker)
    ch = conn.channel()
    ch.basic_qos(prefetch_count=10)
    ch.basic_consume(queue, lambda *a: got.append(a))
    wait_for(lambda: (conn.process_data_events(0.05), len(got) == n)[1], timeout=30, what=f"{n} deliveries")
    conn.close()


def test_a_redelivered_window_is_processed_one_at_a_time_and_none_is_blamed(broker, tmp_path, queue_kind):
    """Messages redelivered (their worker died holding them) but harmless: moved to the suspect
    queue, processed there, never dead-lettered even after 5 redeliveries."""
    db = tmp_path / "sink.db"
    raw = _flow(db)
    flow = raw.resolved()
    conn = connect(broker)
    ch = conn.channel()
    declare_flow(ch, flow)
    ch.confirm_delivery()
    for n in range(5):  # as if their worker had died 5 times holding them, none running them
        body = Message(body={"n": 100 + n}, flow="poison", step="src").to_json()
        ch.basic_publish(names.exchange("poison"), "boom", body, pika.BasicProperties(delivery_mode=2))
    for _ in range(5):
        _receive_and_die(broker, names.step_queue("poison", "boom"), 5)
    conn.close()
    spec = raw.save(tmp_path / "flow.yaml")
    log = tmp_path / "boom.log"
    procs = [_worker(spec, "boom", broker, log), _worker(spec, "sink", broker, tmp_path / "sink.log")]
    try:
        wait_for(lambda: sink_counts(db)[0] == 5, timeout=60, what="5 at the sink")
        wait_for(lambda: queue_depths(flow, broker)["boom"] == {"ready": 0, "dead": 0, "retry": 0}, timeout=30,
                 what="boom's queues empty")
    finally:
        codes = [_stop(p) for p in procs]
    assert codes == [0, 0]
    assert sink_counts(db) == (5, 5)
    assert AmqpDeadLetters(flow, broker).list() == []
    assert log.read_text().count("a redelivered message (deaths so far: 1) goes to 'flownb.poison.boom.suspect'") == 5


def test_classic_queues_of_an_older_flownb_stop_the_worker_with_what_to_do(broker, tmp_path, monkeypatch):
    flow = _flow(tmp_path / "sink.db").resolved()
    monkeypatch.setenv("FLOWNB_QUEUE_TYPE", "classic")
    conn = connect(broker)
    try:
        declare_flow(conn.channel(), flow)  # as flownb declared them before quorum queues
        monkeypatch.setenv("FLOWNB_QUEUE_TYPE", "quorum")
        with pytest.raises(TopologyError) as err:
            declare_flow(conn.channel(), flow)
        text = str(err.value)
        assert "'flownb.poison.boom' exists as a classic queue" in text
        assert "FLOWNB_QUEUE_TYPE=classic" in text and "rabbitmqctl delete_queue" in text
        monkeypatch.setenv("FLOWNB_QUEUE_TYPE", "classic")
        declare_flow(conn.channel(), flow)  # the switch keeps them working
        # classic queues have their suspect queue too (the worker counts deliveries itself)
        assert conn.channel().queue_declare(suspect_queue("poison", "boom"), passive=True).method.message_count == 0
    finally:
        if conn.is_open:
            conn.close()
    assert os.environ["FLOWNB_QUEUE_TYPE"] == "classic"
