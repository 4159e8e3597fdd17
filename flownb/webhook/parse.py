"""Turning a raw HTTP request into a message body, and checking its signature.

Pure functions (no I/O) so the hostile cases are easy to reason about; :mod:`flownb.webhook.app`
maps the :class:`HttpError` they raise to a response.

Body rules (docs/webhook.md):

- ``application/json`` (and ``application/*+json``): a JSON object becomes the body; any other
  JSON value (array, string, number) is kept under ``json``. Must be UTF-8; duplicate keys keep
  the last value; deeper than ``max_depth`` is refused.
- ``application/x-www-form-urlencoded``: fields become keys; a repeated field becomes a list.
- ``text/*``, ``application/xml``: the decoded text under ``raw``.
- an empty body without a content type: an empty message (a ping).
- the server adds ``_query`` (query parameters) and ``_headers`` (request headers without
  credentials); a client's own ``_query``/``_headers`` keys are overwritten.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import time
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import parse_qsl

import orjson

__all__ = ["HttpError", "parse_body", "public_headers", "query_dict", "sign", "verify_signature",
           "SECRET_HEADERS"]

#: headers never copied into a message: credentials and cookies
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key"})
_SECRET_WORDS = ("token", "secret", "signature", "password", "api-key", "apikey")


class HttpError(Exception):
    """A request that is refused with ``status``; ``detail`` tells the client what to do next."""

    def __init__(self, status: int, detail: str, *, headers: dict[str, str] | None = None,
                 extra: dict[str, Any] | None = None):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra or {}


def _media_type(content_type: str) -> tuple[str, dict[str, str]]:
    kind, _, rest = content_type.partition(";")
    params = {}
    for part in rest.split(";"):
        key, eq, value = part.strip().partition("=")
        if eq:
            params[key.strip().lower()] = value.strip().strip('"')
    return kind.strip().lower(), params


def _depth_ok(value: Any, limit: int) -> bool:
    """False when containers nest deeper than ``limit`` (iterative: no recursion on hostile input)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children: Iterable[Any]
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return False
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return True


def _parse_json(raw: bytes, max_depth: int) -> dict:
    if not raw.strip():
        raise HttpError(400, "empty JSON body; send a JSON object, or omit Content-Type for an empty event")
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise HttpError(400, f"malformed JSON at position {exc.pos} (line {exc.lineno}, column {exc.colno}): "
                             f"{exc.msg}; send valid UTF-8 JSON", extra={"position": exc.pos}) from None
    # nesting can never exceed the number of openers: skip the walk for ordinary payloads
    if raw.count(b"{") + raw.count(b"[") > max_depth and not _depth_ok(value, max_depth):
        raise HttpError(400, f"JSON nested deeper than {max_depth} levels; flatten the payload or raise "
                             f"the trigger's max_depth")
    return value if isinstance(value, dict) else {"json": value}


def _parse_form(raw: bytes, charset: str) -> dict:
    try:
        text = raw.decode(charset)
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=False, errors="strict")
    except (UnicodeDecodeError, LookupError, ValueError) as exc:
        raise HttpError(400, f"form body does not decode as {charset}: {exc}; send UTF-8 url-encoded "
                             f"fields") from None
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            prev = out[key]
            out[key] = [*prev, value] if isinstance(prev, list) else [prev, value]
        else:
            out[key] = value
    return out


def _parse_text(raw: bytes, charset: str) -> dict:
    try:
        return {"raw": raw.decode(charset)}
    except (UnicodeDecodeError, LookupError) as exc:
        raise HttpError(400, f"text body does not decode as {charset}: {exc}; declare the right charset "
                             f"in Content-Type") from None


