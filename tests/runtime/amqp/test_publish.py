"""runtime/amqp/publish.py: the webhook publisher's frames byte for byte against pamqp (which aiormq
uses), the message properties every publisher shares, and the private client-library API flownb
relies on being there for the installed versions."""

from __future__ import annotations

import asyncio

import aiormq
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pamqp import commands, frame
from pamqp.header import ContentHeader

from flownb.runtime.amqp.publish import (
    PERSISTENT,
    POLLED_HEADER,
    TRANSIENT,
    aiormq_props,
    error_props,
    marshal_header,
    marshal_method,
    private_api_problems,
    state_props,
)
from flownb.runtime.amqp.topology import ERROR_HEADER, STEP_HEADER, VERSION_HEADER
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
