"""sql.upsert: a whole batch in one transaction vs one transaction per message, in one invocation.

Both runs go through the shared StepRunner on the same table shape and the same rows (half new,
half updates of existing keys): ``run_batch`` of ``--batch`` messages at a time vs ``run`` per
message. Measured on SQLite (a file in a temp dir) and, when reachable, the local PostgreSQL.

    .venv/bin/python benchmarks/sql_upsert.py [--messages 2000] [--batch 200]

Last line: one JSON object with messages/s per mode and the batch/single ratio per database.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

from flownb import Flow, step
from flownb.components.base import polling_trigger
from flownb.message import Message
from flownb.runtime.core import StepRunner

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@polling_trigger("bench.noop")
def _noop(state, ctx):
    return []


def _runner(url: str, table: str) -> StepRunner:
    flow = Flow(name="bench-upsert", trigger=step("src", "bench.noop"),
                steps=[step("save", "sql.upsert", url=url, table=table, key=["id"], create=True)])
    return StepRunner(flow, "save").open()


def _messages(n: int) -> list[Message]:
    # ids repeat once: the second half updates rows the first half inserted
    return [Message(body={"id": i % (n // 2), "name": f"n{i}", "total": i * 1.5, "tags": ["a", "b"]})
            for i in range(n)]


def _timed(url: str, n: int, batch: int | None) -> float:
    table = "bench_" + uuid.uuid4().hex[:10]
    runner = _runner(url, table)
    msgs = _messages(n)
    runner.run(msgs[0])  # create the table outside the clock
    try:
        t0 = time.perf_counter()
        if batch:
            for i in range(0, n, batch):
                assert all(o.ok for o in runner.run_batch(msgs[i:i + batch]))
        else:
            for m in msgs:
                assert runner.run(m).ok
        return n / (time.perf_counter() - t0)
    finally:
        runner.close()
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
        engine.dispose()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=200)
    args = ap.parse_args()
    result: dict = {"messages": args.messages, "batch": args.batch}
    with tempfile.TemporaryDirectory() as tmp:
        dbs = {"sqlite": f"sqlite:///{Path(tmp) / 'bench.db'}"}
        try:
            sa.create_engine(PG_URL).connect().close()
            dbs["postgres"] = PG_URL
        except Exception as exc:  # benchmark script: report and go on with SQLite
            result["postgres_skipped"] = str(exc).splitlines()[0]
        for name, url in dbs.items():
            single = _timed(url, args.messages, None)
            batched = _timed(url, args.messages, args.batch)
            result[name] = {"single_msgs_per_s": round(single, 1), "batch_msgs_per_s": round(batched, 1),
                            "batch_over_single": round(batched / single, 2)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
