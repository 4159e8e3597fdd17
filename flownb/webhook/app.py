"""The ASGI app behind webhook triggers: ``POST /hooks/<flow>/<token>`` and ``GET /healthz``.

Order of checks for a hook request (each refusal queues nothing): URL length (414) → flow known
(404) → method POST (405) → token, constant time (403) → header count (431) → declared length
(413) → body read while counting (413 as soon as the limit is passed) → signature (401) → body
parsed (400/415) → queued (202, or 429/503) → in sync mode the last step's output (200 / 504).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import os
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Iterable

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..components.webhook import WebhookConfig
from ..errors import ConfigError, MessageError
from ..runtime.ingress import Backpressure, Ingest, Unavailable
from .parse import HttpError, parse_body, public_headers, query_dict, verify_signature

__all__ = ["Hook", "create_app", "MAX_URL", "MAX_HEADERS", "MIN_TOKEN"]

log = logging.getLogger("flownb.webhook")
MAX_URL = 8192      # path + query, bytes (414 above)
MAX_HEADERS = 100   # request header lines (431 above)
MIN_TOKEN = 16


@dataclass
class Hook:
    """One served flow: its trigger config, secrets read from the environment, and its ingest."""

    flow: str
    config: WebhookConfig
    ingest: Ingest
    token: bytes
    secret: bytes | None = None

    @classmethod
    def from_env(cls, flow: str, config: WebhookConfig, ingest: Ingest, *, step: str = "") -> "Hook":
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
            value = os.environ.get(config.hmac_secret_env)
            if not value:
                raise ConfigError(f"environment variable '{config.hmac_secret_env}' (hmac_secret_env) is not "
                                  f"set; export the shared signing secret", step=step or None,
                                  field="config.hmac_secret_env")
            secret = value.encode()
        return cls(flow, config, ingest, token.encode(), secret)


def _json(status: int, payload: dict, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(payload), status_code=status, headers=headers,
                    media_type="application/json")


def _error(exc: HttpError) -> Response:
    return _json(exc.status, {"error": exc.detail, "status": exc.status, **exc.extra}, exc.headers)


def _retry_after(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise HttpError(400, f"invalid Content-Length {declared[:40]!r}")
        if int(declared) > limit:
            raise HttpError(413, f"body of {declared} bytes is over the limit of {limit} bytes (max_body)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HttpError(413, f"body is over the limit of {limit} bytes (max_body); send less")
        chunks.append(chunk)
    return b"".join(chunks)


class HookEndpoint:
    """Handles ``/hooks/<flow>/<token>`` for every hook of the app."""

    def __init__(self, hooks: dict[str, Hook]):
        self.hooks = hooks

    async def handle(self, request: Request) -> Response:
        try:
            return await self._handle(request)
        except HttpError as exc:
            return _error(exc)

    def _authorise(self, request: Request) -> Hook:
        scope = request.scope
        if len(scope["raw_path"] if scope.get("raw_path") else scope["path"]) + len(scope["query_string"]) \
                > MAX_URL:
            raise HttpError(414, f"URL longer than {MAX_URL} bytes; move data into the body")
        flow = request.path_params["flow"]
        hook = self.hooks.get(flow)
        if hook is None:
            raise HttpError(404, "no webhook flow with that name is served here; check the URL "
                                 "(/hooks/<flow>/<token>)")
        if request.method != "POST":
            raise HttpError(405, f"{request.method} is not allowed; send POST", headers={"Allow": "POST"})
        if not hmac.compare_digest(request.path_params["token"].encode("utf-8", "replace"), hook.token):
            raise HttpError(403, "wrong token in the URL; use the token from the flow's token_env")
        if len(scope["headers"]) > MAX_HEADERS:
            raise HttpError(431, f"more than {MAX_HEADERS} request headers; send fewer")
        return hook

    async def _handle(self, request: Request) -> Response:
        hook = self._authorise(request)
        cfg = hook.config
        raw = await _read_body(request, cfg.max_body)
        if hook.secret is not None:
            verify_signature(request.headers.get(cfg.signature_header), hook.secret, raw,
                             tolerance=cfg.tolerance, header_name=cfg.signature_header)
        body = parse_body(raw, request.headers.get("content-type"), max_depth=cfg.max_depth)
        body["_query"] = query_dict(request.scope["query_string"])
        body["_headers"] = public_headers(request.scope["headers"], cfg.signature_header)
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
        return await self._wait_reply(accepted, cfg.timeout)

    @staticmethod
    async def _wait_reply(accepted, timeout: float) -> Response:
        try:
            output = await asyncio.wait_for(accepted.reply, timeout)
        except asyncio.TimeoutError:
            raise HttpError(504, f"no output from the flow's last step within {timeout:g}s; the message "
                                 f"is queued and will still be processed", extra={"id": accepted.id},
                            headers={"Flownb-Id": accepted.id}) from None
        return Response(orjson.dumps(output), status_code=200, media_type="application/json",
                        headers={"Flownb-Id": accepted.id})


def create_app(hooks: Iterable[Hook]) -> Starlette:
    """The ASGI app serving ``hooks``; their ingests are started and closed with the app."""
    by_flow = {h.flow: h for h in hooks}

    async def healthz(request: Request) -> Response:
        states = {name: h.ingest.healthy() for name, h in by_flow.items()}
        ok = all(states.values())
        return _json(200 if ok else 503, {"status": "ok" if ok else "unavailable", "flows": states})

    async def not_found(request: Request, exc: Exception) -> Response:
        return _error(HttpError(404, "not found; webhooks live at /hooks/<flow>/<token>"))

    async def not_allowed(request: Request, exc: Exception) -> Response:
        return _error(HttpError(405, f"{request.method} is not allowed here", headers={"Allow": "GET"}))

    @asynccontextmanager
    async def lifespan(app):
        for h in by_flow.values():
            await h.ingest.start()
        try:
            yield
        finally:
            for h in by_flow.values():
                await h.ingest.close()

    methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    routes = [Route("/healthz", healthz, methods=["GET", "HEAD"]),
              Route("/hooks/{flow}/{token}", HookEndpoint(by_flow).handle, methods=methods)]
    return Starlette(routes=routes, lifespan=lifespan,
                     exception_handlers={404: not_found, 405: not_allowed})
