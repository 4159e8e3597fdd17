"""max_message_bytes: an output over the flow's limit dead-letters its input (never published); a
trigger record over it is a trigger dead letter and the cursor moves past it. Same on flow.test and
the embedded runtime (RabbitMQ: tests/runtime/amqp/test_message_size_amqp.py)."""

from __future__ import annotations

import pytest

import flownb
from flownb.errors import MessageTooLarge
from flownb.runtime.local import LocalRuntime

POLL = '''
def poll(state, ctx):
    start = state.get("next", 0)
    if start >= 6:
        return []
    state["next"] = 6
    return [{"id": i, "blob": "x" * (5000 if i == 2 else 10)} for i in range(start, 6)]
'''

GROW = '''
def grow(body, ctx):
    return {**body, "pad": "y" * (4000 if body["id"] == 4 else 1)}
'''


def _flow(out) -> flownb.Flow:
    return flownb.Flow(
        name="sizes", max_message_bytes="3KiB",
        trigger=flownb.step("src", "python.poll", source=POLL, function="poll", interval="1h"),
        steps=[flownb.step("grow", "python", source=GROW, function="grow"),
               flownb.step("out", "csv.write", path=str(out))])


def test_limit_is_parsed_and_saved():
    f = flownb.Flow(name="x", trigger=flownb.step("h", "webhook", token_env="T"), max_message_bytes="2MiB")
    assert f.max_message_bytes == 2 * 1024 * 1024
    assert flownb.load(f.to_yaml()).max_message_bytes == 2 * 1024 * 1024
    assert "max_message_bytes" not in flownb.Flow(name="x", trigger=f.trigger).spec()  # default left out


def test_embedded_runtime_dead_letters_oversized_records_and_outputs(tmp_path):
    out = tmp_path / "out.csv"
    with LocalRuntime(_flow(out), tmp_path / "state") as rt:
        rt.run(until_idle=True)
        dead = sorted(rt.dead_letters(), key=lambda d: d.step)
        state, _ = rt.store.get_state("src")
    assert state == {"next": 6}  # the cursor moved past the oversized record
    assert [(d.step, d.error.type) for d in dead] == [("grow", "MessageTooLarge"), ("src", "MessageTooLarge")]
    grow, src = dead
    assert grow.message.body["id"] == 4 and "an output of this step is" in grow.error.message
    assert "over the flow's max_message_bytes (3,072 bytes)" in grow.error.message
    assert src.message.body["id"] == 2 and "a record of this trigger is" in src.error.message
    ids = sorted(int(line.split(",")[0]) for line in out.read_text().splitlines()[1:])
    assert ids == [0, 1, 3, 5]


def test_flow_test_dead_letters_an_oversized_output_like_the_runtime(tmp_path):
    result = _flow(tmp_path / "out.csv").test([{"id": 4, "blob": ""}, {"id": 1, "blob": ""}])
    assert [d.message.body["id"] for d in result.dead_letters] == [4]
    assert result.dead_letters[0].error.type == "MessageTooLarge"


def test_a_sample_record_over_the_limit_is_refused_loudly(tmp_path):
    with pytest.raises(MessageTooLarge, match="max_message_bytes"):
        _flow(tmp_path / "out.csv").test([{"id": 0, "blob": "z" * 10_000}])


#: grows a body to ``size`` bytes on the wire, give or take its envelope
PAD = '''
def pad(body, ctx):
    return {"id": body["id"], "pad": "y" * body["size"]}
'''


def test_the_default_limit_is_8_mib_and_is_enforced(tmp_path):
    """A flow that says nothing gets 8 MiB (docs/architecture.md), spelled as a number, not read back
    from the constant: an output of 9 MiB is dead-lettered naming 8,388,608 bytes, one of 7 MiB passes."""
    flow = flownb.Flow(name="default-size", trigger=flownb.step("h", "webhook", token_env="T"),
                       steps=[flownb.step("pad", "python", source=PAD, function="pad")])
    assert flow.max_message_bytes == 8 * 1024 * 1024
    assert flownb.load(flow.to_yaml()).max_message_bytes == 8 * 1024 * 1024
    result = flow.test([{"id": 1, "size": 7 * 1024 * 1024}, {"id": 2, "size": 9 * 1024 * 1024}])
    assert [b["id"] for b in result.outputs["pad"]] == [1]
    [dead] = result.dead_letters
    assert dead.message.body["id"] == 2 and dead.error.type == "MessageTooLarge"
    assert "over the flow's max_message_bytes (8,388,608 bytes)" in dead.error.message
