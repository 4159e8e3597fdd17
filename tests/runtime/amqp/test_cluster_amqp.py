"""A flow on a three-node RabbitMQ cluster (private nodes beside the machine's broker, quorum
queues): a node the step workers are connected to stops mid-run, they reconnect to another node of
their comma-separated FLOWNB_BROKER_URL, and every record reaches the idempotent sink."""

from __future__ import annotations

import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from amqp_components import sink_counts, wait_for

import flownb

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq, pytest.mark.slow, pytest.mark.timeout(600)]
RUN_WORKER = Path(__file__).parent / "run_worker.py"
TOTAL = 600


@pytest.fixture
def cluster(new_private_node):
    cookie = uuid.uuid4().hex
    tag = uuid.uuid4().hex[:6]
    nodes = [new_private_node(f"fnbc{tag}{i}", cookie=cookie) for i in range(3)]
    for n in nodes:
        n.start()
    for n in nodes[1:]:
        n.join(nodes[0])
    running = nodes[0].ctl("eval", "length(rabbit_mnesia:cluster_nodes(running)).").strip()
    assert running == "3", f"the cluster has {running} running nodes"
    return nodes


def _worker(spec: Path, step: str, url: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(RUN_WORKER), "worker", str(spec), "--step", step],
                            env={"FLOWNB_BROKER_URL": url, "FLOWNB_QUEUE_TYPE": "quorum", "PATH": "/usr/bin"},
                            stdout=subprocess.DEVNULL, stderr=log.open("ab"), cwd=log.parent)


def test_a_node_stops_mid_run_and_the_workers_go_on_through_another(cluster, tmp_path):
    a, b, c = cluster
    db = tmp_path / "sink.db"
    flow = flownb.Flow(name="ha", trigger=flownb.step("src", "amqptest.count", total=TOTAL, batch=50,
                                                      interval="100ms"),
                       steps=[flownb.step("work", "amqptest.work", sleep_ms=5, replicas=2),
                              flownb.step("sink", "amqptest.sink", path=str(db))])
    spec = flow.save(tmp_path / "flow.yaml")
    # the trigger keeps its cursor in a classic queue, which lives on the node that declared it first
    # (docs/rabbitmq.md): the trigger starts first, on a node that stays up; the step workers are
    # connected to the node that stops
    trigger_url = ",".join([a.url, c.url, b.url])
    steps_url = ",".join([b.url, a.url, c.url])
    logs = {s: tmp_path / f"{s}.log" for s in ("src", "work", "sink")}
    procs = [_worker(spec, "src", trigger_url, logs["src"])]
    try:
        from flownb.runtime.amqp import names
        from flownb.runtime.amqp.topology import _count, connect
        conn = connect(a.url)
        wait_for(lambda: _count(conn, names.step_queue("ha", "work")) > 0, timeout=120, what="the first poll")
        conn.close()
        procs += [_worker(spec, "work", steps_url, logs["work"]), _worker(spec, "sink", steps_url, logs["sink"])]
        wait_for(lambda: sink_counts(db)[0] >= TOTAL // 4, timeout=180, what="a quarter of the rows at the sink")
        before = sink_counts(db)[0]
        b.stop()  # the node the step workers are connected to: gone, its data with it
        wait_for(lambda: sink_counts(db)[0] == TOTAL, timeout=300,
                 what=f"all {TOTAL} rows at the sink after the node stopped (had {before})")
        for p in procs:
            assert p.poll() is None, f"a worker died: {p.args}"
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        codes = [p.wait(90) for p in procs]
    seen, arrivals = sink_counts(db)
    assert seen == TOTAL and before < TOTAL  # the stop happened mid-run
    assert arrivals >= seen  # at-least-once: a batch in flight when the node stopped may arrive twice
    assert codes == [0, 0, 0], {s: p.read_text()[-2000:] for s, p in logs.items()}
    work_log = logs["work"].read_text()
    assert "reconnect" in work_log.lower() or "cannot connect" in work_log.lower(), work_log[-2000:]
