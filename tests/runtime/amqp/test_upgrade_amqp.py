"""flownb upgrade on RabbitMQ: a renamed step's queued messages and dead letters move to the new
step's queues (published with confirms, acked after), and the old queues are removed."""

from __future__ import annotations

import pika
import pytest

import flownb
from flownb.message import Message
from flownb.runtime.amqp import names
from flownb.runtime.amqp.topology import connect, declare_flow, queue_depths
from flownb.runtime.upgrade import amqp_depths, make_plan, upgrade

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq, pytest.mark.timeout(300)]
N = 2500


def _flow(middle: str) -> flownb.Flow:
    return flownb.Flow(name="upg", trigger=flownb.step("hook", "webhook", token_env="UPG_TOKEN"),
                       steps=[flownb.step(middle, "mapping", fields={"id": "id"}), flownb.step("out", "log")])


def _queue_n_for_slow(broker: str, old: flownb.Flow):
    """Declare ``old``'s topology and queue N messages (confirmed) for its step 'slow'; the open
    connection."""
    conn = connect(broker)
    ch = conn.channel()
    declare_flow(ch, old.resolved())
    ch.confirm_delivery()
    for i in range(N):
        ch.basic_publish(names.exchange("upg"), "slow", Message(body={"id": i}, flow="upg", step="hook").to_json(),
                         pika.BasicProperties(delivery_mode=2))
    return conn


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])  # quorum: no queue.delete if-empty
def test_upgrade_moves_a_renamed_steps_messages_and_dead_letters(broker, monkeypatch, queue_type):
    monkeypatch.setenv("FLOWNB_QUEUE_TYPE", queue_type)
    old, new = _flow("slow"), _flow("enrich")
    conn = _queue_n_for_slow(broker, old)
    ch = conn.channel()
    ch.basic_publish("", names.dead_letter_queue("upg", "slow"), b'{"id": -1}', pika.BasicProperties(delivery_mode=2))
    conn.close()

    plan = make_plan(old, new, depths=amqp_depths(old, broker))
    assert plan.guessed == {"slow": "enrich"} and plan.orphaned == {"slow": N + 1}

    plan, moved = upgrade(old, new, {"slow": "enrich"}, broker=broker)
    assert moved == {"slow": N + 1}
    assert queue_depths(new.resolved(), broker)["enrich"] == {"ready": N, "dead": 1, "retry": 0}
    conn = connect(broker)
    try:
        for q in (names.step_queue("upg", "slow"), names.dead_letter_queue("upg", "slow")):
            with pytest.raises(pika.exceptions.ChannelClosedByBroker):  # gone
                conn.channel().queue_declare(q, passive=True)
        ch = conn.channel()
        bodies = []
        while (got := ch.basic_get(names.step_queue("upg", "enrich"), auto_ack=True))[0] is not None:
            bodies.append(Message.from_json(got[2]).body["id"])
        assert bodies == list(range(N))  # every one, once, in order
    finally:
        conn.close()


def test_a_worker_of_a_spec_that_renamed_a_step_refuses_while_the_old_queue_holds_messages(broker, tmp_path):
    """The broker keeps the step names of the spec that last started a worker: a worker of a spec
    without one of them exits 2 while that step's queue holds messages; after the upgrade it starts."""
    import subprocess
    import sys
    from pathlib import Path

    from amqp_components import wait_for

    from flownb.runtime.amqp.topology import message_count
    old, new = _flow("slow"), _flow("enrich")
    old_spec, new_spec = old.save(tmp_path / "old.yaml"), new.save(tmp_path / "new.yaml")
    exe = str(Path(sys.executable).with_name("flownb"))
    env = {"FLOWNB_BROKER_URL": broker, "PATH": "/usr/bin:/bin", "UPG_TOKEN": "t" * 20}

    def start(spec, log):
        return subprocess.Popen([exe, "worker", str(spec), "--step", "out"], env=env,
                                stdout=subprocess.DEVNULL, stderr=log.open("wb"))

    log = tmp_path / "old.log"
    proc = start(old_spec, log)  # a worker of the old spec records its steps, then consumes
    wait_for(lambda: b"consuming" in log.read_bytes(), timeout=60, what="the old spec's worker consuming")
    conn = connect(broker)
    assert message_count(conn, names.manifest_queue("upg")) == 1
    ch = conn.channel()
    ch.confirm_delivery()
    for i in range(5):
        ch.basic_publish(names.exchange("upg"), "slow", Message(body={"id": i}, flow="upg", step="hook").to_json(),
                         pika.BasicProperties(delivery_mode=2))
    conn.close()
    proc.terminate()
    assert proc.wait(60) == 0, log.read_text()

    r = subprocess.run([exe, "worker", str(new_spec), "--step", "out"], capture_output=True, text=True,
                       env=env, timeout=60)
    assert r.returncode == 2, r.stderr
    assert "RabbitMQ holds messages of flow 'upg' for step(s) this spec does not have ('slow': 5)" in r.stderr
    upgrade(old, new, {"slow": "enrich"}, broker=broker)
    log = tmp_path / "new.log"
    proc = start(new_spec, log)
    wait_for(lambda: b"consuming" in log.read_bytes() or proc.poll() is not None, timeout=60,
             what="the new spec's worker consuming")
    assert proc.poll() is None, log.read_text()
    proc.terminate()
    assert proc.wait(60) == 0


