"""Throughput of the local runtime with durable (SQLite WAL) queues.

Flow: trigger (N rows in one poll) → mapping → filter → sink. The same work done by a plain Python
loop over the same rows, in the same process, is the baseline. msg/s = source rows / wall time.
``flownb_msg_s`` runs the rules as Python actions (the runtime's own cost: queues, codec, commits);
``flownb_jsonata_msg_s`` runs the same rules with the built-in JSONata ``mapping`` and ``filter``.

    .venv/bin/python benchmarks/local_throughput.py [--rows 50000] [--repeat 3]

The last line is one JSON object: {"flownb_msg_s", "baseline_msg_s", "ratio", …}.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import flownb
from flownb import Flow, step
from flownb.components.base import PollConfig
from flownb.runtime.local import LocalRuntime


class RowsConfig(PollConfig):
    rows: int = 50_000


def make_row(i: int) -> dict:
    return {"id": i, "customer": {"email": f"User{i}@Example.com", "first": "Ada", "last": f"L{i}"},
            "items": [{"qty": 1 + i % 3, "price": 9.5}, {"qty": 2, "price": 1.25}]}


@flownb.polling_trigger("bench.rows", config=RowsConfig)
def rows(state, ctx):
    if state.get("done"):
        return []
    state["done"] = True
    return (make_row(i) for i in range(ctx.config.rows))


def mapping(body: dict) -> dict:
    c = body["customer"]
    return {"id": body["id"], "email": c["email"].lower(), "name": f"{c['first']} {c['last']}",
            "total": sum(it["qty"] * it["price"] for it in body["items"])}


def keep(body: dict) -> bool:
    return body["total"] > 15


SINK: list[int] = []


@flownb.action("bench.mapping")
def _mapping(body, ctx):
    return mapping(body)


@flownb.action("bench.filter")
def _filter(body, ctx):
    return body if keep(body) else None


@flownb.action("bench.sink")
def _sink(body, ctx):
    SINK.append(body["id"])


JSONATA_FIELDS = {"id": "id", "email": "$lowercase(customer.email)", "name": 'customer.first & " " & customer.last',
                  "total": "$sum(items.(qty * price))"}


def run_flownb(n: int, rules: str = "python") -> tuple[float, int]:
    """``rules="python"``: mapping/filter as Python actions (the runtime's own cost);
    ``"jsonata"``: the built-in ``mapping`` / ``filter`` components with the same rules."""
    SINK.clear()
    if rules == "jsonata":
        steps = [step("map", "mapping", fields=JSONATA_FIELDS), step("filter", "filter", condition="total > 15")]
    else:
        steps = [step("map", "bench.mapping"), step("filter", "bench.filter")]
    flow = Flow(name="bench", trigger=step("rows", "bench.rows", rows=n), steps=[*steps, step("sink", "bench.sink")])
    with tempfile.TemporaryDirectory() as d:
        rt = LocalRuntime(flow, Path(d))
        t0 = time.perf_counter()
        rt.run(until_idle=True)
        elapsed = time.perf_counter() - t0
        rt.close()
    return elapsed, len(SINK)


def run_baseline(n: int) -> tuple[float, int]:
    out: list[int] = []
    t0 = time.perf_counter()
    for i in range(n):
        body = mapping(make_row(i))
        if keep(body):
            out.append(body["id"])
    return time.perf_counter() - t0, len(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args(argv)
    best_f = best_j = best_b = float("inf")
    for _ in range(a.repeat):
        tf, kept_f = run_flownb(a.rows)
        tj, kept_j = run_flownb(a.rows, "jsonata")
        tb, kept_b = run_baseline(a.rows)
        assert kept_f == kept_j == kept_b, (kept_f, kept_j, kept_b)
        best_f, best_j, best_b = min(best_f, tf), min(best_j, tj), min(best_b, tb)
        print(f"flownb {a.rows / tf:,.0f} msg/s ({tf:.2f}s)   with JSONata rules {a.rows / tj:,.0f} msg/s "
              f"({tj:.2f}s)   baseline {a.rows / tb:,.0f} msg/s ({tb:.3f}s)", file=sys.stderr)
    result = {"rows": a.rows, "kept": kept_f, "flownb_msg_s": round(a.rows / best_f),
              "flownb_jsonata_msg_s": round(a.rows / best_j), "baseline_msg_s": round(a.rows / best_b),
              "ratio": round(best_b / best_f, 4), "ratio_jsonata": round(best_b / best_j, 4),
              "durable": "sqlite wal, synchronous=NORMAL"}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
