"""A flow on a three-node RabbitMQ cluster (scripts/rabbitmq-cluster: three nodes of the installed
rabbitmq-server beside the machine's broker, quorum queues): the node that leads the step queues
stops mid-run, the workers go on through the surviving nodes of their FLOWNB_BROKER_URL, the node
rejoins, and every record reaches the idempotent sink."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from amqp_components import sink_counts, wait_for

import flownb

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq, pytest.mark.slow, pytest.mark.timeout(900)]
RUN_WORKER = Path(__file__).parent / "run_worker.py"
TOTAL = 20_000


@pytest.fixture
def cluster(rabbitmq_cluster):
    from flownb.runtime.amqp.topology import broker_urls
    running = rabbitmq_cluster.running()
    assert len(running) == 3, f"the cluster runs {running}"
    # 'scripts/rabbitmq-cluster urls' prints the short form: one URL naming the three nodes
    assert broker_urls(rabbitmq_cluster.url) == [n.url for n in rabbitmq_cluster.nodes]
    return rabbitmq_cluster.nodes


def _worker(spec: Path, step: str, url: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(RUN_WORKER), "worker", str(spec), "--step", step],
                            env={"FLOWNB_BROKER_URL": url, "FLOWNB_QUEUE_TYPE": "quorum", "PATH": "/usr/bin"},
                            stdout=subprocess.DEVNULL, stderr=log.open("ab"), cwd=log.parent)


def _wait_all_at_sink(db: Path, total: int, timeout: float, when: str, node, logs: dict[str, Path]) -> None:
    """Until ``total`` rows are in the sink; else fail saying where they stopped: the sink, the
    queues (asked of a running ``node``) and the workers' logs."""
    try:
        wait_for(lambda: sink_counts(db)[0] == total, timeout=timeout, what=f"all {total} rows at the sink {when}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; at the sink {sink_counts(db)}\n{_queues(node)}\n" + "\n".join(
            f"--- {s}:\n{p.read_text()[-2500:]}" for s, p in logs.items())) from None


def _sink_rows(db: Path) -> tuple[int, int, int]:
    """(rows, sum of n, rows whose body went through both work steps) in the sink's ``seen`` table."""
    import sqlite3
    con = sqlite3.connect(db, timeout=30)
    try:
        return con.execute("select count(*), coalesce(sum(n), 0), "
                           "sum(json_extract(body, '$.w') = 2 * n and json_extract(body, '$.v') = 3 * n) "
                           "from seen").fetchone()
    finally:
        con.close()


