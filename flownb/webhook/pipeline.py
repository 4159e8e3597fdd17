"""The request pipeline of a webhook, independent of the HTTP server that carries it.

Every door into a flow goes through it: the ASGI app (:mod:`flownb.webhook.app`: ``flownb run --port``
and ``flownb worker --port``) and the Jupyter server extension (a tornado handler in
``jupyter_flownb.handlers``). A server adapter only translates its request into a
:class:`RequestHead`, feeds the body to a :class:`BodyLimit` as it arrives, and writes the
:class:`Reply`; the checks, their order and their answers are here:

1. :func:`admit`, before the body is read: URL length (414) → flow known (404) → method POST (405)
   → token, constant time (403) → header count and total header size (431, :data:`MAX_HEADERS`,
   :data:`MAX_HEADER_BYTES`) → declared length (400 if invalid, 413 over ``max_body``);
2. :class:`BodyLimit`, while the body streams in: 413 as soon as it passes ``max_body``;
3. :func:`accept`, with the whole body: signature (401) → body parsed (400/415, ``max_depth``) →
   body plus the headers copied into ``_headers`` within ``max_body`` (413) → queued by the hook's
   ingest (202, or 429/503) → in sync mode the last step's output (200/504).

The HTTP servers bound what they buffer before the pipeline sees a request: uvicorn (httptools,
which has no limit of its own) through :class:`flownb.webhook.server.LimitedHttpTools` (431 once
the request head passes :data:`MAX_HEAD_BYTES`), tornado (Jupyter) by its ``max_header_size``
(64 KiB, then it closes the connection).

Each refusal queues nothing. Header names (the signature header) and limits come from the flow's
:class:`~flownb.components.webhook.WebhookConfig`.
"""

from __future__ import annotations

import asyncio
import hmac
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import orjson

from ..components.webhook import WebhookConfig
from ..errors import ConfigError, MessageError
from ..flow import Flow
from ..runtime.ingress import Accepted, Backpressure, Ingest, Unavailable
from .parse import HttpError, parse_body, public_headers, query_dict, verify_signature

__all__ = ["MAX_HEADERS", "MAX_HEADER_BYTES", "MAX_HEAD_BYTES", "MAX_URL", "MIN_TOKEN", "BodyLimit", "Hook", "Reply",
           "RequestHead", "accept",
           "admit", "error_reply", "read_secrets", "webhook_config"]

MAX_URL = 8192      # path + query, bytes (414 above)
MAX_HEADERS = 100   # request header lines (431 above)
MAX_HEADER_BYTES = 32 * 1024  # request headers in total: names + values + 4 per line (431 above)
#: what an HTTP server buffers of a request head (request line + headers) before it answers 431
MAX_HEAD_BYTES = MAX_URL + MAX_HEADER_BYTES + 1024
MIN_TOKEN = 16


def webhook_config(flow: Flow) -> WebhookConfig:
    """The (parameter-resolved, validated) config of ``flow``'s webhook trigger; ConfigError otherwise."""
    from ..registry import get, validate_step
    resolved = flow.resolved()
    trigger = resolved.trigger
    if get(trigger.component, step=trigger.name).kind != "webhook":
        raise ConfigError(f"the trigger is '{trigger.component}', not a webhook; --port serves webhook "
                          f"triggers only (drop --port)", step=trigger.name, field="component")
    if not resolved.steps:
        raise ConfigError(f"flow '{flow.name}' has no action after its webhook trigger; add a step",
                          step=trigger.name)
    config = validate_step(trigger, trigger=True)
    assert isinstance(config, WebhookConfig)
    return config