def test_removing_a_step_that_holds_messages_is_refused(broker, tmp_path):
    """A spec without the step 'slow', whose queue holds thousands of messages: a real worker of it
    exits 2 and prints the plan (from the broker's manifest of the old spec); ``flownb upgrade``
    refuses too. Once the old spec's worker has emptied 'slow', the upgrade removes the queues of
    'slow' and the new spec's worker starts."""
    import subprocess
    import sys
    from pathlib import Path

    from amqp_components import wait_for

    from flownb.runtime.amqp.topology import message_count as _count
    from flownb.runtime.upgrade import check_broker_manifest
    old = _flow("slow")
    new = flownb.Flow(name="upg", trigger=old.trigger, steps=[old.steps[1]])  # 'slow' removed
    old_spec, new_spec = old.save(tmp_path / "old.yaml"), new.save(tmp_path / "new.yaml")
    exe = str(Path(sys.executable).with_name("flownb"))
    env = {"FLOWNB_BROKER_URL": broker, "PATH": "/usr/bin:/bin", "UPG_TOKEN": "t" * 20, "COLUMNS": "200"}
    check_broker_manifest(old, broker, str(old_spec))  # what a worker of the old spec records as it starts
    _queue_n_for_slow(broker, old).close()

    r = subprocess.run([exe, "worker", str(new_spec), "--step", "out"], capture_output=True, text=True,
                       env=env, timeout=60)
    assert r.returncode == 2, r.stderr
    assert f"RabbitMQ holds messages of flow 'upg' for step(s) this spec does not have ('slow': {N:,})" in r.stderr
    assert "plan for flow 'upg' (from the broker's manifest of the spec that last started a worker):" in r.stderr
    assert f"  - step 'slow' removed: {N:,} message(s) would be stranded" in r.stderr
    assert f"  spec {old.spec_hash()} → {new.spec_hash()}" in r.stderr
    up = subprocess.run([exe, "upgrade", str(old_spec), str(new_spec), "--broker", broker], capture_output=True,
                        text=True, env=env, timeout=60)
    assert up.returncode == 2 and f"removing step(s) 'slow': {N:,} would strand their messages" in up.stderr

    log = tmp_path / "old-slow.log"  # the old spec's worker of 'slow' empties its queue into 'out'
    proc = subprocess.Popen([exe, "worker", str(old_spec), "--step", "slow"], env=env,
                            stdout=subprocess.DEVNULL, stderr=log.open("wb"))
    conn = connect(broker)
    try:
        wait_for(lambda: _count(conn, names.step_queue("upg", "slow")) == 0 and
                 _count(conn, names.step_queue("upg", "out")) == N, timeout=120, what="'slow' emptied into 'out'")
    finally:
        conn.close()
        proc.terminate()
    assert proc.wait(60) == 0, log.read_text()
    up = subprocess.run([exe, "upgrade", str(old_spec), str(new_spec), "--broker", broker], capture_output=True,
                        text=True, env=env, timeout=60)
    assert up.returncode == 0, up.stderr
    assert "  - step 'slow' removed" in up.stdout and "removed the queues of step 'slow'" in up.stderr
    conn = connect(broker)
    try:
        for q in (names.step_queue("upg", "slow"), names.retry_ready_queue("upg", "slow"),
                  names.dead_letter_queue("upg", "slow"), f"{names.step_queue('upg', 'slow')}.suspect"):
            with pytest.raises(pika.exceptions.ChannelClosedByBroker):  # gone
                conn.channel().queue_declare(q, passive=True)
        assert queue_depths(new.resolved(), broker)["out"]["ready"] == N  # the rest of the flow is kept
    finally:
        conn.close()
    log = tmp_path / "new.log"
    proc = subprocess.Popen([exe, "worker", str(new_spec), "--step", "out"], env=env,
                            stdout=subprocess.DEVNULL, stderr=log.open("wb"))
    wait_for(lambda: b"consuming" in log.read_bytes() or proc.poll() is not None, timeout=60,
             what="the new spec's worker consuming")
    assert proc.poll() is None, log.read_text()
    proc.terminate()
    assert proc.wait(60) == 0
