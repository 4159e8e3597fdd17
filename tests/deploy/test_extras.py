"""The extras an image installs for a flow: its workers must be able to import every component."""

from __future__ import annotations

import flownb
from flownb.deploy.plan import extras_for


def test_mqtt_and_redis_components_bring_their_client_libraries():
    flow = flownb.Flow(name="x", trigger=flownb.step("src", "mqtt.subscribe", topics=["a/#"]),
                       steps=[flownb.step("out", "redis.xadd", stream="s")])
    assert extras_for(flow) == ["mqtt", "redis"]
    plain = flownb.Flow(name="y", trigger=flownb.step("src", "schedule", cron="* * * * *"),
                        steps=[flownb.step("log", "log")])
    assert extras_for(plain) == []


def test_nats_and_file_components_bring_their_libraries():
    flow = flownb.Flow(name="z", trigger=flownb.step("src", "nats.subscribe", subject="orders"),
                       steps=[flownb.step("out", "file.write", path="/data/out.parquet")],
                       on_error=[flownb.step("alert", "mqtt.publish", topic="alerts")])
    assert extras_for(flow) == ["mqtt", "nats", "files"]
