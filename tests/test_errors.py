"""The exception tree: one root, data on errors, messages that say what to do."""

from __future__ import annotations

import pytest

import flownb
from flownb import errors
from flownb.components.base import Action, classify

TREE = {
    "SpecError": "FlownbError", "SpecSyntaxError": "SpecError", "UnknownComponentError": "SpecError",
    "ConfigError": "SpecError", "ParameterError": "SpecError", "ExpressionError": "SpecError",
    "ScheduleInputError": "SpecError", "UpgradeError": "SpecError",
    "MessageError": "FlownbError", "MessageTooLarge": "MessageError", "StepError": "FlownbError",
    "RetryableError": "StepError",
    "Retry": "RetryableError", "FatalError": "StepError", "PoisonMessage": "FatalError",
    "EvaluationError": "FatalError", "EvaluationTimeout": "FatalError",
    "RuntimeFailure": "FlownbError", "QueueFull": "RuntimeFailure", "Backpressure": "RuntimeFailure",
    "StateError": "RuntimeFailure", "StorageFull": "RuntimeFailure", "ErrorFlowFailed": "RuntimeFailure",
    "BrokerError": "RuntimeFailure",
    "TopologyError": "BrokerError", "Unavailable": "BrokerError", "DeployError": "FlownbError",
    "ExportError": "DeployError", "ScheduleError": "FlownbError",
}


@pytest.mark.parametrize("name,parent", sorted(TREE.items()))
def test_tree(name, parent):
    cls = getattr(errors, name)
    assert cls.__bases__ == (getattr(errors, parent),)
    assert issubclass(cls, errors.FlownbError)
    assert name in (errors.__doc__ or ""), f"{name} is missing from the tree drawn in the docstring"


def _drawn() -> dict[str, str]:
    """name → parent, read off the tree drawn in errors.py's docstring (by indentation)."""
    import re
    parents: list[str] = []
    out = {}
    for line in (errors.__doc__ or "").splitlines():
        m = re.match(r"^\s{4}((?:[│ ]\s{3})*)[├└]── (\w+)", line)
        if m:
            depth = len(m.group(1)) // 4
            del parents[depth + 1:]
            name = m.group(2)
            out[name] = parents[depth] if depth < len(parents) else "FlownbError"
            parents[depth + 1:] = [name]
        elif line.strip() == "FlownbError":
            parents = ["FlownbError"]
    return out


def test_every_flownb_error_class_is_defined_in_errors_py_and_drawn_where_it_is():
    """Import every module of the package, then compare FlownbError's subclasses with the drawing."""
    import importlib
    import pkgutil
    for mod in pkgutil.walk_packages(flownb.__path__, "flownb."):
        importlib.import_module(mod.name)
    found, todo = {}, [errors.FlownbError]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            if sub.__module__.startswith("flownb"):
                found[sub.__name__] = (sub.__module__, cls.__name__)
                todo.append(sub)
    outside = {n: m for n, (m, _) in found.items() if m != "flownb.errors"}
    assert outside == {}, "define these in flownb/errors.py (import them where they are used)"
    assert {n: parent for n, (_, parent) in found.items()} == _drawn() == TREE


def test_an_error_is_located_later_with_at():
    e = errors.ExpressionError("unexpected token", expression="a + * b", position=4)
    assert str(e).startswith("unexpected token at position 4")
    raised = e.at(step="m", field="total")
    assert raised is e and (e.step, e.field, e.reason) == ("m", "total", "unexpected token")
    assert str(e).startswith("step 'm', field 'total': unexpected token at position 4\n    a + * b\n        ^")
    e.at(step="other", field="x")  # a location already known is kept
    assert (e.step, e.field) == ("m", "total")
    m = errors.MessageError("an output must be a JSON object").at(step="push")
    assert str(m) == "step 'push': an output must be a JSON object"
    t = errors.EvaluationTimeout(2.0).at(step="m", field="f")
    assert str(t) == ("evaluation exceeded 2 s (step 'm', field 'f'); simplify the expression or raise "
                      "the step's timeout")


def test_every_exported_error_is_in_the_tree():
    exported = {n for n in errors.__all__ if n not in ("FlownbError", "did_you_mean")}
    assert exported == set(TREE)


def test_spec_error_carries_step_and_field():
    e = errors.SpecError("is wrong", step="push", field="config.url")
    assert str(e) == "step 'push', field 'config.url': is wrong"
    assert (e.step, e.field, e.reason) == ("push", "config.url", "is wrong")


def test_unknown_component_suggests_and_lists():
    e = errors.UnknownComponentError("sql.pol", ["sql.poll", "log", "mapping"], step="src")
    assert "unknown component 'sql.pol'; did you mean 'sql.poll'?" in str(e)
    assert "installed: log, mapping, sql.poll" in str(e)
    assert e.installed == ["log", "mapping", "sql.poll"] and e.field == "component"


def test_expression_error_points_at_the_position():
    e = errors.ExpressionError("unexpected token", expression="a + * b", position=4, step="m",
                               field="config.fields.x")
    assert e.position == 4
    assert str(e).endswith("at position 4\n    a + * b\n        ^")


def test_did_you_mean():
    assert errors.did_you_mean("mapng", ["mapping", "filter"]) == "; did you mean 'mapping'?"
    assert errors.did_you_mean("zzz", ["mapping"]) == ""


def test_retry_and_classification():
    r = flownb.Retry(after=5)
    assert r.retryable and r.after == 5
    assert classify(errors.RetryableError("x")) and not classify(errors.FatalError("x"))
    assert classify(ConnectionRefusedError()) and classify(TimeoutError())
    assert not classify(ValueError("x"))

    class Flaky(Action):
        retryable_exceptions = (KeyError,)
    assert classify(KeyError("k"), Flaky.__new__(Flaky)) and not classify(KeyError("k"))


def test_queue_full_carries_depth():
    e = errors.QueueFull("full", depth=10, limit=5)
    assert isinstance(e, errors.RuntimeFailure) and (e.depth, e.limit) == (10, 5)


def test_message_error_names_step():
    assert str(errors.MessageError("bad", step="s")) == "step 's': bad"