def read_secrets(config: WebhookConfig, *, step: str = "") -> tuple[str, str | None]:
    """The URL token and the HMAC secret (None without ``hmac_secret_env``) named by ``config``, from
    the environment; ConfigError when one is missing or the token is too short."""
    token = os.environ.get(config.token_env)
    if token is None:
        raise ConfigError(f"environment variable '{config.token_env}' (token_env) is not set; export a "
                          f"random token, e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))'",
                          step=step or None, field="config.token_env")
    if len(token) < MIN_TOKEN:
        raise ConfigError(f"the token in '{config.token_env}' has {len(token)} characters; use at least "
                          f"{MIN_TOKEN} (e.g. secrets.token_urlsafe(32))", step=step or None,
                          field="config.token_env")
    secret = None
    if config.hmac_secret_env:
        secret = os.environ.get(config.hmac_secret_env)
        if not secret:
            raise ConfigError(f"environment variable '{config.hmac_secret_env}' (hmac_secret_env) is not "
                              f"set; export the shared signing secret", step=step or None,
                              field="config.hmac_secret_env")
    return token, secret


@dataclass
class Hook:
    """One served flow: its trigger config, its secrets, and its ingest."""

    flow: str
    config: WebhookConfig
    ingest: Ingest
    token: bytes
    secret: bytes | None = None

    def __post_init__(self) -> None:
        # fail closed: a config that requires signatures is never served without a secret
        if self.config.hmac_secret_env and not self.secret:
            raise ConfigError(f"flow '{self.flow}' requires signed requests (hmac_secret_env: "
                              f"{self.config.hmac_secret_env}) but no secret was given",
                              field="config.hmac_secret_env")
        if len(self.token) < MIN_TOKEN:
            raise ConfigError(f"the token of flow '{self.flow}' has {len(self.token)} characters; use at "
                              f"least {MIN_TOKEN}", field="config.token_env")

    @classmethod
    def from_env(cls, flow: str, config: WebhookConfig, ingest: Ingest, *, step: str = "") -> Hook:
        token, secret = read_secrets(config, step=step)
        return cls(flow, config, ingest, token.encode(), secret.encode() if secret is not None else None)


@dataclass(slots=True)
class RequestHead:
    """What the pipeline needs of a request before its body: ``headers`` as received, names in lower
    case, values as bytes (latin-1, as HTTP carries them)."""

    method: str
    flow: str
    token: str
    target_length: int                       # bytes of the raw path + query string
    query_string: bytes
    headers: Sequence[tuple[bytes, bytes]]

    def header(self, name: bytes) -> str | None:
        """The first value of header ``name`` (lower case), decoded as latin-1."""
        for k, v in self.headers:
            if k == name:
                return v.decode("latin-1")
        return None


@dataclass(slots=True)
class Reply:
    """An answer: status, JSON body (bytes), extra headers."""

    status: int
    body: bytes
    headers: dict[str, str] | None = None


def _json(status: int, payload: dict, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, orjson.dumps(payload), headers)


def error_reply(exc: HttpError) -> Reply:
    return _json(exc.status, {"error": exc.detail, "status": exc.status, **exc.extra}, exc.headers)


