"""A route step on RabbitMQ, with a worker per step: each copy goes to its branch's first step (an
empty branch: straight to the rejoin step), unmatched messages are filtered and counted per branch
in ``flownb_messages_routed_total``. (The same routing on all four paths: tests/parity/flows/route-*.)"""

from __future__ import annotations

import pytest
from amqp_components import sink_counts, wait_for
from prometheus_client import REGISTRY

import flownb
from flownb.flow import Branch, RouteSpec, Step

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq]


def test_a_route_step_sends_each_copy_to_its_branch_and_the_branches_rejoin(broker, running, tmp_path):
    db = tmp_path / "sink.db"
    route = RouteSpec(mode="all", branches=[
        Branch(name="even", when="n % 2 = 0",
               steps=[flownb.step("tag-even", "mapping", expression="$merge([$, {'even': true}])")]),
        Branch(name="three", when="n % 3 = 0")])
    flow = flownb.Flow(name="routed-amqp",
                       trigger=flownb.step("src", "amqptest.count", total=300, batch=100, interval="100ms"),
                       steps=[Step(name="by-n", route=route), flownb.step("sink", "amqptest.sink", path=str(db))])
    r = running(flow, ["src", "by-n", "tag-even", "sink"], broker)
    # n even: 150 copies through tag-even; n divisible by 3: 100 copies straight to the sink
    wait_for(lambda: sink_counts(db)[1] == 250, what="250 deliveries at the sink")
    r.stop()
    assert sink_counts(db) == (200, 250)  # 200 distinct n (even or divisible by 3); 100 unmatched

    def routed(branch: str) -> float | None:
        return REGISTRY.get_sample_value("flownb_messages_routed_total",
                                         {"flow": flow.name, "step": "by-n", "branch": branch})
    assert (routed("even"), routed("three"), routed("unmatched")) == (150.0, 100.0, 100.0)


def test_a_flow_ending_with_a_route_answers_the_reply_queue_from_every_branch(broker, running):
    """The end of the flow is each branch's last step, and for a branch without steps the route
    step itself: every copy that leaves the flow goes to the reply queue; an unmatched one does not."""
    from flownb.runtime.amqp import names
    from flownb.runtime.amqp.topology import connect
    route = RouteSpec(mode="all", branches=[
        Branch(name="double", when="n > 0", steps=[flownb.step("work", "amqptest.work")]),
        Branch(name="as-is", when="n > 10")])
    flow = flownb.Flow(name="route-reply", trigger=flownb.step("src", "amqptest.count", total=0),
                       steps=[Step(name="last", route=route)])
    running(flow, ["last", "work"], broker)
    conn = connect(broker)
    try:
        ch = conn.channel()
        reply = ch.queue_declare("", exclusive=True).method.queue
        for n in (21, 5, -1):
            msg = flownb.Message(body={"n": n}, headers={names.REPLY_TO_HEADER: reply}, flow=flow.name, step="src")
            ch.basic_publish(names.exchange(flow.name), "last", msg.to_json())
        got: list[dict] = []

        def three() -> bool:
            method, _props, body = ch.basic_get(reply, auto_ack=True)
            if method is not None:
                got.append(flownb.Message.from_json(body).body)
            return len(got) == 3
        wait_for(three, timeout=20, what="three replies")
        assert sorted(map(str, got)) == sorted(map(str, [{"n": 21, "w": 42}, {"n": 21}, {"n": 5, "w": 10}]))
        import time
        time.sleep(0.5)  # nothing more comes: n = -1 took no branch
        assert ch.basic_get(reply, auto_ack=True)[0] is None
    finally:
        conn.close()
