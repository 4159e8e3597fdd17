"""runtime/amqp/publish.py: the webhook publisher's frames byte for byte against pamqp (which aiormq
uses), the message properties every publisher shares, the private client-library API flownb
relies on being there for the installed versions, and the pika publishers (confirmed: acks, nacks,
returns and the deadline of a batch; transactional: all or nothing) against RabbitMQ."""

from __future__ import annotations

import asyncio
import time

import aiormq
import orjson
import pika
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pamqp import commands, frame
from pamqp.header import ContentHeader

from flownb.runtime.amqp.publish import (
    PERSISTENT,
    POLLED_HEADER,
    TRANSIENT,
    ConfirmedPublisher,
    TransactionalPublisher,
    aiormq_props,
    error_props,
    marshal_header,
    marshal_method,
    private_api_problems,
    state_props,
)
from flownb.runtime.amqp.topology import ERROR_HEADER, STEP_HEADER, VERSION_HEADER, message_count
from flownb.runtime.core import ErrorInfo

ids = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=60)


@given(channel=st.integers(1, 65535), size=st.integers(0, 2**40), message_id=ids,
       correlation_id=st.one_of(st.none(), ids), reply_to=st.one_of(st.none(), ids))
def test_header_frame_equals_pamqp(channel, size, message_id, correlation_id, reply_to):
    props = commands.Basic.Properties(content_type="application/json", delivery_mode=2, message_id=message_id,
                                      correlation_id=correlation_id, reply_to=reply_to)
    expected = frame.marshal(ContentHeader(0, size, props), channel)
    assert marshal_header(channel, size, message_id=message_id, correlation_id=correlation_id,
                          reply_to=reply_to) == expected


@pytest.mark.parametrize("mandatory", [True, False])
def test_method_frame_equals_pamqp(mandatory):
    expected = frame.marshal(commands.Basic.Publish(exchange="flownb.orders", routing_key="map-é",
                                                    mandatory=mandatory), 7)
    assert marshal_method(7, "flownb.orders", "map-é", mandatory) == expected


def test_short_strings_over_255_bytes_are_refused():
    with pytest.raises(ValueError, match="255"):
        marshal_header(1, 3, message_id="x" * 256)


def test_message_properties_are_written_once_for_both_libraries():
    assert (PERSISTENT.delivery_mode, PERSISTENT.content_type) == (2, "application/json")
    assert (TRANSIENT.delivery_mode, TRANSIENT.content_type) == (1, "application/json")
    info = ErrorInfo(type="FatalError", message="boom", step="push", attempt=3, retryable=False, traceback="tb")
    p = error_props(info, "push")
    assert (p.delivery_mode, p.content_type, p.headers[STEP_HEADER]) == (2, "application/json", "push")
    assert orjson.loads(p.headers[ERROR_HEADER]) == info.to_dict()
    s = state_props(12.5, 7)
    assert s.headers == {POLLED_HEADER: "12.5", VERSION_HEADER: 7} and s.delivery_mode == 2
    a = aiormq_props(message_id="m1", correlation_id="t1", reply_to="q")
    assert (a.content_type, a.delivery_mode, a.message_id, a.correlation_id, a.reply_to) == \
        ("application/json", 2, "m1", "t1", "q")
    # the lean header frame and pamqp's, from the same properties, are the same bytes
    assert marshal_header(1, 10, message_id="m1", correlation_id="t1", reply_to="q") == \
        frame.marshal(ContentHeader(0, 10, a), 1)


@pytest.mark.integration
@pytest.mark.rabbitmq
def test_the_private_api_flownb_uses_is_there_in_the_installed_pika_and_aiormq(broker):
    """An upgrade of pika or aiormq that drops what the fast paths use fails here, instead of the
    workers and the ingress falling back silently to the slower public API."""
    async def check():
        conn = await aiormq.connect(broker)
        try:
            ch = await conn.channel(publisher_confirms=True)
            return private_api_problems(ch)
        finally:
            await conn.close()
    assert asyncio.run(check()) == []


