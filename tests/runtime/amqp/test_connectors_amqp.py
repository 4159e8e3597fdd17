"""The MQTT and Redis connectors on RabbitMQ workers (one per step), against the real Mosquitto and
Redis: the trigger's batch token (MQTT) or entry ids (Redis) travel in the cursor message of the state
queue, so what it read is acknowledged upstream only after the AMQP transaction that queued it
committed."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest
from amqp_components import wait_for

import flownb
from flownb.runtime.amqp.topology import queue_depths

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "components"))
from mqtt_kit import Collector, drop_session, publish, require_mosquitto, unique
from redis_kit import client, require_redis

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq]


@pytest.mark.mqtt
def test_mqtt_round_trip_on_rabbitmq_workers(broker, running, tmp_path):
    require_mosquitto()
    topic, cid = unique("flownb-test/amqp"), unique("flownb-amqp")
    out_csv = tmp_path / "out.csv"
    flow = flownb.Flow(name="mqtt-amqp", trigger=flownb.step("src", "mqtt.subscribe", topics=[f"{topic}/in"],
                                                             client_id=cid, interval="200ms"),
                       steps=[flownb.step("fwd", "mqtt.publish", topic=topic + "/out/{id}"),
                              flownb.step("save", "csv.write", path=str(out_csv))])
    out = Collector(f"{topic}/out/#")
    try:
        r = running(flow, ["src", "fwd", "save"], broker)
        # the session exists once the trigger worker subscribed: probe until one comes through
        wait_for(lambda: publish(f"{topic}/in", [{"id": -1}]) or out.wait_for(1, timeout=0.5),
                 what="a probe through the flow")
        publish(f"{topic}/in", [{"id": i} for i in range(60)])
        wait_for(lambda: len(_ids(out_csv)) >= 60, what="60 rows in the csv")
        got = out.wait_for(60 + len(_probes(out.messages)), timeout=10)
        r.stop()
        assert sorted(b["id"] for _, b in got if b["id"] >= 0) == list(range(60))
        assert sorted(_ids(out_csv)) == list(range(60))
        depths = queue_depths(flow, broker)
        assert all(d["ready"] == 0 and d["dead"] == 0 for d in depths.values()), depths
        # all 60 were acknowledged to Mosquitto: a new trigger of the same session gets none of them
        r = running(flow, ["src", "fwd", "save"], broker)
        publish(f"{topic}/in", [{"id": 1000}])
        wait_for(lambda: 1000 in _ids(out_csv), what="the marker row")
        r.stop()
        assert sorted(_ids(out_csv)) == [*range(60), 1000]
    finally:
        out.close()
        drop_session(cid)


@pytest.mark.redis
def test_redis_round_trip_on_rabbitmq_workers(broker, running, tmp_path):
    require_redis()
    src, dst = unique("flownb-test"), unique("flownb-test")
    out_csv = tmp_path / "out.csv"
    flow = flownb.Flow(name="redis-amqp", trigger=flownb.step("src", "redis.stream", stream=src, start="all",
                                                              batch_size=50, interval="200ms"),
                       steps=[flownb.step("out", "redis.xadd", stream=dst),
                              flownb.step("save", "csv.write", path=str(out_csv))])
    r = client()
    try:
        pipe = r.pipeline()
        for i in range(300):
            pipe.xadd(src, {"id": str(i)})
        pipe.execute()
        run = running(flow, ["src", "out", "save"], broker)
        wait_for(lambda: len(_ids(out_csv)) >= 300, what="300 rows in the csv")
        wait_for(lambda: r.xpending(src, "flownb-redis-amqp-src")["pending"] == 0, what="every entry acked")
        run.stop()
        assert sorted(_ids(out_csv)) == list(range(300))
        assert sorted(int(f["id"]) for _, f in r.xrange(dst)) == list(range(300))
        depths = queue_depths(flow, broker)
        assert all(d["ready"] == 0 and d["dead"] == 0 for d in depths.values()), depths
    finally:
        r.delete(src, dst)


def _ids(path: Path) -> list[int]:
    """ids of the rows written (the probes, id -1, left out)."""
    if not path.exists():
        return []
    return [int(row["id"]) for row in csv.DictReader(path.open()) if int(row["id"]) >= 0]


def _probes(messages) -> list:
    return [m for m in messages if m[1]["id"] < 0]
