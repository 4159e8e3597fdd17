"""mqtt.subscribe, redis.stream, nats.subscribe, amqp.consume, file.read and sql.poll into the embedded
runtime; mqtt.publish, redis.xadd, redis.set, nats.publish, amqp.publish, smtp.send, file.write and
sql.upsert out of it.

Triggers: ``--messages`` messages wait at the broker (MQTT: QoS 1 in the flow's persistent session;
Redis: entries of a fresh stream; NATS: messages of a fresh JetStream stream; AMQP: persistent
messages of a fresh RabbitMQ queue; files: 4 × ``--messages`` rows of one Parquet file, ``--messages``
rows of one Excel sheet; SQL: rows of a fresh table on SQLite, PostgreSQL and MariaDB, read by their
integer cursor in batches of 1,000), then ``LocalRuntime.poll_backlog()`` takes them into the SQLite
queue (each poll committed with its state, acknowledged by the next poll) — timed until every one is
committed. Actions: the shared StepRunner's ``run_batch`` of ``--batch`` messages at a time (MQTT: a
PUBACK for each; Redis: one pipelined round trip per batch; NATS: JetStream's acknowledgement of
each, awaited together; AMQP: a publisher confirm for each; SMTP: one mail each, at most 1,000, to an
aiosmtpd server of the run; SQL: a batch is one transaction of ``INSERT … ON CONFLICT`` / ``ON
DUPLICATE KEY UPDATE`` into a table the step creates). Needs Mosquitto on 127.0.0.1:1883, Redis on
127.0.0.1:6379, NATS with JetStream on 127.0.0.1:4222, RabbitMQ on 127.0.0.1:5672, PostgreSQL on
127.0.0.1:5432 (database test) and MariaDB on 127.0.0.1:3306 (database test), as the tests use them.

    .venv/bin/python benchmarks/connectors.py [--messages 5000] [--batch 200] [--only sql.poll mariadb …]

Last line: one JSON object with messages/s per component.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
import uuid

import orjson
import paho.mqtt.client as mqtt
import redis

from flownb import Flow, step
from flownb.components.base import polling_trigger
from flownb.message import Message
from flownb.runtime.core import StepRunner
from flownb.runtime.local.runtime import LocalRuntime


@polling_trigger("bench.noop")
def _noop(state, ctx):
    return []


def _into_runtime(flow: Flow, n: int, fill) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        rt = LocalRuntime(flow, tmp)
        try:
            rt.poll_backlog()  # connect, create the session / group; nothing waits yet
            fill()
            t0 = time.perf_counter()
            got = 0
            while got < n:
                got += rt.poll_backlog()
                if time.perf_counter() - t0 > 120:
                    raise SystemExit(f"{flow.trigger.component}: only {got} of {n} messages arrived in 120 s")
            elapsed = time.perf_counter() - t0
            rt.poll_backlog()  # acknowledges the last batch
        finally:
            rt.close()
    return n / elapsed


def mqtt_subscribe(n: int) -> float:
    topic, cid = f"flownb-bench/{uuid.uuid4().hex[:8]}", f"flownb-bench-{uuid.uuid4().hex[:8]}"
    flow = Flow(name="bench-mqtt", trigger=step("src", "mqtt.subscribe", topics=[topic], client_id=cid,
                                                 wait="200ms"),
                steps=[step("sink", "log", level="debug")])

    def fill():
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        c.connect("127.0.0.1", 1883)
        c.loop_start()
        infos = [c.publish(topic, orjson.dumps({"id": i, "v": "x" * 50}), qos=1) for i in range(n)]
        for info in infos:
            info.wait_for_publish(30)
        c.disconnect()
        c.loop_stop()
    try:
        return _into_runtime(flow, n, fill)
    finally:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, clean_session=True)
        c.connect("127.0.0.1", 1883)
        c.disconnect()


def redis_stream(n: int) -> float:
    key = f"flownb-bench-{uuid.uuid4().hex[:8]}"
    flow = Flow(name="bench-redis", trigger=step("src", "redis.stream", stream=key, wait="200ms"),
                steps=[step("sink", "log", level="debug")])
    r = redis.Redis()

    def fill():
        pipe = r.pipeline(transaction=False)
        for i in range(n):
            pipe.xadd(key, {"id": str(i), "v": "x" * 50})
        pipe.execute()
    try:
        return _into_runtime(flow, n, fill)
    finally:
        r.delete(key)


def nats_subscribe(n: int) -> float:
    import asyncio

    import nats
    name = f"flownb_bench_{uuid.uuid4().hex[:8]}"
    subject = name + ".in"

    async def js_run(fn):
        nc = await nats.connect("nats://127.0.0.1:4222")
        try:
            return await fn(nc.jetstream())
        finally:
            await nc.close()

    async def pub(js):
        for i in range(0, n, 500):
            await asyncio.gather(*(js.publish(subject, orjson.dumps({"id": j, "v": "x" * 50}))
                                   for j in range(i, min(n, i + 500))))
    asyncio.run(js_run(lambda js: js.add_stream(name=name, subjects=[name + ".>"])))
    flow = Flow(name="bench-nats", trigger=step("src", "nats.subscribe", subject=subject, wait="200ms"),
                steps=[step("sink", "log", level="debug")])
    try:
        return _into_runtime(flow, n, lambda: asyncio.run(js_run(pub)))
    finally:
        asyncio.run(js_run(lambda js: js.delete_stream(name)))


def nats_publish(n: int, batch: int) -> float:
    import asyncio

    import nats
    name = f"flownb_bench_{uuid.uuid4().hex[:8]}"

    async def js_run(fn):
        nc = await nats.connect("nats://127.0.0.1:4222")
        try:
            return await fn(nc.jetstream())
        finally:
            await nc.close()
    asyncio.run(js_run(lambda js: js.add_stream(name=name, subjects=[name + ".>"])))
    try:
        return _action("nats.publish", {"subject": name + ".out"}, n, batch)
    finally:
        asyncio.run(js_run(lambda js: js.delete_stream(name)))


def amqp_consume(n: int) -> float:
    import pika
    queue = f"flownb-bench-{uuid.uuid4().hex[:8]}"
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1"))
    ch = conn.channel()
    ch.queue_declare(queue, durable=True)
    flow = Flow(name="bench-amqp", trigger=step("src", "amqp.consume", queue=queue, wait="200ms"),
                steps=[step("sink", "log", level="debug")])

    def fill():
        for i in range(n):
            ch.basic_publish("", queue, orjson.dumps({"id": i, "v": "x" * 50}), pika.BasicProperties(delivery_mode=2))
        conn.process_data_events(0)
    try:
        return _into_runtime(flow, n, fill)
    finally:
        ch.queue_delete(queue)
        conn.close()


def amqp_publish(n: int, batch: int) -> float:
    import pika
    queue = f"flownb-bench-{uuid.uuid4().hex[:8]}"
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1"))
    ch = conn.channel()
    ch.queue_declare(queue, durable=True)
    try:
        return _action("amqp.publish", {"routing_key": queue}, n, batch)
    finally:
        ch.queue_delete(queue)
        conn.close()


def smtp_send(n: int, batch: int) -> float:
    """Into an aiosmtpd server of this run on loopback that keeps a count (no TLS, no login)."""
    import socket

    from aiosmtpd.controller import Controller

    class Count:
        received = 0

        async def handle_DATA(self, server, session, envelope):
            Count.received += 1
            return "250 OK"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = Controller(Count(), hostname="127.0.0.1", port=port)
    server.start()
    try:
        rate = _action("smtp.send", {"port": port, "security": "none", "sender": "bench@example.com",
                                     "to": "u{id}@example.com", "subject": "message {id}"}, n, batch)
        assert Count.received == n, Count.received
        return rate
    finally:
        server.stop()


def file_read(n: int, fmt: str) -> float:
    """Rows of one Parquet file (row groups of 10,000) or Excel sheet into the embedded runtime."""
    import openpyxl
    import pyarrow as pa
    import pyarrow.parquet as pq
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/in.{'parquet' if fmt == 'parquet' else 'xlsx'}"
        flow = Flow(name=f"bench-{fmt}", trigger=step("src", "file.read", path=path, batch_size=1000),
                    steps=[step("sink", "log", level="debug")])

        def fill():
            if fmt == "parquet":
                pq.write_table(pa.table({"id": list(range(n)), "v": ["x" * 50] * n}), path, row_group_size=10000)
            else:
                wb = openpyxl.Workbook(write_only=True)
                ws = wb.create_sheet("s")
                ws.append(["id", "v"])
                for i in range(n):
                    ws.append([i, "x" * 50])
                wb.save(path)
        return _into_runtime(flow, n, fill)


def file_write(n: int, batch: int, fmt: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/out" + ("" if fmt == "parquet" else ".xlsx")
        return _action("file.write", {"path": path, "format": fmt}, n, batch)


#: the databases of the SQL cases: SQLite (a file in a temp dir, set per run) and the tests' servers
SQL_URLS = {"postgres": "postgresql+psycopg://postgres@127.0.0.1:5432/test",
            "mariadb": "mysql+pymysql://root@127.0.0.1:3306/test"}


def _sql_url(db: str, tmp: str) -> str:
    return f"sqlite:///{tmp}/bench.db" if db == "sqlite" else SQL_URLS[db]


def sql_poll(n: int, db: str) -> float:
    """Rows of a fresh table (integer cursor) into the embedded runtime, 1,000 per poll."""
    import sqlalchemy as sa
    table = f"flownb_bench_{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as tmp:
        engine = sa.create_engine(_sql_url(db, tmp))
        meta = sa.MetaData()
        t = sa.Table(table, meta, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                     sa.Column("v", sa.String(100)))
        meta.create_all(engine)
        flow = Flow(name=f"bench-sql-{db}", trigger=step("src", "sql.poll", url=_sql_url(db, tmp), table=table,
                                                         cursor="id", batch_size=1000),
                    steps=[step("sink", "log", level="debug")])

        def fill():
            with engine.begin() as con:
                for i in range(0, n, 5000):
                    con.execute(t.insert(), [{"id": j, "v": "x" * 50} for j in range(i, min(n, i + 5000))])
        try:
            return _into_runtime(flow, n, fill)
        finally:
            meta.drop_all(engine)
            engine.dispose()


def sql_upsert(n: int, batch: int, db: str) -> float:
    """Batches into a fresh table (created by the step), keyed on id; dropped afterwards."""
    import sqlalchemy as sa
    table = f"flownb_bench_{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as tmp:
        url = _sql_url(db, tmp)
        try:
            return _action("sql.upsert", {"url": url, "table": table, "key": ["id"], "create": True}, n, batch)
        finally:
            engine = sa.create_engine(url)
            with engine.begin() as con:
                con.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
            engine.dispose()


def _action(component: str, config: dict, n: int, batch: int) -> float:
    flow = Flow(name="bench-out", trigger=step("src", "bench.noop"), steps=[step("out", component, **config)])
    runner = StepRunner(flow, "out").open()
    msgs = [Message(body={"id": i, "v": "x" * 50}) for i in range(n)]
    try:
        t0 = time.perf_counter()
        for i in range(0, n, batch):
            assert all(o.ok for o in runner.run_batch(msgs[i:i + batch]))
        return n / (time.perf_counter() - t0)
    finally:
        runner.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=5000)
    ap.add_argument("--batch", type=int, default=200)
    ap.add_argument("--only", action="append", metavar="NAME", help="run only this one (repeatable), e.g. "
                    "--only amqp.publish, --only 'sql.poll mariadb'")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    key = f"flownb-bench-out-{uuid.uuid4().hex[:8]}"
    runs = {
        # Mosquitto keeps at most max_queued_messages (default 1000) for a client beyond its in-flight
        # window and drops the rest: the backlog of this run stays below that
        "mqtt.subscribe": lambda: mqtt_subscribe(min(args.messages, 1000)),
        "redis.stream": lambda: redis_stream(args.messages),
        "nats.subscribe": lambda: nats_subscribe(args.messages),
        "amqp.consume": lambda: amqp_consume(args.messages),
        "file.read parquet": lambda: file_read(args.messages * 4, "parquet"),
        "file.read excel": lambda: file_read(args.messages, "excel"),
        "mqtt.publish": lambda: _action("mqtt.publish", {"topic": "flownb-bench/out"}, args.messages, args.batch),
        "redis.xadd": lambda: _action("redis.xadd", {"stream": key}, args.messages, args.batch),
        # keys of this run expire after 5 minutes
        "redis.set": lambda: _action("redis.set", {"key": key + ":{id}", "ttl": "5m"}, args.messages, args.batch),
        "nats.publish": lambda: nats_publish(args.messages, args.batch),
        "amqp.publish": lambda: amqp_publish(args.messages, args.batch),
        "smtp.send": lambda: smtp_send(min(args.messages, 1000), args.batch),
        "file.write parquet": lambda: file_write(args.messages, args.batch, "parquet"),
        # the workbook is rewritten per batch: cost grows with the file (2,000 rows here)
        "file.write excel": lambda: file_write(min(args.messages, 2000), args.batch, "excel"),
        **{f"sql.poll {db}": (lambda db=db: sql_poll(args.messages, db)) for db in ("sqlite", "postgres", "mariadb")},
        **{f"sql.upsert {db}": (lambda db=db: sql_upsert(args.messages, args.batch, db))
           for db in ("sqlite", "postgres", "mariadb")},
    }
    unknown = set(args.only or ()) - set(runs)
    if unknown:
        ap.error(f"no benchmark named {', '.join(sorted(unknown))}; choose from {', '.join(runs)}")
    result = {name: run() for name, run in runs.items() if not args.only or name in args.only}
    redis.Redis().delete(key)
    for name, rate in result.items():
        print(f"{name:19} {rate:10,.0f} messages/s")
    print(json.dumps({k: round(v) for k, v in result.items()}))


if __name__ == "__main__":
    main()
