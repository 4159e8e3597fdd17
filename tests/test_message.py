"""Message and its wire codec: JSON only, NaN refused, errors name the step."""

from __future__ import annotations

import datetime as dt

import numpy as np
import orjson
import pytest

from flownb import Message
from flownb.errors import MessageError
from flownb.message import decode_body, encode_body


def test_round_trip_keeps_everything():
    m = Message(body={"a": 1, "nested": {"b": [1, 2.5, None, "x"]}}, headers={"h": "v"}, flow="f", step="s",
                attempt=3)
    back = Message.from_json(m.to_json())
    assert back == m
    assert orjson.loads(m.to_json())["meta"] == {"flow": "f", "step": "s", "parent": None, "trace": m.id,
                                                  "attempt": 3, "created": m.created}


def test_child_keeps_trace_and_headers_with_a_new_id():
    root = Message(body={"a": 1}, headers={"k": "v"}, flow="f", step="t")
    child = root.child({"b": 2}, "s1")
    grandchild = child.child({"c": 3}, "s2")
    assert child.id != root.id and child.parent == root.id and child.step == "s1"
    assert grandchild.trace == root.id == root.trace and grandchild.headers == {"k": "v"}
    child.headers["k"] = "changed"
    assert root.headers == {"k": "v"}


def test_the_spec_hash_travels_in_meta_and_a_message_without_it_still_decodes():
    m = Message(body={"a": 1}, flow="f", step="t", spec="0123456789abcdef")
    wire = orjson.loads(m.to_json())
    assert wire["meta"]["spec"] == "0123456789abcdef" and Message.from_json(m.to_json()) == m
    assert m.child({"b": 2}, "s1").spec == "0123456789abcdef"  # default: the parent's
    assert m.child({"b": 2}, "s1", "fedcba9876543210").spec == "fedcba9876543210"  # the producing step's
    del wire["meta"]["spec"]  # a message of an older flownb
    old = Message.from_json(orjson.dumps(wire))
    assert old.spec == "" and old.body == {"a": 1} and b'"spec"' not in old.to_json()


@pytest.mark.parametrize("body", [{"x": float("nan")}, {"x": [1, float("inf")]}, {"x": {"y": -float("inf")}}])
def test_nan_and_infinity_are_refused(body):
    with pytest.raises(MessageError, match="step 'calc'.*not JSON-serialisable"):
        encode_body(body, step="calc")
    with pytest.raises(MessageError, match="step 'calc'"):
        Message(body=body, step="calc").to_json()


def test_null_values_are_fine():
    assert orjson.loads(encode_body({"a": None})) == {"a": None}
    assert Message.from_json(Message(body={"a": None}, parent="p").to_json()).body == {"a": None}


@pytest.mark.parametrize("body", [{"s": {1, 2}}, {"o": object()}, {"b": b"\xff"}])
def test_non_json_values_name_the_step_and_say_what_to_do(body):
    with pytest.raises(MessageError, match=r"step 'enrich'.*convert the value"):
        encode_body(body, step="enrich")


@pytest.mark.parametrize("body", [[1, 2], "text", None, 3])
def test_body_must_be_an_object(body):
    with pytest.raises(MessageError, match=r"step 'x'.*must be a JSON object.*return a dict"):
        encode_body(body, step="x")


def test_numpy_and_dates_are_serialised():
    data = orjson.loads(encode_body({"i": np.int64(3), "f": np.float64(1.5), "a": np.arange(3),
                                     "d": dt.date(2024, 1, 2)}))
    assert data == {"i": 3, "f": 1.5, "a": [0, 1, 2], "d": "2024-01-02"}


@pytest.mark.parametrize("raw,match", [(b"{not json", "not valid JSON"), (b"[1]", "JSON object")])
def test_decode_errors(raw, match):
    with pytest.raises(MessageError, match=match):
        decode_body(raw)
    with pytest.raises(MessageError):
        Message.from_json(raw)


def test_from_dict_requires_an_object_body():
    with pytest.raises(MessageError, match="JSON object"):
        Message.from_dict({"id": "x", "body": [1]})
    m = Message.from_dict({"body": {"a": 1}})
    assert m.trace == m.id and m.attempt == 1


def test_ids_are_random_uuid4_hex():
    import uuid

    from flownb.message import new_id
    ids = {new_id() for _ in range(2000)}
    assert len(ids) == 2000
    for i in list(ids)[:200]:
        u = uuid.UUID(hex=i)
        assert u.version == 4 and u.variant == uuid.RFC_4122 and u.hex == i
