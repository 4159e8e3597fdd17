"""mapping / filter / split through the shared StepRunner (the path both runtimes take)."""

from __future__ import annotations

import pytest

from flownb import Flow, Message, step
from flownb.errors import ConfigError, ExpressionError
from flownb.registry import validate_step


def bodies(outcome):
    return [m.body for m in outcome.outputs]


def test_mapping_fields(step_runner):
    r = step_runner("mapping", {"fields": {"email": "$lowercase(customer.email)",
                                           "total": "$sum(items.(qty * price))", "gone": "nope"}})
    out = r.run(Message(body={"customer": {"email": "A@B.C"}, "items": [{"qty": 2, "price": 3}]}))
    assert out.ok and bodies(out) == [{"email": "a@b.c", "total": 6}]
    assert out.outputs[0].parent == out.message.id


def test_mapping_expression_and_batch(step_runner):
    r = step_runner("mapping", {"expression": '{"n": n * 2}'})
    outs = r.run_batch([Message(body={"n": i}) for i in range(5)] + [Message(body={"n": "x"})])
    assert [bodies(o) for o in outs[:5]] == [[{"n": i * 2}] for i in range(5)]
    bad = outs[5]
    assert bad.dead and bad.error.type == "EvaluationError" and "T2001" in bad.error.message
    assert not bad.error.retryable


@pytest.mark.parametrize("body,kind", [({"kind": "list", "items": [1, 2]}, "an array"),
                                       ({"kind": "text", "items": "x"}, "a string")])
def test_mapping_expression_that_is_not_an_object_fails_as_in_the_preview(step_runner, body, kind):
    """The dead letter's error is the one Mapping.preview shows for the same row."""
    from flownb.rules import Mapping
    expr = 'kind = "obj" ? {"n": 1} : items'
    out = step_runner("mapping", {"expression": expr}).run(Message(body=body))
    preview = Mapping(expression=expr).preview([body])["_error"][0]
    assert out.dead and out.error.type == "EvaluationError" and not out.error.retryable
    assert f"the mapping expression gave {kind}, not an object" in out.error.message
    assert out.error.message.startswith(preview)


def test_mapping_error_names_the_field_and_dead_letters(step_runner):
    r = step_runner("mapping", {"fields": {"total": "price * 2"}})
    out = r.run(Message(body={"price": "ten"}))
    assert out.dead and "field 'total'" in out.error.message


def test_filter(step_runner):
    r = step_runner("filter", {"condition": "total > 100"})
    outs = r.run_batch([Message(body={"total": 150}), Message(body={"total": 5}), Message(body={}),
                        Message(body={"total": "x"})])
    assert bodies(outs[0]) == [{"total": 150}]
    assert outs[1].ok and bodies(outs[1]) == [] and outs[2].ok and bodies(outs[2]) == []
    assert outs[3].dead and "T2009" in outs[3].error.message


def test_split(step_runner):
    r = step_runner("split", {"path": "items"})
    out = r.run(Message(body={"items": [{"sku": "a"}, 7, "x", None]}))
    assert bodies(out) == [{"sku": "a"}, {"value": 7}, {"value": "x"}, {"value": None}]
    assert bodies(r.run(Message(body={}))) == []
    assert bodies(r.run(Message(body={"items": {"sku": "only"}}))) == [{"sku": "only"}]
    r2 = step_runner("split", {"path": "tags", "into": "tag"})
    assert bodies(r2.run(Message(body={"tags": ["a", "b"]}))) == [{"tag": "a"}, {"tag": "b"}]


def test_fallback_expressions_run_in_components(step_runner):
    r = step_runner("mapping", {"fields": {"skus": "$map(items, function($i) { $uppercase($i.sku) })"}})
    assert bodies(r.run(Message(body={"items": [{"sku": "a"}, {"sku": "b"}]}))) == [{"skus": ["A", "B"]}]


@pytest.mark.parametrize("component, config, field, position", [
    ("mapping", {"fields": {"ok": "a", "bad": "a +"}}, "config.fields.bad", 3),
    ("mapping", {"expression": "{'a': }"}, "config.expression", 6),
    ("filter", {"condition": "total >"}, "config.condition", 7),
    ("split", {"path": "items["}, "config.path", 6),
])
def test_validation_reports_step_field_and_position(component, config, field, position):
    s = step("my-step", component, **config)
    with pytest.raises(ExpressionError) as info:
        validate_step(s, trigger=False)
    err = info.value
    assert err.step == "my-step" and err.field == field and err.position == position
    assert "my-step" in str(err)


def test_mapping_config_needs_exactly_one():
    for cfg in ({}, {"fields": {"a": "a"}, "expression": "{}"}, {"fields": {}}):
        with pytest.raises(ConfigError):
            validate_step(step("m", "mapping", **cfg), trigger=False)


def test_flow_spec_with_rules_validates():
    flow = Flow.model_validate({
        "name": "orders", "trigger": {"name": "src", "component": "test.noop"},
        "steps": [{"name": "m", "component": "mapping", "config": {"fields": {"x": "a"}}},
                  {"name": "f", "component": "filter", "config": {"condition": "x > 1"}},
                  {"name": "s", "component": "split", "config": {"path": "x"}}]})
    assert set(flow.validate_components()) == {"src", "m", "f", "s"}


@pytest.mark.parametrize("component,config,field", [
    ("mapping", {"fields": {"ok": "n", "y": "($f := function($n){ $f($n+1) }; $f(0))"}}, "y"),
    ("mapping", {"expression": '{"y": $count(a[$count($$.a[$count($$.a[$count($$.a) > 0]) > 0]) > 0])}'},
     "expression"),
    ("filter", {"condition": "($f := function($n){ $n > -1 ? $f($n) : 0 }; $f(1))"}, "condition"),
    ("split", {"path": "$map(a[$count($$.a[$count($$.a[$count($$.a) > 0]) > 0]) > 0], function($v){ $v })"},
     "path")])
def test_an_evaluation_past_the_step_timeout_dead_letters(step_runner, component, config, field):
    r = step_runner(component, {**config, "timeout": "300ms"})
    slow = Message(body={"n": 1, "a": list(range(300))})
    outs = r.run_batch([slow, slow])
    single = r.run(slow)
    for out in [*outs, single]:
        assert out.dead and out.error.type == "EvaluationTimeout" and not out.error.retryable
        assert out.error.message == (f"evaluation exceeded 0.3 s (step '{r.step.name}', field '{field}'); "
                                     f"simplify the expression or raise the step's timeout")


def test_the_timeout_is_a_duration(step_runner):
    from flownb.errors import ConfigError as CE
    with pytest.raises(CE):
        validate_step(step("m", "mapping", fields={"a": "a"}, timeout="soon"), trigger=False)
    with pytest.raises(CE):
        validate_step(step("m", "mapping", fields={"a": "a"}, timeout=0), trigger=False)
