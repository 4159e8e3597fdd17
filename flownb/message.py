"""Message: what travels between steps, and its JSON wire codec.

A message has an ``id`` (uuid4 hex), a ``body`` (a JSON object), ``headers`` (str → str) and
``meta`` (flow, step, parent id, trace id, attempt, created-at, spec). On the wire it is one JSON object::

    {"id": …, "body": {…}, "headers": {…}, "meta": {"flow": …, "step": …, "parent": …,
     "trace": …, "attempt": 1, "created": 1732640000.123, "spec": "3f2a9c01"}}

``meta.step`` is the step that produced the message and ``meta.spec`` the
:meth:`~flownb.flow.Flow.spec_hash` (short form: 8 hex digits) of the spec it ran under (a replay:
the spec it was replayed under). ``spec`` is left out when empty, and a message without it (written
by an older flownb) decodes with ``spec == ""``.

``encode_body`` refuses anything that is not JSON: a body that cannot be serialised is a
:class:`~flownb.errors.MessageError` naming the step that produced it, never a silent ``str()``.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from .errors import MessageError

__all__ = ["Message", "encode_body", "decode_body", "new_id"]

#: how a body is encoded (also by the runtimes' fused encode in runtime/core.py)
ENCODE_OPTS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


_ID_POOL: list[str] = []


#: byte → the byte with the version (4) and the variant (RFC 4122) bits set
_VERSION4 = bytes((b & 0x0F) | 0x40 for b in range(256))
_VARIANT = bytes((b & 0x3F) | 0x80 for b in range(256))
_POOL_SIZE = 1024


def new_id() -> str:
    """A random (version 4) UUID as 32 hex digits, like ``uuid.uuid4().hex``; drawn from a pool
    filled 1,024 at a time from one ``os.urandom`` call, the version and variant bits set on the
    whole pool at once (a pop from a list is atomic: thread-safe)."""
    try:
        return _ID_POOL.pop()
    except IndexError:
        pass
    raw = bytearray(os.urandom(16 * _POOL_SIZE))
    raw[6::16] = raw[6::16].translate(_VERSION4)
    raw[8::16] = raw[8::16].translate(_VARIANT)
    h = raw.hex()
    ids = [h[i:i + 32] for i in range(0, len(h), 32)]
    _ID_POOL.extend(ids)
    return ids[0] if not _ID_POOL else _ID_POOL.pop()


def _check_finite(value: Any) -> None:
    # orjson writes NaN/Infinity as null silently; JSON has no NaN, so refuse it loudly.
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(f"{value!r} is not a JSON number")
    elif isinstance(value, dict):
        for v in value.values():
            _check_finite(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _check_finite(v)


def encode_body(body: Any, *, step: str | None = None) -> bytes:
    """Serialise a body (a JSON object) to bytes, or raise MessageError naming ``step``."""
    if not isinstance(body, dict):
        raise MessageError(
            f"a message body must be a JSON object (dict), got {type(body).__name__}: "
            f"return a dict, a list of dicts, or None", step=step)
    try:
        data = orjson.dumps(body, option=ENCODE_OPTS)
        if b"null" in data:  # cheap pre-check: only then look for NaN/inf turned into null
            _check_finite(body)
        return data
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise MessageError(f"body is not JSON-serialisable ({exc}); {_fix_for(exc)}", step=step) from exc


def _fix_for(exc: Exception) -> str:
    """What to do about a body orjson refused: a lone UTF-16 surrogate is a str all the same."""
    if "surrogates" in str(exc):
        return ("a string holds a lone UTF-16 surrogate (such as \\ud800, from a JSONata \"\\ud800\" "
                "literal or text decoded with errors='surrogateescape'), which JSON in UTF-8 cannot "
                "carry: remove it, or pair it with its other half")
    return "convert the value to str/int/float/bool/list/dict before returning it"


def decode_body(data: bytes | str) -> dict:
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise MessageError(f"body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise MessageError(f"a message body must be a JSON object, got {type(body).__name__}")
    return body


_new_message = object.__new__


@dataclass(slots=True)
class Message:
    body: dict
    id: str = field(default_factory=new_id)
    headers: dict[str, str] = field(default_factory=dict)
    flow: str = ""
    step: str = ""
    parent: str | None = None
    trace: str = ""
    attempt: int = 1
    created: float = field(default_factory=time.time)
    spec: str = ""  # Flow.spec_hash(short=True) of the spec that produced it ("": an older message)

    def __post_init__(self) -> None:
        if not self.trace:
            self.trace = self.id

    @property
    def meta(self) -> dict:
        meta = {"flow": self.flow, "step": self.step, "parent": self.parent, "trace": self.trace,
                "attempt": self.attempt, "created": self.created}
        if self.spec:
            meta["spec"] = self.spec
        return meta

    def child(self, body: dict, step: str, spec: str | None = None) -> Message:
        """A message produced by ``step`` (running spec ``spec``; default: this message's) from this
        one: same trace and headers, new id."""
        m = _new_message(Message)  # the fields set directly: no __init__/__post_init__ on the hot path
        h = self.headers
        m.body, m.id, m.headers, m.flow, m.step = body, new_id(), h.copy() if h else {}, self.flow, step
        m.parent, m.trace, m.attempt, m.created = self.id, self.trace, 1, time.time()
        m.spec = self.spec if spec is None else spec
        return m

    @classmethod
    def first(cls, body: dict, flow: str, step: str, spec: str = "") -> Message:
        """``Message(body=body, flow=flow, step=step, spec=spec)``: the first message of a trace (a
        trigger's), without ``__init__`` on the hot path."""
        m = _new_message(cls)
        m.body, m.id, m.headers, m.flow, m.step, m.parent = body, new_id(), {}, flow, step, None
        m.trace, m.attempt, m.created, m.spec = m.id, 1, time.time(), spec
        return m

    def to_dict(self) -> dict:
        return {"id": self.id, "body": self.body, "headers": self.headers, "meta": self.meta}

    def _repr_html_(self) -> str:  # a table in notebooks (lazy import: workers never load it)
        from .display import messages_html
        return messages_html([self])

    def to_json(self) -> bytes:
        try:
            meta = {"flow": self.flow, "step": self.step, "parent": self.parent, "trace": self.trace,
                    "attempt": self.attempt, "created": self.created}
            if self.spec:
                meta["spec"] = self.spec
            data = orjson.dumps({"id": self.id, "body": self.body, "headers": self.headers, "meta": meta},
                                option=ENCODE_OPTS)  # to_dict(), inline: once per message and stage
            # orjson turns NaN/inf into null silently: refuse them (meta.parent may be a real null)
            if data.count(b"null") > (self.parent is None):
                _check_finite(self.body)
            return data
        except (TypeError, orjson.JSONEncodeError) as exc:
            raise MessageError(f"message is not JSON-serialisable ({exc})", step=self.step) from exc

    @classmethod
    def from_dict(cls, d: dict) -> Message:
        meta = d.get("meta") or {}
        body = d.get("body")
        if not isinstance(body, dict):
            raise MessageError("a message body must be a JSON object")
        m = _new_message(cls)
        m.body = body
        m.id = d.get("id") or new_id()
        m.headers = dict(d.get("headers") or ())
        m.flow, m.step, m.parent = meta.get("flow", ""), meta.get("step", ""), meta.get("parent")
        m.trace = meta.get("trace") or m.id
        m.attempt = int(meta.get("attempt", 1))
        m.created = float(meta.get("created") or time.time())
        m.spec = str(meta.get("spec") or "")
        return m

    @classmethod
    def from_json(cls, data: bytes | str) -> Message:
        try:
            d = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise MessageError(f"message is not valid JSON: {exc}") from exc
        if type(d) is not dict:
            raise MessageError("a message must be a JSON object")
        # from_dict, inline (once per message and stage); the parsed headers are this message's own
        meta = d.get("meta") or {}
        body = d.get("body")
        if type(body) is not dict:
            raise MessageError("a message body must be a JSON object")
        h = d.get("headers")
        m = _new_message(cls)
        m.body = body
        m.id = d.get("id") or new_id()
        m.headers = h if type(h) is dict else dict(h or ())
        get = meta.get
        m.flow, m.step, m.parent = get("flow", ""), get("step", ""), get("parent")
        m.trace = get("trace") or m.id
        attempt = get("attempt", 1)
        m.attempt = attempt if type(attempt) is int else int(attempt)
        created = get("created")
        m.created = created if type(created) is float and created else float(created or time.time())
        spec = get("spec")
        m.spec = spec if type(spec) is str else str(spec or "")
        return m
