"""What the message connectors (mqtt, nats, amqp, redis) share: a received payload as a message body,
and a body (or a JSONata ``payload`` expression's value) as the bytes to publish.

Formats of a received payload: ``json`` (a JSON object is the body; other JSON ``{"payload": …}``),
``text`` (``{"payload": "<text>"}``) and ``base64`` (``{"payload": "<base64 of the bytes>"}``). A
``json`` payload that is not JSON becomes ``{"_raw": …, "_error": …}`` plus the connector's own
source field, which the next step dead-letters with the reason, nothing lost.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any, Literal

import orjson
from pydantic import Field

from ..errors import FatalError

__all__ = ["PayloadFormat", "as_body", "decoded", "encoded", "format_field", "idle_interval_field",
           "payload_expr", "shown", "wait_field"]

PayloadFormat = Literal["json", "text", "base64"]


def format_field() -> Any:
    """The ``format`` field of a trigger reading a broker's payloads."""
    return Field("json", description="json: a JSON object payload is the body (other JSON as {'payload': …}); "
                                     "text: {'payload': '<text>'}; base64: {'payload': '<base64 of the bytes>'}")


def wait_field() -> Any:
    """The ``wait`` field of a trigger reading a broker: how long one poll waits."""
    return Field(0.5, description="how long a poll waits for a first message when none is waiting, e.g. 500ms")


def idle_interval_field() -> Any:
    """The ``interval`` field of a trigger reading a broker (it polls again at once while busy)."""
    return Field(1.0, description="time between polls when idle, e.g. 1s")


def payload_expr(text: str | None, step: str, field: str = "config.payload") -> Any:
    """A publishing action's JSONata expression for what it sends (None: the body as it is)."""
    from .http import Expr

    return Expr(text, step=step, field=field) if text else None


def decoded(data: bytes, fmt: str) -> tuple[Any, str | None]:
    """The payload's value in format ``fmt``; or (None, why) when a ``json`` payload is not JSON."""
    if fmt == "base64":
        return base64.b64encode(data).decode("ascii"), None
    if fmt == "text":
        return data.decode("utf-8", errors="replace"), None
    try:
        return orjson.loads(data), None
    except orjson.JSONDecodeError as exc:
        return None, f"the payload is not JSON ({exc}); use format: text or base64 for non-JSON "


def as_body(data: bytes, fmt: str, source: tuple[str, str], what: str,
            envelope: Callable[[Any], dict] | None = None) -> dict:
    """A received payload as a body. ``source``: (field, value) naming where it came from, kept
    beside a payload that is not JSON (``("_topic", "a/b")``); ``what``: the noun of that source in
    the error ("topics", "subjects", "messages"); ``envelope``: when the connector emits its
    envelope, builds it around the payload's value."""
    payload, error = decoded(data, fmt)
    if error is not None:
        return {"_raw": data.decode("utf-8", errors="replace"), source[0]: source[1], "_error": error + what}
    if envelope is not None:
        return envelope(payload)
    if fmt == "json" and isinstance(payload, dict):
        return payload
    return {"payload": payload}


def encoded(value: Any, fmt: str, what: str = "payload") -> bytes:
    """What to publish for ``value`` (the body, or a ``payload`` expression's value): a string as
    itself with ``format: text``, else JSON; a value JSON cannot hold is a FatalError."""
    if fmt == "text" and isinstance(value, str):
        return value.encode("utf-8")
    try:
        return orjson.dumps(value)
    except TypeError as exc:
        raise FatalError(f"the {what} cannot be written as JSON: {exc}") from None


def shown(payload: bytes, fmt: str) -> Any:
    """A rendered payload as a dry run shows it (text, or the JSON value)."""
    return payload.decode("utf-8") if fmt == "text" else orjson.loads(payload)
