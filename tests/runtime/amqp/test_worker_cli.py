"""``flownb worker`` as a process: --all, metrics endpoint, quiet logs, lean imports; topology declarations."""

from __future__ import annotations

import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from amqp_components import sink_counts, wait_for

import flownb
from flownb.errors import BrokerError
from flownb.runtime.amqp import names
from flownb.runtime.amqp.topology import connect, declare_flow, queue_depths
from tests.processes import free_port as _port

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq]
RUN_WORKER = Path(__file__).parent / "run_worker.py"




def test_worker_all_runs_the_flow_serves_metrics_and_exits_0_on_sigterm(broker, tmp_path):
    db = tmp_path / "sink.db"
    flow = flownb.Flow(name="cli", trigger=flownb.step("src", "amqptest.count", total=250, batch=100,
                                                        interval="50ms"),
                       steps=[flownb.step("work", "amqptest.work"),
                              flownb.step("sink", "amqptest.sink", path=str(db))])
    spec = flow.save(tmp_path / "flow.yaml")
    port = _port()
    proc = subprocess.Popen([sys.executable, str(RUN_WORKER), "worker", str(spec), "--all",
                             "--metrics-port", str(port)], env={"FLOWNB_BROKER_URL": broker, "PATH": "/usr/bin"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: sink_counts(db)[0] == 250, timeout=60, what="250 at the sink")
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert 'flownb_messages_processed_total{flow="cli",step="sink"} 250.0' in text
        assert 'flownb_messages_processed_total{flow="cli",step="src"} 250.0' in text
        assert "flownb_step_latency_seconds_bucket" in text
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, proc.stderr.read()[-2000:]
    log = proc.stderr.read()
    assert "step 'work': consuming" in log and "draining and stopping" in log  # flownb's own lines
    assert "pika" not in log  # and none of the client library's (shown with -v only)


def test_unknown_step_is_a_clear_error(broker, tmp_path, capsys):
    from flownb.cli import main
    flow = flownb.Flow(name="bad", trigger=flownb.step("src", "amqptest.count"),
                       steps=[flownb.step("work", "amqptest.work")])
    spec = flow.save(tmp_path / "flow.yaml")
    assert main(["worker", str(spec), "--step", "wrok", "--broker", broker]) == 2
    assert "did you mean 'work'?" in capsys.readouterr().err


def test_topology_is_idempotent_and_a_changed_limit_says_what_to_do(broker, monkeypatch):
    flow = flownb.Flow(name="topo", trigger=flownb.step("src", "amqptest.count"),
                       steps=[flownb.step("work", "amqptest.work", retry={"max_attempts": 3, "initial": "1s"})])
    conn = connect(broker)
    declare_flow(conn.channel(), flow)
    declare_flow(conn.channel(), flow)  # twice: no error
    ch = conn.channel()
    for q in ("flownb.topo.work", "flownb.topo.work.retry.1000", "flownb.topo.work.retry.2000",
              "flownb.topo.work.retry.ready", "flownb.topo.work.dlq", "flownb.topo.src.state"):
        ch.queue_declare(q, passive=True)
    assert names.retry_ready_queue("topo", "work") == "flownb.topo.work.retry.ready"
    ch.basic_publish("", "flownb.topo.work.retry.2000", b"{}")
    assert wait_for(lambda: queue_depths(flow, broker)["work"]["retry"] == 1, timeout=5, what="depth")
    monkeypatch.setenv("FLOWNB_MAX_QUEUE_LENGTH", "10")
    with pytest.raises(BrokerError, match="exists with other arguments.*FLOWNB_MAX_QUEUE_LENGTH"):
        declare_flow(conn.channel(), flow)
    conn.close()


def test_worker_exits_1_when_a_queue_exists_with_other_settings(broker, tmp_path, monkeypatch, capsys):
    from flownb.cli import main
    flow = flownb.Flow(name="clash", trigger=flownb.step("src", "amqptest.count"),
                       steps=[flownb.step("work", "amqptest.work")])
    spec = flow.save(tmp_path / "flow.yaml")
    conn = connect(broker)
    declare_flow(conn.channel(), flow)
    conn.close()
    monkeypatch.setenv("FLOWNB_MAX_QUEUE_LENGTH", "5")
    assert main(["worker", str(spec), "--step", "work", "--broker", broker]) == 1
    err = capsys.readouterr().err
    assert "exists with other arguments" in err and "FLOWNB_MAX_QUEUE_LENGTH" in err
