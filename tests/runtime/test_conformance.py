"""One behaviour suite for every runtime engine (see engines.py): same flows → same outputs,
same dead letters, same trigger state."""

from __future__ import annotations

import pytest
from runtimes import ENGINES

FAST_RETRY = {"retry": {"max_attempts": 3, "initial": "20ms", "max": "50ms"}}


# the RabbitMQ engine needs the broker: its parameter carries the markers (-m "not rabbitmq" leaves it out)
ENGINE_MARKS = {"amqp": [pytest.mark.integration, pytest.mark.rabbitmq]}


@pytest.fixture(params=[pytest.param(name, marks=ENGINE_MARKS.get(name, [])) for name in sorted(ENGINES)])
def engine(request):
    return ENGINES[request.param]()


def _ns(bodies):
    return sorted(b["n"] for b in bodies)


def test_mapping_and_filter_outputs(engine, flow_factory, tmp_path):
    flow = flow_factory(("double", "lt.double", {}), ("even", "lt.even", {}),
                        trigger=("lt.count", {"total": 20}))
    r = engine.run(flow, tmp=tmp_path)
    assert sorted(r.outputs, key=lambda b: b["n"]) == [{"n": n, "w": 2 * n} for n in range(0, 20, 2)]
    assert r.dead_letters == []


def test_inputs_fed_as_trigger_output(engine, flow_factory, tmp_path):
    flow = flow_factory(("double", "lt.double", {}))
    r = engine.run(flow, inputs=[{"n": 5}, {"n": 7, "x": "y"}], tmp=tmp_path)
    assert sorted(r.outputs, key=lambda b: b["n"]) == [{"n": 5, "w": 10}, {"n": 7, "x": "y", "w": 14}]


def test_split_fans_out(engine, flow_factory, tmp_path):
    flow = flow_factory(("split", "lt.split", {"parts": 3}), ("double", "lt.double", {}),
                        trigger=("lt.count", {"total": 4}))
    r = engine.run(flow, tmp=tmp_path)
    assert len(r.outputs) == 12
    assert sorted((b["n"], b["part"]) for b in r.outputs) == [(n, k) for n in range(4) for k in range(3)]
    assert all(b["w"] == 2 * b["n"] for b in r.outputs)


def test_retries_then_success(engine, flow_factory, tmp_path):
    flow = flow_factory(("flaky", "lt.flaky", {"fail_times": 2}, FAST_RETRY),
                        trigger=("lt.count", {"total": 5}))
    r = engine.run(flow, tmp=tmp_path)
    assert _ns(r.outputs) == list(range(5))
    assert {b["attempts"] for b in r.outputs} == {3}
    assert r.dead_letters == []


def test_dead_letter_after_max_attempts_with_error(engine, flow_factory, tmp_path):
    flow = flow_factory(("double", "lt.double", {}), ("flaky", "lt.flaky", {"fail_times": 5}, FAST_RETRY),
                        trigger=("lt.count", {"total": 3}))
    r = engine.run(flow, tmp=tmp_path)
    assert r.outputs == []
    assert len(r.dead_letters) == 3
    for d in r.dead_letters:
        assert d.step == "flaky"
        assert d.error.type == "RetryableError"
        assert d.error.attempt == 3 and d.error.retryable
        assert "flaky: attempt 3" in d.error.message
        assert "RetryableError" in d.error.traceback and "Traceback" in d.error.traceback
        assert d.message.body["w"] == 2 * d.message.body["n"]   # the input of the failing step
    assert sorted(d.message.body["n"] for d in r.dead_letters) == [0, 1, 2]


@pytest.mark.parametrize("component,error", [("lt.fatal", "FatalError"), ("lt.crash", "ValueError")])
def test_non_retryable_dead_letters_at_once(engine, flow_factory, tmp_path, component, error):
    flow = flow_factory(("check", component, {}, FAST_RETRY),
                        trigger=("lt.count", {"total": 6, "poison": [1, 4]}))
    r = engine.run(flow, tmp=tmp_path)
    assert _ns(r.outputs) == [0, 2, 3, 5]
    assert sorted(d.message.body["n"] for d in r.dead_letters) == [1, 4]
    for d in r.dead_letters:
        assert d.step == "check" and d.error.type == error
        assert d.error.attempt == 1 and not d.error.retryable
        assert f"message {d.message.body['n']}" in d.error.message


def test_trigger_cursor_state_after_polls(engine, flow_factory, tmp_path):
    flow = flow_factory(("double", "lt.double", {}), trigger=("lt.count", {"total": 25, "batch": 10}))
    r = engine.run(flow, polls=2, tmp=tmp_path)
    assert r.trigger_state == {"next": 20}
    assert _ns(r.outputs) == list(range(20))


def test_builtin_jsonata_mapping_filter_and_split(engine, flow_factory, tmp_path):
    flow = flow_factory(("shape", "mapping", {"fields": {"n": "n", "sq": "n * n", "tags": '["a", "b"]'}}),
                        ("big", "filter", {"condition": "sq > 4"}),
                        ("each", "split", {"path": 'tags.{"n": $$.n, "tag": $}'}),
                        trigger=("lt.count", {"total": 5}))
    r = engine.run(flow, tmp=tmp_path)
    assert sorted((b["n"], b["tag"]) for b in r.outputs) == [(n, t) for n in (3, 4) for t in "ab"]
