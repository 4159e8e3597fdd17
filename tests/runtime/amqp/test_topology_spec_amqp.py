"""The spec's ``topology:`` chooses the queue type on the real broker, whatever FLOWNB_QUEUE_TYPE says
(docs/rabbitmq.md, "Queue types"): every process that reads the spec declares the same queues."""

from __future__ import annotations

import uuid

import httpx
import pytest
from amqp_components import wait_for
from broker_admin import API, _vhost

from flownb import Flow, step
from flownb.errors import BrokerError
from flownb.runtime.amqp.topology import queue_depths, queue_type


def _queues(broker: str, flow: str) -> dict[str, str]:
    """name → type of the flow's queues in the broker URL's vhost (the management API)."""
    r = httpx.get(f"{API}/queues/{_vhost(broker)}", auth=("guest", "guest"), timeout=10)
    r.raise_for_status()
    return {q["name"]: q["type"] for q in r.json() if q["name"].startswith(f"flownb.{flow}.")}


def _flow(topology: str) -> Flow:
    return Flow(name=f"topo-{topology}-{uuid.uuid4().hex[:8]}", topology=topology,
                trigger=step("src", "schedule", cron="* * * * * *", catchup=False), steps=[step("work", "log")])


@pytest.mark.parametrize("topology, env", [("quorum", "classic"), ("classic", "quorum")])
def test_the_specs_topology_declares_its_queue_type_on_the_broker(broker, running, monkeypatch, topology, env):
    monkeypatch.setenv("FLOWNB_QUEUE_TYPE", env)  # the spec wins over the environment
    flow = _flow(topology)
    workers = running(flow, ["src", "work"], broker)  # started, consuming
    wait_for(lambda: queue_depths(flow, broker)["work"]["ready"] == 0 and len(_queues(broker, flow.name)) >= 5,
             timeout=30, what="the flow's queues declared")
    workers.stop()
    declared = _queues(broker, flow.name)
    f = flow.name
    cursor = [f"flownb.{f}.src.cursor", f"flownb.{f}.src.poller"] if topology == "quorum" else [f"flownb.{f}.src.state"]
    for q in [f"flownb.{f}.work", f"flownb.{f}.work.retry.ready", f"flownb.{f}.work.dlq", *cursor]:
        assert declared.get(q) == topology, (q, declared)
    if topology == "quorum":
        assert f"flownb.{f}.src.state" not in declared  # the classic topology's cursor queue is not made
    # (the broker fixture's vhost, and with it every queue of the flow, is deleted after the test)


def test_queue_type_reads_the_spec_first_then_the_environment(monkeypatch):
    monkeypatch.delenv("FLOWNB_QUEUE_TYPE", raising=False)
    unset = Flow(name="t", trigger=step("h", "webhook"))
    assert queue_type(unset) == queue_type() == "classic"
    monkeypatch.setenv("FLOWNB_QUEUE_TYPE", "quorum")
    assert queue_type(unset) == "quorum"
    assert queue_type(unset.model_copy(update={"topology": "classic"})) == "classic"
    monkeypatch.setenv("FLOWNB_QUEUE_TYPE", "mirrored")
    assert queue_type(unset.model_copy(update={"topology": "quorum"})) == "quorum"  # not consulted
    with pytest.raises(BrokerError, match="'topology:' in the flow's spec"):
        queue_type(unset)
