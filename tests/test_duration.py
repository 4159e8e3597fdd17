"""Durations in specs: parse, format, and the round trip through flow.yaml."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flownb import format_duration, parse_duration


@pytest.mark.parametrize("text,seconds", [
    ("250ms", 0.25), ("30s", 30.0), ("5m", 300.0), ("1h", 3600.0), ("1d", 86400.0), ("1.5s", 1.5),
    (" 2 m ", 120.0), ("45", 45.0), (10, 10.0), (0.5, 0.5), ("1e-05s", 1e-05),
])
def test_parse(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["soon", "5 minutes", "-1s", -3, True, None, "1.s", ""])
def test_parse_rejects_with_a_hint(bad):
    with pytest.raises(ValueError, match=r"duration|negative"):
        parse_duration(bad)


@pytest.mark.parametrize("seconds,text", [(0.25, "250ms"), (30, "30s"), (300, "5m"), (3600, "1h"),
                                          (86400, "1d"), (90, "90s"), (0, "0s"), (1.5, "1500ms")])
def test_format_is_short(seconds, text):
    assert format_duration(seconds) == text


@given(st.floats(min_value=0, max_value=1e9, allow_nan=False, allow_infinity=False))
def test_format_parse_round_trip(seconds):
    assert parse_duration(format_duration(seconds)) == seconds
