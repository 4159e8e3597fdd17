"""The notebook as production's debugger on RabbitMQ: dead letters as a DataFrame without consuming
or reordering the dead-letter queues, retest, replay with edited bodies, and a replay killed between
the broker's confirm and the ack leaves a duplicate, never a loss (docs/debugging.md). The same on
the embedded runtime: tests/runtime/test_workbench_local.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
from amqp_components import drain_queue, sink_counts, wait_for
from workbench_kit import fixed, make, records

import flownb
from flownb.cli import main
from flownb.errors import SpecError
from flownb.message import Message
from flownb.runtime.amqp import names
from flownb.runtime.amqp.publish import PERSISTENT
from flownb.runtime.amqp.topology import connect, declare_flow, queue_depths
from flownb.workbench import REPLAY_EDITED, REPLAY_SPEC, REPLAYED_FROM, spec_hash

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq]

ROOT = Path(__file__).resolve().parents[3]
N = 60  # 20 of them die at 'price'


def _publish(flow, broker, bodies):
    conn = connect(broker)
    try:
        ch = conn.channel()
        declare_flow(ch, flow)
        ch.confirm_delivery()
        for b in bodies:
            m = Message(body=b, flow=flow.name, step=flow.trigger.name)
            ch.basic_publish(names.exchange(flow.name), flow.steps[0].name, m.to_json(), PERSISTENT)
    finally:
        conn.close()


def _failed_run(broker, running, tmp_path):
    flow = make(tmp_path / "sink.db")
    r = running(flow, ["price", "sink"], broker)
    _publish(flow, broker, records(N))
    wait_for(lambda: queue_depths(flow, broker)["price"]["dead"] == N // 3, what="the dead letters")
    wait_for(lambda: sink_counts(tmp_path / "sink.db")[0] == N - N // 3, what="the good records")
    r.stop()
    return flow


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
def test_dead_letters_read_the_dlq_without_consuming_or_reordering(broker, running, tmp_path, monkeypatch,
                                                                   queue_type):
    monkeypatch.setenv("FLOWNB_QUEUE_TYPE", queue_type)
    flow = _failed_run(broker, running, tmp_path)
    df = flownb.dead_letters(flow, broker=broker)
    assert len(df) == N // 3 and sorted(df["n"]) == list(range(0, N, 3))
    assert set(df["_error_type"]) == {"EvaluationError"} and list(df["_attempt"]) == [1] * (N // 3)
    assert list(df["customer.email"]) == [f"c{n}@example.com" for n in df["n"]] and df["customer.tier"].isna().all()
    assert df["_failed_at"].is_monotonic_increasing
    for _ in range(3):  # listed again and again: same rows, same order, nothing consumed
        pd.testing.assert_frame_equal(flownb.dead_letters(flow, broker=broker), df)
    assert queue_depths(flow, broker)["price"]["dead"] == N // 3
    left = drain_queue(broker, names.dead_letter_queue(flow.name, "price"))
    assert len(left) == N // 3
    if queue_type == "classic":  # the queue's own order is kept too (a quorum queue re-queues returned
        assert [m["id"] for m, _ in left] == list(df["_id"])  # messages in its own order: docs/debugging.md


def test_retest_and_edited_replay_on_the_broker(broker, running, tmp_path):
    flow = _failed_run(broker, running, tmp_path)
    df = flownb.dead_letters(flow, broker=broker)
    out = fixed(flow).retest(df, until="price")
    assert list(out["outcome"]) == ["delivered"] * len(df) and out["changed"].all()
    assert [o[0]["total"] for o in out["output"]] == [0] * len(df)
    pick = df.iloc[:3].copy()
    pick.loc[pick.index[0], "amount"] = "15"
    pick.loc[pick.index[1], "customer.tier"] = "gold"
    done = flownb.replay(pick, flow, broker=broker)
    assert list(done["_id"]) == list(pick["_id"]) and list(done["edited"]) == [True, True, False]
    assert queue_depths(flow, broker)["price"]["dead"] == len(df) - 3
    queued = {m["body"]["n"]: (m, props) for m, props in drain_queue(broker, names.step_queue(flow.name, "price"))}
    assert sorted(queued) == sorted(pick["n"])
    n0, n1, n2 = pick["n"]
    assert queued[n0][0]["body"]["amount"] == "15" and queued[n1][0]["body"]["customer"]["tier"] == "gold"
    assert queued[n2][0]["body"] == {"n": n2, "amount": "n/a", "customer": {"email": f"c{n2}@example.com",
                                                                             "tier": None}, "note": f"row {n2}"}
    for _id, n in zip(pick["_id"], pick["n"], strict=True):
        m, props = queued[n]
        assert m["headers"][REPLAYED_FROM] == f"price/{_id}" and m["headers"][REPLAY_SPEC] == spec_hash(flow)
        assert (m["headers"].get(REPLAY_EDITED) == "true") == (n != n2)
        assert props.delivery_mode == 2 and m["meta"]["attempt"] == 1
    with pytest.raises(SpecError, match="not in the dead-letter queue.*nothing was replayed"):
        flownb.replay(pick, flow, broker=broker)  # replayed already
    assert flownb.replay(pick.iloc[:0], flow, broker=broker).empty  # an empty selection replays nothing
    assert queue_depths(flow, broker)["price"]["dead"] == len(df) - 3


def test_replayed_edit_reaches_the_sink_and_cli_edit(broker, running, tmp_path, capsys):
    flow = _failed_run(broker, running, tmp_path)
    spec = str(flow.save(tmp_path / "flow.yaml"))
    df = flownb.dead_letters(flow, broker=broker)
    edits = tmp_path / "edits.jsonl"
    edits.write_text("".join(json.dumps({"_id": i, "_step": "price", "amount": "1"}) + "\n" for i in df["_id"]))
    assert main(["dlq", "replay", spec, "--broker", broker, "--edit", str(edits)]) == 0
    assert f"replayed {len(df)} dead letter(s), {len(df)} with an edited body" in capsys.readouterr().out
    running(flow, ["price", "sink"], broker)
    wait_for(lambda: sink_counts(tmp_path / "sink.db")[0] == N, what="every record at the sink")
    assert flownb.dead_letters(flow, broker=broker).empty


def test_replay_killed_between_confirm_and_ack_leaves_a_duplicate_not_a_loss(broker, running, tmp_path):
    flow = _failed_run(broker, running, tmp_path)
    spec = flow.save(tmp_path / "flow.yaml")
    dead = N // 3
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(ROOT / 'tests' / 'runtime')!r})
        import runtimes
        import flownb
        from pika.adapters.blocking_connection import BlockingChannel
        def die(self, *a, **kw):  # the broker confirmed the replayed message; the ack never leaves
            os.kill(os.getpid(), signal.SIGKILL)
        BlockingChannel.basic_ack = die
        df = flownb.dead_letters({str(spec)!r}, broker={broker!r})
        flownb.replay(df, {str(spec)!r}, broker={broker!r})
    """)
    r = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == -9, r.stderr
    # the first dead letter is in the step queue AND still in the DLQ: at least once
    wait_for(lambda: queue_depths(flow, broker)["price"]["dead"] == dead, what="the DLQ to hold all again")
    assert queue_depths(flow, broker)["price"]["ready"] == 1
    # a second replay (a duplicate of that one) and the idempotent sink sees each record once
    flownb.replay(flownb.dead_letters(flow, broker=broker), fixed(flow), broker=broker)
    running(fixed(flow), ["price", "sink"], broker)
    wait_for(lambda: sink_counts(tmp_path / "sink.db")[0] == N, what="every record at the sink")
    assert sink_counts(tmp_path / "sink.db")[1] == N + 1  # exactly one duplicate delivery


def test_workbench_from_the_monitor_edits_retests_and_replays(broker, running, tmp_path):
    from flownb.notebook.monitor import Monitor
    flow = _failed_run(broker, running, tmp_path)
    mon = Monitor(flow, broker, management_url=None, autostart=False)
    wb = mon.workbench(rules=fixed(flow))
    assert wb.groups.options == (f"(all errors) ({N // 3})", f"EvaluationError ({N // 3})")
    wb.rows.value = tuple(i for _label, i in wb.rows.options[:2])
    wb.field.value, wb.value.value = "note", ""  # remove a field in two rows
    wb.set_button.click()
    assert "'note' removed in 2 row(s)" in wb.status.value
    wb.retest_button.click()
    assert "delivered 2" in wb.status.value
    wb.replay_button.click()
    assert "replayed 2 dead letter(s), 2 edited" in wb.status.value
    assert len(wb.frame) == N // 3 - 2 and queue_depths(flow, broker)["price"]["dead"] == N // 3 - 2
    queued = [m for m, _p in drain_queue(broker, names.step_queue(flow.name, "price"))]
    assert len(queued) == 2 and all("note" not in m["body"] for m in queued)
    mon.stop()
