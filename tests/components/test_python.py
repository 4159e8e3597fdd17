"""python / python.poll: functions captured as source, stored in the spec, run from it."""

from __future__ import annotations

import functools
import json
import re
import textwrap
from datetime import datetime

import pytest

import flownb
from flownb import Flow, load
from flownb.components.python import function_source, python_poll, python_step
from flownb.errors import ConfigError
from flownb.message import Message
from flownb.runtime.core import StepRunner, TriggerRunner

THRESHOLD = 10
UNITS = {"kg": 1000, "g": 1}


def grams(qty, unit):
    return qty * UNITS[unit]


def enrich(body, ctx):
    """Uses a module, a helper function, literal constants, a class import and ctx options."""
    sku = re.sub(r"\s+", "-", body["sku"].strip().lower())
    g = grams(body["qty"], body["unit"])
    if g < THRESHOLD:
        return None
    return {"sku": sku, "grams": g, "tag": ctx.config.options.get("tag"),
            "year": datetime(2024, 1, 1).year}


def explode(body, ctx):
    return [{"n": i} for i in range(body["count"])]


def flaky(body, ctx):
    if body.get("down"):
        raise ConnectionError("upstream refused")
    raise ValueError("bad input")


def counter(state, ctx):
    n = state.get("n", 0)
    for i in range(n, n + ctx.config.options["per_poll"]):
        yield {"i": i}
    state["n"] = n + ctx.config.options["per_poll"]


def _decorator(f):
    @functools.wraps(f)
    def wrapper(*a, **k):
        return f(*a, **k)
    return wrapper


@_decorator
def decorated(body, ctx):
    return {"decorated": True}


def _flow(*steps, trigger=None):
    trig = trigger or flownb.step("src", "test.noop")
    return Flow(name="py-flow", trigger=trig, steps=list(steps))


def _roundtrip(flow: Flow) -> Flow:
    again = load(flow.to_yaml())
    assert again == flow
    assert "pickle" not in flow.to_yaml()
    return again


def test_action_runs_from_the_spec_after_a_yaml_round_trip():
    flow = _roundtrip(_flow(python_step(enrich, tag="web", retry={"max_attempts": 2}), python_step(explode)))
    s = flow.steps[0]
    assert s.name == "enrich" and s.retry.max_attempts == 2 and s.config["options"] == {"tag": "web"}
    src = s.config["source"]
    assert "import re\n" in src and "def grams(qty, unit):" in src and "THRESHOLD = 10" in src
    assert "from datetime import datetime" in src
    runner = StepRunner(flow.resolved(), "enrich").open()
    try:
        out = runner.run(Message(body={"sku": " Big  Box ", "qty": 2, "unit": "kg"}))
        assert out.outputs[0].body == {"sku": "big-box", "grams": 2000, "tag": "web", "year": 2024}
        assert runner.run(Message(body={"sku": "x", "qty": 1, "unit": "g"})).outputs == []
        assert runner.component.func.__globals__ is not globals()  # its own namespace
    finally:
        runner.close()
    split = StepRunner(flow.resolved(), "explode").open()
    assert [m.body for m in split.run(Message(body={"count": 3})).outputs] == [{"n": 0}, {"n": 1}, {"n": 2}]
    split.close()


def test_errors_are_classified_and_tracebacks_show_the_spec_source():
    runner = StepRunner(_flow(python_step(flaky)).resolved(), "flaky").open()
    down = runner.run(Message(body={"down": True}))
    assert down.retry_after is not None and down.error.type == "ConnectionError"
    bad = runner.run(Message(body={}))
    assert bad.dead and bad.error.type == "ValueError"
    assert 'raise ValueError("bad input")' in bad.error.traceback
    runner.close()


def test_poll_from_source_keeps_state():
    trig = python_poll(counter, interval="5s", per_poll=2)
    assert trig.config["interval"] == "5s"
    runner = TriggerRunner(_roundtrip(_flow(trigger=trig)).resolved()).open()
    msgs, _, state = runner.poll({})
    assert [m.body for m in msgs] == [{"i": 0}, {"i": 1}] and state == {"n": 2}
    msgs, _, state = runner.poll(state)
    assert [m.body for m in msgs] == [{"i": 2}, {"i": 3}] and runner.next_delay(state) == 5.0
    runner.close()


def test_decorators_are_stripped():
    src = function_source(decorated)
    assert src.startswith("def decorated(body, ctx):") and "@" not in src


def test_lambda_and_sourceless_functions_say_to_use_def():
    with pytest.raises(ConfigError, match="lambda.*'def'"):
        python_step(lambda body, ctx: body)
    ns: dict = {}
    exec("def typed_in_repl(body, ctx):\n    return body\n", ns)
    with pytest.raises(ConfigError, match="define it with 'def' in a notebook cell"):
        python_step(ns["typed_in_repl"])


def test_closures_and_unportable_globals_are_refused():
    factor = 3

    def scaled(body, ctx):
        return {"v": body["v"] * factor}

    with pytest.raises(ConfigError, match="enclosing function"):
        python_step(scaled)
    globals()["_CONN"] = object()
    try:
        def uses_conn(body, ctx):
            return {"c": str(_CONN)}  # noqa: F821
        uses_conn.__globals__["_CONN"] = object()
        with pytest.raises(ConfigError, match="'_CONN'.*define or import it inside"):
            function_source(uses_conn)
    finally:
        globals().pop("_CONN")


def test_syntax_error_in_spec_source_is_a_config_error_with_line():
    source = textwrap.dedent("""\
        def f(body, ctx):
            x = (1 +
            return body
        """)
    flow = _flow(flownb.step("bad", "python", source=source, function="f"))
    with pytest.raises(ConfigError) as err:
        flow.validate_components()
    assert "line 2" in str(err.value) and err.value.step == "bad" and err.value.field == "config.source"


def test_missing_function_and_failing_module_code():
    flow = _flow(flownb.step("p", "python", source="def g(body, ctx):\n    return body\n", function="f"))
    with pytest.raises(ConfigError, match="defines no top-level function 'f' \\(defined: g\\)"):
        flow.validate_components()
    boom = _flow(flownb.step("p", "python", source="import no_such_mod_xyz\ndef f(b, c):\n    return b\n",
                             function="f"))
    with pytest.raises(ConfigError, match="ModuleNotFoundError"):
        StepRunner(boom.resolved(), "p").open()


def test_lazy_exports_and_json_spec():
    assert flownb.python_step is python_step and flownb.python_poll is python_poll
    json.dumps(python_step(enrich).spec())  # plain data