def test_the_node_leading_the_step_queues_stops_mid_run_and_the_flow_goes_on_and_it_rejoins(
        cluster, rabbitmq_cluster, tmp_path, monkeypatch):
    """20,000 records through three steps (one worker each) on quorum queues. The node that leads
    every step queue (they were declared through it) — and that the step workers are connected to —
    stops while the records flow; the workers reconnect to the surviving nodes and go on: the third
    quarter of the records, which the trigger emits only once the node is down, reaches the sink
    while it is down. The node starts again and rejoins the cluster, the trigger emits the last
    quarter, and the flow finishes: every record is in the idempotent sink once (``seen``, keyed by
    the record). The sink also counts arrivals: a batch a worker held unacked when its connection
    went is delivered again (at-least-once between steps; docs/rabbitmq.md, "A cluster"), so
    arrivals may exceed 20,000."""
    from flownb.runtime.amqp import names
    from flownb.runtime.amqp.topology import connect, declare_flow
    monkeypatch.setenv("FLOWNB_QUEUE_TYPE", "quorum")  # as the workers: declare_flow below
    a, b, c = cluster
    db, gate, gate2 = tmp_path / "sink.db", tmp_path / "node-down", tmp_path / "node-back"
    half, three_quarters = TOTAL // 2, TOTAL * 3 // 4
    flow = flownb.Flow(name="ha", trigger=flownb.step("src", "amqptest.count", total=TOTAL, batch=500,
                                                      interval="50ms", gate=str(gate), hold_from=half,
                                                      gate2=str(gate2), hold_from2=three_quarters),
                       steps=[flownb.step("double", "amqptest.work"),
                              flownb.step("triple", "amqptest.triple"),
                              flownb.step("sink", "amqptest.sink", path=str(db))])
    spec = flow.save(tmp_path / "flow.yaml")
    # a quorum queue's leader starts on the node that declares it: the flow is declared through a,
    # and the step workers are connected to a first (the short form: one URL, the hosts of the nodes)
    conn = connect(a.url)
    declare_flow(conn.channel(), flow)
    conn.close()
    step_queues = [names.step_queue("ha", s) for s in ("double", "triple", "sink")]
    leaders = {q: _leader(b, q) for q in step_queues}
    assert set(leaders.values()) == {f"{a.name}@localhost"}, leaders
    steps_url = f"amqp://guest:guest@127.0.0.1:{a.port},127.0.0.1:{b.port},127.0.0.1:{c.port}/"
    trigger_url = f"amqp://guest:guest@127.0.0.1:{c.port},127.0.0.1:{b.port},127.0.0.1:{a.port}/"
    logs = {s: tmp_path / f"{s}.log" for s in ("src", "double", "triple", "sink")}
    procs = [_worker(spec, s, steps_url, logs[s]) for s in ("double", "triple", "sink")]
    procs.append(_worker(spec, "src", trigger_url, logs["src"]))
    t0 = time.monotonic()
    try:
        wait_for(lambda: sink_counts(db)[0] >= TOTAL // 5, timeout=300, what="a fifth of the records at the sink")
        at_stop, t_stop = sink_counts(db)[0], time.monotonic()
        a.stop()  # the leader of every step queue, and the step workers' node
        down_at, t_down = sink_counts(db)[0], time.monotonic()
        gate.touch()  # the third quarter is emitted now, with a down
        # the workers go on against b and c: the third quarter reaches the sink while a is down
        wait_for(lambda: sink_counts(db)[0] >= three_quarters, timeout=300,
                 what=f"the third quarter of the records at the sink while {a.name} is down (had {down_at})")
        new_leaders = {q: _leader(b, q) for q in step_queues}
        assert f"{a.name}@localhost" not in new_leaders.values(), new_leaders
        with pytest.raises(OSError):  # still down
            socket.create_connection(("127.0.0.1", a.port), timeout=2).close()
        at_start = sink_counts(db)[0]
        a.start()  # on its data: it rejoins the cluster
        running = wait_for(lambda: len(rabbitmq_cluster.running()) == 3 and rabbitmq_cluster.running(),
                           timeout=120, what=f"{a.name} to rejoin the cluster")
        gate2.touch()  # the last quarter, with a back
        _wait_all_at_sink(db, TOTAL, 600, f"after the node stopped (had {at_stop})", b, logs)
        seconds = time.monotonic() - t0
        for p in procs:
            assert p.poll() is None, f"a worker died: {p.args}"
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        codes = [p.wait(90) for p in procs]
    seen, arrivals = sink_counts(db)
    rows, total_n, through = _sink_rows(db)
    print(f"\nstep-queue leader failover: records {TOTAL:,}, distinct at the sink {seen:,}, arrivals {arrivals:,} "
          f"(duplicates {arrivals - seen:,}); at the sink when the node began to stop {at_stop:,}, once it was down "
          f"{down_at:,} ({t_down - t0:.0f} s in; the stop took {t_down - t_stop:.0f} s), when it started again "
          f"{at_start:,}; {seconds:.0f} s in all")
    assert seen == rows == TOTAL and down_at <= half and at_start == three_quarters  # went on while a was down
    assert total_n == TOTAL * (TOTAL - 1) // 2 and through == TOTAL  # records 0..19,999, each through both steps
    assert arrivals >= seen  # at-least-once between steps: the sink is idempotent
    assert running == sorted(f"{n.name}@localhost" for n in cluster)
    assert codes == [0, 0, 0, 0], {s: p.read_text()[-2000:] for s, p in logs.items()}
    for s in ("double", "triple", "sink"):  # each step worker lost a and went on through another node
        text = logs[s].read_text().lower()
        assert "connection lost" in text or "reconnect" in text or "cannot connect" in text, text[-2000:]


def _queues(node) -> str:
    """The queues as ``node`` sees them (a failure's report), or why it cannot tell."""
    try:
        return node.ctl("list_queues", "-p", "/", "name", "leader", "consumers", "messages_ready",
                        "messages_unacknowledged", timeout=60)
    except Exception as exc:  # noqa: BLE001 - a report: never hide the failure being reported
        return f"(list_queues on {node.name} failed: {exc})"


def _leader(node, queue: str) -> str:
    """The node that leads quorum queue ``queue`` (``rabbitmqctl list_queues name leader``)."""
    for line in node.ctl("list_queues", "-p", "/", "name", "leader", "--no-table-headers").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == queue:
            return parts[1]
    raise AssertionError(f"no queue '{queue}' on {node.name}")


def test_the_node_leading_the_trigger_state_dies_and_a_standby_trigger_goes_on_from_the_committed_cursor(
        cluster, tmp_path, monkeypatch):
    """Quorum topology: the cursor (``.cursor``) and the poller's lock (``.poller``) are replicated.
    The node that leads them — and that the active trigger worker is connected to — is killed
    (SIGKILL) while rows are still being written to the source: the standby trigger worker, connected
    to another node, becomes the poller and goes on from the last committed cursor; every row reaches
    the idempotent sink, none is lost (the sink counts arrivals: the poll in flight when the node died
    may arrive twice, since a quorum trigger's messages are confirmed before its cursor commits)."""
    import sqlite3
    import threading
    import time

    from flownb.runtime.amqp import names
    from flownb.runtime.amqp.trigger import read_state
    monkeypatch.setenv("FLOWNB_QUEUE_TYPE", "quorum")  # as the workers (_worker): read_cursor below
    a, b, c = cluster
    total, per_tick = 3000, 20
    src, db = tmp_path / "src.db", tmp_path / "sink.db"
    con = sqlite3.connect(src)
    con.execute("CREATE TABLE rows (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)")
    con.commit()
    flow = flownb.Flow(name="hastate", trigger=flownb.step("src", "sql.poll", url=f"sqlite:///{src}", table="rows",
                                                           cursor="id", batch_size=100, interval="200ms"),
                       steps=[flownb.step("work", "amqptest.work"),
                              flownb.step("sink", "amqptest.sink", path=str(db))])
    spec = flow.save(tmp_path / "flow.yaml")
    logs = {s: tmp_path / f"{s}.log" for s in ("src-a", "src-b", "work", "sink")}
    written = [0]

    def write() -> None:  # the source grows while the flow runs: 20 rows every 50 ms
        w = sqlite3.connect(src)
        for start in range(0, total, per_tick):
            w.executemany("INSERT INTO rows (id, n) VALUES (?, ?)",
                          [(i + 1, i) for i in range(start, start + per_tick)])
            w.commit()
            written[0] = start + per_tick
            time.sleep(0.05)
        w.close()

    # the active trigger declares the flow on b (a quorum queue's leader starts on the declaring node)
    # and stays connected there; the standby is connected to a; the step workers to c
    procs = [_worker(spec, "src", ",".join([b.url, a.url, c.url]), logs["src-a"])]
    writer = threading.Thread(target=write, daemon=True)
    try:
        wait_for(lambda: "took over as the active poller" in logs["src-a"].read_text(), timeout=120,
                 what="trigger A polling")
        procs.append(_worker(spec, "src", ",".join([a.url, c.url, b.url]), logs["src-b"]))
        wait_for(lambda: "waiting to be the active poller" in logs["src-b"].read_text(), timeout=120,
                 what="trigger B waiting")
        steps_url = ",".join([c.url, a.url])
        procs += [_worker(spec, "work", steps_url, logs["work"]), _worker(spec, "sink", steps_url, logs["sink"])]
        cursor_q, poller_q = names.cursor_queue("hastate", "src"), names.poller_queue("hastate", "src")
        assert _leader(a, cursor_q) == _leader(a, poller_q) == f"{b.name}@localhost"
        writer.start()
        wait_for(lambda: sink_counts(db)[0] >= total // 5, timeout=180, what="a fifth of the rows at the sink")
        at_kill = sink_counts(db)[0]
        assert "took over" not in logs["src-b"].read_text()  # B only waited so far
        b.kill()  # the leader of the cursor and of the lock, and trigger A's node: gone without a goodbye
        _wait_all_at_sink(db, total, 300, f"after the node died (had {at_kill})", a, logs)
        assert _leader(a, cursor_q) in (f"{a.name}@localhost", f"{c.name}@localhost")
        # a worker that starts while the node is down starts (manifest, topology: all replicated)
        logs["late"] = tmp_path / "late.log"
        procs.append(_worker(spec, "work", steps_url, logs["late"]))
        wait_for(lambda: "consuming" in logs["late"].read_text() or procs[-1].poll() is not None, timeout=120,
                 what="a worker started after the node died to consume")
        for p in procs:
            assert p.poll() is None, f"a worker died: {p.args}"
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        codes = [p.wait(90) for p in procs]
        writer.join(60)
    seen, arrivals = sink_counts(db)
    dup = con.execute("SELECT count(*) FROM rows").fetchone()[0]
    con.close()
    print(f"\ntrigger-state failover: rows written {dup}, distinct rows at the sink {seen}, arrivals {arrivals} "
          f"(duplicates {arrivals - seen}), rows at the sink when the node died {at_kill}")
    assert dup == total and seen == total and at_kill < total  # the kill happened mid-run
    assert codes == [0] * 5, {s: p.read_text()[-3000:] for s, p in logs.items()}
    b_log = logs["src-b"].read_text()
    assert "took over as the active poller" in b_log and "emitted" in b_log, b_log[-3000:]  # B took over and polled
    # on the surviving nodes (read_state: basic.get; 'flownb state' refuses while the queue still counts the
    # consumer that trigger A had through the dead node, until that node rejoins or is forgotten)
    assert read_state(flow, ",".join([a.url, c.url]))["cursor"] == total