def _retry_after(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


def admit(head: RequestHead, hook: Hook | None) -> Hook:
    """The checks before the body is read (``hook``: the one served for ``head.flow``, or None).
    Returns the hook; raises HttpError 414/404/405/403/431/400/413."""
    if head.target_length > MAX_URL:
        raise HttpError(414, f"URL longer than {MAX_URL} bytes; move data into the body")
    if hook is None:
        raise HttpError(404, "no webhook flow with that name is served here; check the URL "
                             "(/hooks/<flow>/<token>)")
    if head.method != "POST":
        raise HttpError(405, f"{head.method} is not allowed; send POST", headers={"Allow": "POST"})
    if not hmac.compare_digest(head.token.encode("utf-8", "replace"), hook.token):
        raise HttpError(403, "wrong token in the URL; use the token from the flow's token_env")
    if len(head.headers) > MAX_HEADERS:
        raise HttpError(431, f"more than {MAX_HEADERS} request headers; send fewer")
    size = header_bytes(head.headers)
    if size > MAX_HEADER_BYTES:
        raise HttpError(431, f"request headers of {size} bytes in total are over the limit of "
                             f"{MAX_HEADER_BYTES} bytes; send smaller headers (data goes in the body)")
    declared = head.header(b"content-length")
    if declared is not None:
        if not (declared.isascii() and declared.isdigit()):
            raise HttpError(400, f"invalid Content-Length {declared[:40]!r}")
        limit = hook.config.max_body
        if int(declared) > limit:
            raise HttpError(413, f"body of {declared} bytes is over the limit of {limit} bytes (max_body)")
    return hook


def header_bytes(headers: Sequence[tuple[bytes, bytes]]) -> int:
    """The size of ``headers`` on the wire: ``name: value\r\n`` per line."""
    return sum(len(k) + len(v) + 4 for k, v in headers)


class BodyLimit:
    """Collects a streamed body; HttpError 413 as soon as it passes ``limit`` bytes."""

    __slots__ = ("limit", "size", "_chunks")

    def __init__(self, limit: int):
        self.limit = limit
        self.size = 0
        self._chunks: list[bytes] = []

    def feed(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.limit:
            self._chunks.clear()
            raise HttpError(413, f"body is over the limit of {self.limit} bytes (max_body); send less")
        self._chunks.append(chunk)

    def body(self) -> bytes:
        return b"".join(self._chunks)


async def accept(hook: Hook, head: RequestHead, raw: bytes) -> Reply:
    """The checks with the whole body, then the queue: the answer (an HttpError becomes its reply)."""
    try:
        return await _accept(hook, head, raw)
    except HttpError as exc:
        return error_reply(exc)


async def _accept(hook: Hook, head: RequestHead, raw: bytes) -> Reply:
    cfg = hook.config
    if hook.secret is not None:
        verify_signature(head.header(cfg.signature_header.lower().encode("latin-1")), hook.secret, raw,
                         tolerance=cfg.tolerance, header_name=cfg.signature_header)
    body = parse_body(raw, head.header(b"content-type"), max_depth=cfg.max_depth)
    body["_query"] = query_dict(head.query_string)
    body["_headers"] = copied = public_headers(head.headers, cfg.signature_header)
    # what is stored is the body and the headers copied into it: both count towards max_body
    stored = len(raw) + sum(len(k) + len(v) for k, v in copied.items())
    if stored > cfg.max_body:
        raise HttpError(413, f"the body ({len(raw)} bytes) and the request headers copied into its "
                             f"_headers are {stored} bytes, over the limit of {cfg.max_body} bytes "
                             f"(max_body); send smaller headers or less")
    sync = cfg.reply == "sync"
    try:
        accepted = await hook.ingest.submit(body, {}, reply=sync)
    except Backpressure as exc:
        raise HttpError(429, f"the flow's first queue is full; retry later ({exc})",
                        headers=_retry_after(cfg.retry_after)) from None
    except Unavailable as exc:
        raise HttpError(503, f"the queue is unreachable, nothing was accepted; retry later ({exc})",
                        headers=_retry_after(cfg.retry_after)) from None
    except MessageError as exc:
        raise HttpError(400, f"the body cannot be queued: {exc}") from None
    if not sync or accepted.reply is None:
        return _json(202, {"id": accepted.id})
    return await _wait_reply(accepted, cfg.timeout)


async def _wait_reply(accepted: Accepted, timeout: float) -> Reply:
    reply = accepted.reply
    assert reply is not None  # waited for only when the submission was sync (_accept)
    try:
        output = await asyncio.wait_for(reply, timeout)
    except TimeoutError:
        raise HttpError(504, f"no output from the flow's last step within {timeout:g}s; the message "
                             f"is queued and will still be processed", extra={"id": accepted.id},
                        headers={"Flownb-Id": accepted.id}) from None
    return Reply(200, orjson.dumps(output), {"Flownb-Id": accepted.id})