def test_a_channel_without_the_internals_is_reported_with_the_aiormq_version():
    # found by mypy: aiormq has no __version__, so this report raised AttributeError instead
    from importlib import metadata

    problems = private_api_problems(object())
    assert [p for p in problems if p.startswith("aiormq ")] == [
        (f"aiormq {metadata.version('aiormq')}: the channel lacks the internals FastPublisher needs "
         f"(the ingress falls back to basic_publish)")]


@pytest.mark.integration
@pytest.mark.rabbitmq
def test_a_confirmed_batch_reports_what_the_broker_acked_refused_and_returned(broker):
    conn = pika.BlockingConnection(pika.URLParameters(broker))
    try:
        setup = conn.channel()
        setup.queue_declare("open", durable=True)
        setup.queue_declare("full", durable=True, arguments={"x-max-length": 3, "x-overflow": "reject-publish"})
        out = ConfirmedPublisher(conn.channel(), mandatory=True)
        bodies = [orjson.dumps({"n": i}) for i in range(50)]
        got = out.publish_batch(conn, "", "open", bodies, PERSISTENT, 30.0)
        assert (got.ok, got.unconfirmed, got.refused, got.returned) == (True, 0, 0, 0)
        assert len(out) == 0 and message_count(conn, "open") == 50
        # a queue that is full refuses (basic.nack) what it cannot take; only those are counted
        got = out.publish_batch(conn, "", "full", bodies[:5], PERSISTENT, 30.0)
        assert (got.ok, got.refused, got.returned) == (False, 2, 0)
        assert message_count(conn, "full") == 3
        # mandatory: a message that reaches no queue comes back and is counted, not lost in silence
        got = out.publish_batch(conn, "", "no-such-queue", bodies[:2], PERSISTENT, 30.0)
        assert (got.ok, got.refused, got.returned) == (False, 0, 2)
    finally:
        conn.close()


@pytest.mark.integration
@pytest.mark.rabbitmq
def test_a_batch_not_confirmed_by_its_deadline_stays_pending_until_its_confirms_arrive(broker):
    conn = pika.BlockingConnection(pika.URLParameters(broker))
    try:
        conn.channel().queue_declare("q", durable=True)
        seen: list[bool] = []
        out = ConfirmedPublisher(conn.channel(), lambda done, ack: seen.extend([ack] * len(done)))
        got = out.publish_batch(conn, "", "q", [b"{}"] * 20, PERSISTENT, 0.0)  # no time to hear the broker
        assert (got.ok, got.unconfirmed) == (False, 20)
        assert out.oldest() is not None and out.oldest().key == "q"
        deadline = time.monotonic() + 30
        while len(out) and time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.05)
        assert len(out) == 0 and seen == [True] * 20 and out.oldest() is None
    finally:
        conn.close()


@pytest.mark.integration
@pytest.mark.rabbitmq
def test_a_transaction_applies_its_publishes_and_acks_together_or_not_at_all(broker):
    conn = pika.BlockingConnection(pika.URLParameters(broker))
    try:
        setup = conn.channel()
        for q in ("cursor", "out"):
            setup.queue_declare(q, durable=True)
        setup.basic_publish("", "cursor", b'{"v": 1}', PERSISTENT)
        ch = conn.channel()
        tx = TransactionalPublisher(ch)
        method, _props, _body = ch.basic_get("cursor", auto_ack=False)
        tx.publish("", "out", b"{}")
        tx.publish("", "cursor", b'{"v": 2}')
        tx.ack(method.delivery_tag)
        ch.close()  # before the commit: nothing of it happened, the old cursor is back
        assert (message_count(conn, "out"), message_count(conn, "cursor")) == (0, 1)
        ch = conn.channel()
        tx = TransactionalPublisher(ch)
        method, _props, body = ch.basic_get("cursor", auto_ack=False)
        assert body == b'{"v": 1}'
        tx.publish("", "out", b"{}")
        tx.publish("", "cursor", b'{"v": 2}')
        tx.ack(method.delivery_tag)
        tx.commit()
        assert (message_count(conn, "out"), message_count(conn, "cursor")) == (1, 1)
        assert setup.basic_get("cursor", auto_ack=True)[2] == b'{"v": 2}'
    finally:
        conn.close()
