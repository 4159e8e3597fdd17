"""The flight recorder's model (flownb/recorder.py, the spec's ``record:``): the policy is validated,
sampling is decided by the trace id alone, redaction replaces nested paths before anything is
stored. The runtimes: tests/runtime/test_recorder_local.py and tests/runtime/amqp/test_recorder_amqp.py."""

from __future__ import annotations

import pytest

import flownb
from flownb.errors import SpecError
from flownb.flow import RecordPolicy
from flownb.message import new_id
from flownb.recorder import REDACTED, Recorder, redact_paths, sampled

SPEC = """
name: rec
trigger: {name: src, component: schedule, config: {every: 1m}}
steps:
  - {name: keep, component: filter, config: {condition: "true"}}
record: {sample: 0.01, keep: 7d, redact: [customer.email, card]}
"""


def test_the_record_section_is_a_validated_part_of_the_spec_and_round_trips():
    flow = flownb.load(SPEC)
    assert flow.record == RecordPolicy(sample=0.01, keep=7 * 86400, redact=["customer.email", "card"])
    assert flownb.load(flow.to_yaml()) == flow
    assert "keep:" not in flow.to_yaml()  # the default (7d) is left out, as every default
    assert "keep: 12h" in flow.model_copy(update={"record": RecordPolicy(sample=0.5, keep="12h")}).to_yaml()
    # a flow without record: has the same spec (and spec hash) as before the recorder existed
    plain = flownb.load(SPEC.replace("record: {sample: 0.01, keep: 7d, redact: [customer.email, card]}", ""))
    assert plain.record is None and "record" not in plain.spec()


@pytest.mark.parametrize("record, field, words", [
    ("{sample: 1.5}", "record.sample", "less than or equal to 1"),
    ("{sample: -0.1}", "record.sample", "greater than or equal to 0"),
    ("{keep: 7d}", "record.sample", "required"),
    ("{sample: 0.1, keep: 0}", "record.keep", "longer than 0"),
    ("{sample: 0.1, keep: soon}", "record.keep", "not a duration"),
    ("{sample: 0.1, redact: [customer..email]}", "record.redact", "not a field path"),
    ("{sample: 0.1, redact: ['']}", "record.redact", "not a field path"),
    ("{sample: 0.1, samples: 0.2}", "record.samples", "allowed: sample, keep, redact"),
])
def test_a_bad_record_section_is_a_spec_error_naming_the_field(record, field, words):
    with pytest.raises(SpecError) as err:
        flownb.load(SPEC.replace("{sample: 0.01, keep: 7d, redact: [customer.email, card]}", record))
    assert err.value.field == field, err.value
    assert words in str(err.value)


def test_sampling_is_decided_by_the_trace_id_alone_and_follows_the_rate():
    traces = [new_id() for _ in range(20_000)]
    first = [sampled(t, 0.1) for t in traces]
    assert first == [sampled(t, 0.1) for t in traces]  # the same answer every time (every step, process)
    assert 0.09 < sum(first) / len(traces) < 0.11
    assert not any(sampled(t, 0.0) for t in traces[:1000]) and all(sampled(t, 1.0) for t in traces[:1000])
    # a trace sampled at a lower rate is sampled at every higher rate (one hash, one threshold)
    assert all(sampled(t, 0.5) for t, s in zip(traces, first, strict=True) if s)
    # another process agrees (no per-process salt: the hash is BLAKE2b of the id)
    assert sampled("0" * 32, 0.5) is (int.from_bytes(__import__("hashlib").blake2b(b"0" * 32, digest_size=8)
                                                     .digest(), "big") / 2 ** 64 < 0.5)


def test_redaction_replaces_nested_paths_through_arrays_and_leaves_the_input_alone():
    body = {"customer": {"email": "a@b.c", "name": "Ada"}, "card": "4111", "lines": [{"sku": 1, "pin": 9},
                                                                                   {"sku": 2}],
            "other": {"email": "kept"}}
    out = redact_paths(body, ["customer.email", "card", "lines.pin", "missing.path", "customer.email.deeper"])
    assert out == {"customer": {"email": REDACTED, "name": "Ada"}, "card": REDACTED,
                   "lines": [{"sku": 1, "pin": REDACTED}, {"sku": 2}], "other": {"email": "kept"}}
    assert body["customer"]["email"] == "a@b.c" and body["lines"][0]["pin"] == 9


def test_a_recorder_needs_a_record_section(tmp_path):
    flow = flownb.load(SPEC.replace("record: {sample: 0.01, keep: 7d, redact: [customer.email, card]}", ""))
    assert Recorder.of(flow) is None
    with pytest.raises(SpecError, match="no 'record:' section"):
        Recorder(flow)
    with pytest.raises(SpecError, match="records nothing"):
        flownb.trace("0" * 32, flow, state_dir=_state_with_table(tmp_path, flow.name))


def _state_with_table(tmp_path, name):
    from flownb.recorder import open_db
    open_db(tmp_path / f"{name}.db").close()
    return tmp_path


def test_an_event_stored_twice_is_shown_once(tmp_path):
    from flownb.recorder import RecordBatch, insert, open_db, trace_rows
    con = open_db(tmp_path / "r.db")
    rows = [("t" * 32, "a", 1, "m1", 1, "{}", "[{}]", "delivered", None, None, 10.0),
            ("t" * 32, "b", 2, "m2", 1, "{}", "[]", "filtered", None, None, 11.0)]
    insert(con, RecordBatch(rows))
    insert(con, RecordBatch(rows[:1]))  # drained again after a recorder died before its ack
    con.close()
    path = trace_rows("t" * 32, db=tmp_path / "r.db")
    assert [(r["seq"], r["step"], r["outcome"]) for r in path] == [(0, "a", "delivered"), (1, "b", "filtered")]
