"""What the flight recorder costs: throughput with recording off, at 0 %, 1 % and 100 % of the traces,
as ratios against "off" measured in the same run (docs/debugging.md "Trace a record").

Embedded runtime: trigger (N rows in one poll) → map → filter → sink, Python actions (the runtime's
own cost dominates, so the recorder's share is not hidden behind slow rules), durable SQLite queues;
the recorder's rows go into the batch's transaction. msg/s = source rows / wall time.

RabbitMQ (``--amqp``; the broker on 127.0.0.1:5672, a throw-away vhost): the same three steps as
StepWorkers in threads of this process; N messages are preloaded into the first queue and the clock
runs from starting the workers to "the sink has seen all N"; at 1 % and 100 % the workers publish their events
to the tap queue (no recorder drains it during the run; it is bounded, see docs/rabbitmq.md).

Each setting runs ``--repeat`` times, interleaved (each round starting with another setting), after one
warm-up run, and the best time counts. Two ratios: ``ratio_*`` by wall time, ``cpu_ratio_*`` by this
process's CPU time (steadier on a shared machine; on RabbitMQ it leaves out the broker's work).
``recorded_*``: rows in the recorder table (embedded) / tap events published, one per step batch
(RabbitMQ).

    .venv/bin/python benchmarks/recorder.py [--rows 20000] [--repeat 3] [--amqp] [--messages 5000]

The last line is one JSON object: {"local": {"off_msg_s", "ratio_0", "ratio_1", "ratio_100", "cpu_ratio_0",
…}, "amqp": …}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import flownb
from flownb import Flow, step
from flownb.components.base import PollConfig
from flownb.flow import RecordPolicy
from flownb.runtime.local import LocalRuntime

SETTINGS = {"off": None, "0": 0.0, "1": 0.01, "100": 1.0}


class RowsConfig(PollConfig):
    rows: int = 20_000


def make_row(i: int) -> dict:
    return {"id": i, "customer": {"email": f"User{i}@Example.com", "first": "Ada", "last": f"L{i}"},
            "items": [{"qty": 1 + i % 3, "price": 9.5}, {"qty": 2, "price": 1.25}]}


@flownb.polling_trigger("recbench.rows", config=RowsConfig)
def rows(state, ctx):
    if state.get("done"):
        return []
    state["done"] = True
    return (make_row(i) for i in range(ctx.config.rows))


def mapping(body: dict) -> dict:
    c = body["customer"]
    return {"id": body["id"], "email": c["email"].lower(), "name": f"{c['first']} {c['last']}",
            "total": sum(it["qty"] * it["price"] for it in body["items"])}


@flownb.action("recbench.map")
def _map(body, ctx):
    return mapping(body)


@flownb.action("recbench.filter")
def _filter(body, ctx):
    return body if body["total"] > 15 else None


SEEN = [0]
SEEN_LOCK = threading.Lock()


@flownb.action("recbench.sink")
def _sink(body, ctx):
    with SEEN_LOCK:
        SEEN[0] += 1


def flow(n: int, sample: float | None, name: str = "recbench") -> Flow:
    record = None if sample is None else RecordPolicy(sample=sample, redact=["email"])
    return Flow(name=name, trigger=step("rows", "recbench.rows", rows=n),
                steps=[step("map", "recbench.map"), step("filter", "recbench.filter"), step("sink", "recbench.sink")],
                record=record)


def run_local(n: int, sample: float | None) -> tuple[float, float, int]:
    SEEN[0] = 0
    f = flow(n, sample)
    with tempfile.TemporaryDirectory() as d:
        rt = LocalRuntime(f, Path(d))
        t0, c0 = time.perf_counter(), time.process_time()
        rt.run(until_idle=True)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
        rt.close()
        recorded = _count(Path(d) / f"{f.name}.db")
    return elapsed, cpu, recorded


def _count(db: Path) -> int:
    import sqlite3
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT count(*) FROM recorder").fetchone()[0]
    finally:
        con.close()


# -- RabbitMQ --------------------------------------------------------------------------------------

def _ctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


def run_amqp(n: int, sample: float | None) -> tuple[float, float, int]:
    from flownb.message import Message
    from flownb.runtime.amqp import names
    from flownb.runtime.amqp.publish import PERSISTENT
    from flownb.runtime.amqp.topology import connect, declare_flow
    from flownb.runtime.amqp.worker import make_worker, run_workers
    vhost = f"flownb-bench-{uuid.uuid4().hex[:8]}"
    _ctl("add_vhost", vhost)
    _ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    url = f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    try:
        f = flow(0, sample).resolved()
        conn = connect(url)
        ch = conn.channel()
        declare_flow(ch, f)
        ch.confirm_delivery()
        for i in range(n):
            m = Message(body=make_row(i), flow=f.name, step="rows")
            ch.basic_publish(names.exchange(f.name), "map", m.to_json(), PERSISTENT)
        conn.close()
        kept = sum(1 for i in range(n) if mapping(make_row(i))["total"] > 15)
        SEEN[0] = 0
        workers = [make_worker(f, s, url) for s in ("map", "filter", "sink")]
        stop = threading.Event()
        th = threading.Thread(target=run_workers, args=(workers, stop), daemon=True)
        t0, c0 = time.perf_counter(), time.process_time()  # from the workers' start: they consume at once
        th.start()
        deadline = t0 + 600
        while SEEN[0] < kept and time.perf_counter() < deadline:
            time.sleep(0.005)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
        stop.set()
        th.join(60)
        published = sum(getattr(w, "tap", None).published for w in workers if getattr(w, "tap", None))
        return elapsed, cpu, published
    finally:
        _ctl("delete_vhost", vhost)


def bench(run, n: int, repeat: int, label: str) -> dict:
    best = {k: float("inf") for k in SETTINGS}
    best_cpu = {k: float("inf") for k in SETTINGS}
    recorded = {}
    run(n, None)  # warm-up (imports, the broker's first vhost, SQLite's page cache): not counted
    keys = list(SETTINGS)
    for r in range(repeat):
        for key in keys[r % len(keys):] + keys[:r % len(keys)]:  # each round starts elsewhere
            t, cpu, rec = run(n, SETTINGS[key])
            best[key], best_cpu[key] = min(best[key], t), min(best_cpu[key], cpu)
            recorded[key] = rec
            print(f"{label} #{r + 1} recording {key:>3}{'' if key == 'off' else ' %'}: {n / t:,.0f} msg/s "
                  f"({t:.2f}s wall, {cpu:.2f}s CPU, {rec} recorded)", file=sys.stderr)
    out = {"messages": n, "off_msg_s": round(n / best["off"]), "off_cpu_msg_s": round(n / best_cpu["off"])}
    for key in ("0", "1", "100"):
        out[f"msg_s_{key}"] = round(n / best[key])
        out[f"ratio_{key}"] = round(best["off"] / best[key], 3)
        out[f"cpu_ratio_{key}"] = round(best_cpu["off"] / best_cpu[key], 3)
        out[f"recorded_{key}"] = recorded[key]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--amqp", action="store_true", help="also measure RabbitMQ workers (the broker on :5672)")
    ap.add_argument("--messages", type=int, default=5_000, help="messages of the RabbitMQ runs")
    a = ap.parse_args(argv)
    result: dict = {"local": bench(run_local, a.rows, a.repeat, "embedded")}
    if a.amqp:
        result["amqp"] = bench(run_amqp, a.messages, a.repeat, "rabbitmq")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
