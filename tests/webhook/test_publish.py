"""The webhook's frame marshalling, byte for byte against pamqp (which aiormq uses)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pamqp import commands, frame
from pamqp.header import ContentHeader

from flownb.runtime.amqp.publish import marshal_header, marshal_method

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
