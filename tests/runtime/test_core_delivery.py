"""The runtime core owns delivery: decoding, one result per input, and each outcome's route — the
same on the embedded runtime as on RabbitMQ (tests/runtime/amqp/test_core_delivery_amqp.py)."""

from __future__ import annotations

import delivery_components  # noqa: F401  (registers deliverytest.*)
import pytest

import flownb
from flownb.message import Message
from flownb.runtime.core import Route, StepRunner
from flownb.runtime.local import LocalRuntime


def _flow(component: str, **config) -> flownb.Flow:
    return flownb.Flow(name=f"delivery-{component.split('.')[-1]}",
                       trigger=flownb.step("src", "python.poll", source="def p(s, c):\n    return []\n",
                                           function="p"),
                       steps=[flownb.step("bad", component, **config),
                              flownb.step("shape", "mapping", fields={"id": "id"})])


@pytest.mark.parametrize("component,count", [("deliverytest.short", 2), ("deliverytest.long", 4)])
def test_a_wrong_number_of_results_dead_letters_the_whole_batch(component, count):
    runner = StepRunner(_flow(component).resolved(), "bad")
    msgs = [Message(body={"id": i}) for i in range(3)]
    outcomes = runner.run_batch(msgs)
    assert [o.route for o in outcomes] == [Route.DEAD] * 3
    assert all(o.error.type == "FatalError" and not o.error.retryable for o in outcomes)
    assert f"returned {count} results for 3 messages" in outcomes[0].error.message
    assert "return exactly one result" in outcomes[0].error.message


def test_run_payloads_decodes_routes_and_dead_letters_undecodable_payloads_as_received():
    f = flownb.Flow(name="delivery-routes", trigger=flownb.step("src", "webhook"),
                    steps=[flownb.step("f", "filter", condition="keep = true")])
    runner = StepRunner(f.resolved(), "f")
    good = Message(body={"keep": True}).to_json()
    dropped = Message(body={"keep": False}).to_json()
    outcomes = runner.run_payloads([good, b"not json", dropped], attempts=[1, 3, 2])
    assert [o.route for o in outcomes] == [Route.FORWARD, Route.DEAD, Route.FILTERED]
    assert outcomes[1].undecodable and outcomes[1].dead_payload() == b"not json"
    assert outcomes[1].error.type == "MessageError" and outcomes[1].message.attempt == 3
    assert outcomes[2].message.attempt == 2


def test_a_batch_error_fails_every_message_per_its_classification():
    runner = StepRunner(_flow("deliverytest.raises").resolved(), "bad")
    outcomes = runner.run_batch([Message(body={"id": i}) for i in range(2)])
    assert [o.route for o in outcomes] == [Route.DEAD, Route.DEAD]
    assert outcomes[0].error.type == "ValueError"


@pytest.mark.parametrize("component", ["deliverytest.short", "deliverytest.long"])
def test_local_runtime_dead_letters_a_batch_with_a_wrong_number_of_results(tmp_path, component):
    with LocalRuntime(_flow(component), tmp_path) as rt:
        rt.feed([{"id": i} for i in range(3)])
        summary = rt.drain()
        dead = rt.dead_letters()
    assert summary.dead_letters == 3 and rt.stats["shape"].inputs == 0
    assert sorted(d.message.body["id"] for d in dead) == [0, 1, 2]
    assert all(d.step == "bad" and "results for 3 messages" in d.error.message for d in dead)