def parse_body(raw: bytes, content_type: str | None, *, max_depth: int = 64) -> dict:
    """The message body for ``raw`` sent with ``content_type``; HttpError 400/415 when it cannot be."""
    if not content_type:
        if not raw:
            return {}
        raise HttpError(415, "missing Content-Type; send application/json, "
                             "application/x-www-form-urlencoded or text/plain")
    kind, params = _media_type(content_type)
    charset = params.get("charset", "utf-8")
    if kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json")):
        if charset.lower().replace("-", "") not in ("utf8",):
            raise HttpError(415, f"JSON must be UTF-8, got charset={charset}")
        return _parse_json(raw, max_depth)
    if kind == "application/x-www-form-urlencoded":
        return _parse_form(raw, charset)
    if kind.startswith("text/") or kind in ("application/xml",):
        return _parse_text(raw, charset)
    raise HttpError(415, f"unsupported Content-Type '{kind}'; send application/json, "
                         f"application/x-www-form-urlencoded or text/plain")


@functools.lru_cache(maxsize=4096)
def _is_secret(name: str, signature_header: str) -> bool:
    return (name in SECRET_HEADERS or name == signature_header
            or any(word in name for word in _SECRET_WORDS))


def public_headers(raw_headers: Sequence[tuple[bytes, bytes]], signature_header: str) -> dict[str, str]:
    """Request headers without credentials (lower-case names; repeated headers joined with ', ')."""
    sig = signature_header.lower()
    out: dict[str, str] = {}
    for k, v in raw_headers:
        name = k.decode("latin-1").lower()
        if _is_secret(name, sig):
            continue
        value = v.decode("latin-1")
        out[name] = f"{out[name]}, {value}" if name in out else value
    return out


def query_dict(query_string: bytes) -> dict[str, Any]:
    """Query parameters; a repeated parameter becomes a list."""
    out: dict[str, Any] = {}
    for key, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        if key in out:
            prev = out[key]
            out[key] = [*prev, value] if isinstance(prev, list) else [prev, value]
        else:
            out[key] = value
    return out


# -- signatures ----------------------------------------------------------------------------------

def _digest(secret: bytes, timestamp: str, body: bytes) -> str:
    return hmac.new(secret, timestamp.encode("ascii") + b"." + body, hashlib.sha256).hexdigest()


def sign(secret: str | bytes, body: bytes, timestamp: int | None = None) -> str:
    """The signature header value for ``body``: ``t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">``."""
    key = secret.encode() if isinstance(secret, str) else secret
    t = str(int(time.time() if timestamp is None else timestamp))
    return f"t={t},v1={_digest(key, t, body)}"


def verify_signature(header: str | None, secret: bytes, body: bytes, *, tolerance: float,
                     now: float | None = None, header_name: str = "X-Flownb-Signature") -> None:
    """Raise HttpError 401 unless ``header`` signs ``body`` with ``secret`` within ``tolerance``."""
    if not header:
        raise HttpError(401, f"missing {header_name} header; sign the body: "
                             f"t=<unix>,v1=hex(HMAC-SHA256(secret, '<t>.' + body))")
    timestamp, candidates = None, []
    for part in header.split(","):
        key, eq, value = part.strip().partition("=")
        if eq and key == "t":
            timestamp = value
        elif eq and key == "v1":
            candidates.append(value)
    # str.isdigit() is also true for "²" or "١", which int() refuses (or reads): ASCII digits only
    if timestamp is None or not (timestamp.isascii() and timestamp.isdigit()) or not candidates \
            or len(timestamp) > 12:
        raise HttpError(401, f"malformed {header_name}; expected t=<unix seconds>,v1=<hex>")
    now = time.time() if now is None else now
    if abs(now - int(timestamp)) > tolerance:
        raise HttpError(401, f"signature timestamp is {int(now - int(timestamp))}s from the server clock, "
                             f"outside the {tolerance:g}s window (replayed or clock skew); sign again with "
                             f"the current time")
    expected = _digest(secret, timestamp, body).encode("ascii")
    if not any(hmac.compare_digest(expected, c.encode("ascii", "replace")) for c in candidates):
        raise HttpError(401, f"{header_name} does not match the body; sign the exact raw body with the "
                             f"shared secret")
