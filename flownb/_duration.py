"""Durations as people write them in specs: ``500ms``, ``30s``, ``5m``, ``1h``, ``1d`` or seconds."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer

__all__ = ["Duration", "parse_duration", "format_duration"]

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_RE = re.compile(r"^\s*(\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)\s*(ms|s|m|h|d)?\s*$")


def parse_duration(value: Any) -> float:
    """Seconds from ``"1.5s"``, ``"5m"``, ``"250ms"``, ``60`` …; ValueError says the format."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like '30s', '5m', '250ms'")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        m = _RE.match(value)
        if m:
            unit = m.group(2) or "s"
            # ms: divide (correctly rounded) rather than multiply by the inexact 0.001
            return float(m.group(1)) / 1000 if unit == "ms" else float(m.group(1)) * _UNITS[unit]
    raise ValueError(f"{value!r} is not a duration; write e.g. '30s', '5m', '1h', '250ms' or a number of seconds")


def format_duration(seconds: float) -> str:
    """The shortest exact string for ``seconds`` that :func:`parse_duration` reads back."""
    candidates = []
    for unit in ("d", "h", "m"):
        n = seconds / _UNITS[unit]
        if seconds and n == int(n):
            candidates.append(f"{int(n)}{unit}")
    if seconds == int(seconds):
        candidates.append(f"{int(seconds)}s")
    ms = seconds * 1000
    if ms == int(ms):
        candidates.append(f"{int(ms)}ms")
    for text in candidates:
        if parse_duration(text) == seconds:
            return text
    return f"{seconds!r}s"


Duration = Annotated[float, BeforeValidator(parse_duration), PlainSerializer(format_duration, return_type=str)]
