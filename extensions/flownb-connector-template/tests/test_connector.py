"""The connector's own tests: the components alone, then in a flow on flownb's local runtime."""

from __future__ import annotations

import json

import pytest

import flownb
from flownb.errors import ConfigError, FatalError, RetryableError
from flownb.registry import available, get
from flownb.runtime.core import TriggerRunner
from flownb.runtime.local import LocalRuntime


def flow(tmp_path, **poll):
    return flownb.Flow.model_validate(
        {
            "name": "example",
            "trigger": {
                "name": "lines",
                "component": "example.jsonl.poll",
                "config": {"path": str(tmp_path / "in.jsonl"), "interval": "1s", **poll},
            },
            "steps": [
                {
                    "name": "greet",
                    "component": "example.format",
                    "config": {"field": "greeting", "template": "Hello {name}!"},
                }
            ],
        }
    )


def write(path, *lines, mode="a"):
    with open(path, mode) as fh:
        fh.write("".join(lines))


def test_registered_through_the_entry_point():
    assert {"example.jsonl.poll", "example.format"} <= set(available())
    assert get("example.format").__module__ == "flownb_connector_example.action"


def test_poll_resumes_from_its_cursor_and_waits_for_half_written_lines(tmp_path):
    runner = TriggerRunner(flow(tmp_path, batch=2))
    with pytest.raises(RetryableError, match="does not exist yet"):
        runner.poll({})
    write(tmp_path / "in.jsonl", '{"name": "a"}\n', '{"name": "b"}\n', '{"name": "c"}\n', '{"name": "d"')
    msgs, _, state = runner.poll({})
    assert [m.body for m in msgs] == [{"name": "a"}, {"name": "b"}] and state["full"]
    assert runner.next_delay(state) == 0.0
    msgs, _, state = runner.poll(state)
    assert [m.body for m in msgs] == [{"name": "c"}] and not state["full"]
    write(tmp_path / "in.jsonl", "}\n")
    msgs, _, state = runner.poll(state)
    assert [m.body for m in msgs] == [{"name": "d"}]


def test_invalid_lines_fail_or_are_skipped(tmp_path):
    write(tmp_path / "in.jsonl", "[1, 2]\n", '{"name": "ok"}\n', mode="w")
    with pytest.raises(FatalError, match="skip_invalid"):
        TriggerRunner(flow(tmp_path)).poll({})
    msgs, _, _ = TriggerRunner(flow(tmp_path, skip_invalid=True)).poll({})
    assert [m.body for m in msgs] == [{"name": "ok"}]


def test_config_errors_name_the_field(tmp_path):
    bad = flow(tmp_path).model_dump()
    bad["steps"][0]["config"]["templat"] = "x"
    with pytest.raises(ConfigError, match="did you mean 'template'"):
        flownb.Flow.model_validate(bad).validate_components()
    bad = flow(tmp_path).model_dump()
    bad["trigger"]["config"]["path"] = "data.csv"
    with pytest.raises(ConfigError, match="csv.poll"):
        flownb.Flow.model_validate(bad).validate_components()


def test_flow_on_the_local_runtime(tmp_path):
    write(tmp_path / "in.jsonl", '{"name": "Ada"}\n', '{"id": 2}\n', mode="w")
    f = flow(tmp_path)
    with LocalRuntime(f, tmp_path / "state", record=True) as rt:
        rt.run(until_idle=True)
        assert rt.recorded["greet"] == [{"name": "Ada", "greeting": "Hello Ada!"}]
        [dead] = rt.dead_letters("greet")
        assert dead.message.body == {"id": 2} and "needs field 'name'" in dead.error.message
    # a second run starts after the cursor: nothing is emitted twice
    write(tmp_path / "in.jsonl", json.dumps({"name": "Bob"}) + "\n")
    with LocalRuntime(f, tmp_path / "state", record=True) as rt:
        rt.run(until_idle=True)
        assert rt.recorded["greet"] == [{"name": "Bob", "greeting": "Hello Bob!"}]
