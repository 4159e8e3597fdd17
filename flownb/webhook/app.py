"""The ASGI app behind webhook triggers: ``POST /hooks/<flow>/<token>`` and ``GET /healthz``.

A thin adapter: the checks, their order and their answers are :mod:`flownb.webhook.pipeline`'s
(shared with the Jupyter server extension). Order for a hook request (each refusal queues nothing):
URL length (414) → flow known (404) → method POST (405) → token, constant time (403) → header count
and total size (431) → declared length (413) → body read while counting (413 as soon as the limit is passed) →
signature (401) → body parsed (400/415) → queued (202, or 429/503) → in sync mode the last step's
output (200 / 504). A client that disconnects mid-body is one INFO line; nothing is queued.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from contextlib import asynccontextmanager

import orjson
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from ..runtime.health import HEALTH
from .parse import HttpError
from .pipeline import MAX_HEADERS, MAX_URL, MIN_TOKEN, BodyLimit, Hook, Reply, RequestHead, accept, admit, error_reply

__all__ = ["MAX_HEADERS", "MAX_URL", "MIN_TOKEN", "Hook", "create_app"]

log = logging.getLogger("flownb.webhook")


def _response(reply: Reply) -> Response:
    return Response(reply.body, status_code=reply.status, headers=reply.headers, media_type="application/json")


class HookEndpoint:
    """Handles ``/hooks/<flow>/<token>`` for every hook of the app."""

    def __init__(self, hooks: dict[str, Hook]):
        self.hooks = hooks

    async def handle(self, request: Request) -> Response:
        scope = request.scope
        params = request.path_params
        head = RequestHead(request.method, params["flow"], params["token"],
                           len(scope.get("raw_path") or scope["path"]) + len(scope["query_string"]),
                           scope["query_string"], scope["headers"])
        try:
            hook = admit(head, self.hooks.get(head.flow))
            body = BodyLimit(hook.config.max_body)
            async for chunk in request.stream():
                body.feed(chunk)
        except HttpError as exc:
            return _response(error_reply(exc))
        except ClientDisconnect:  # the client went away mid-body: nothing was queued, nobody to answer
            log.info("webhook '%s': the client disconnected after %d byte(s) of the body; nothing was "
                     "queued", head.flow, body.size)
            return Response(status_code=400)
        return _response(await accept(hook, head, body.body()))


def create_app(hooks: Iterable[Hook]) -> Starlette:
    """The ASGI app serving ``hooks``; their ingests are started and closed with the app."""
    by_flow = {h.flow: h for h in hooks}

    async def healthz(request: Request) -> Response:
        # 503 when a flow cannot queue, when a thread of the process died (the process is about to
        # exit, see flownb.runtime.health) or while a step cannot work (its setup() fails)
        states = {name: h.ingest.healthy() for name, h in by_flow.items()}
        process = HEALTH.report()
        ok = all(states.values()) and HEALTH.ready
        status = "ok" if ok else ("unavailable" if process["status"] == "ok" else process["status"])
        body = {"status": status, "flows": states}
        if process["status"] != "ok":
            body["process"] = process
        return Response(orjson.dumps(body), status_code=200 if ok else 503, media_type="application/json")

    async def not_found(request: Request, exc: Exception) -> Response:
        return _response(error_reply(HttpError(404, "not found; webhooks live at /hooks/<flow>/<token>")))

    async def not_allowed(request: Request, exc: Exception) -> Response:
        return _response(error_reply(HttpError(405, f"{request.method} is not allowed here",
                                               headers={"Allow": "GET"})))

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
