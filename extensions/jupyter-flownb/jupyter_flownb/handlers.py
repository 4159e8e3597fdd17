"""Tornado handlers: webhook ingress for flows registered by kernels, and the schedules REST API.

Routes (under the server's base URL):

=======  ======================================  =================================================
POST     /flownb/hooks/<flow>/<token>            202 {"id"} once durably committed; else as docs/webhook.md
GET      /flownb/api/hooks                       flows served (no tokens)
GET      /flownb/api/schedules                   every schedule, with next and last run
POST     /flownb/api/schedules                   add one (JSON: notebook, cron, name, …) → 201
GET      /flownb/api/schedules/<name>            one schedule
DELETE   /flownb/api/schedules/<name>            remove it → 204
POST     /flownb/api/schedules/<name>/run        run it now → 202 {run}; 409 {run} when skipped
GET      /flownb/api/schedules/<name>/history    its runs, newest first (?limit=N)
GET      /flownb/api/runs/<id>                   one run
=======  ======================================  =================================================

The API routes need the server's token (or a browser session); the hook route is authenticated by
the token in its path, as webhooks are called by other systems.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import tornado.web
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from traitlets import Bool, Float, Unicode
from traitlets.config import Configurable

from flownb.errors import ConfigError, FlownbError, SpecError

from . import registry

log = logging.getLogger("jupyter_flownb")
_POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="flownb-ext")
_SLUG = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")  # flow names (flownb.flow.SLUG)


class FlownbExtension(Configurable):
    """Settings: ``c.FlownbExtension.state_dir = ".flownb"`` etc. in jupyter_server_config.py."""

    state_dir = Unicode(
        ".flownb",
        help="state directory of schedules and run history; relative paths are under the server's root_dir",
    ).tag(config=True)
    registry_dir = Unicode("", help="hook registry directory (default: <runtime dir>/flownb-hooks)").tag(
        config=True
    )
    run_scheduler = Bool(False, help="run the schedules inside the server (like flownb schedule serve)").tag(
        config=True
    )
    scheduler_interval = Float(1.0, help="seconds between scheduling decisions").tag(config=True)


# -- webhooks ------------------------------------------------------------------------------------


def _build_hook(reg: registry.HookRegistration):
    """The :class:`flownb.webhook.pipeline.Hook` of a registration: the flow's own webhook config
    (``max_body`` from the registration), the token and secret the kernel registered, and the
    embedded runtime's ingress into ``<state_dir>/<flow>.db``.

    The kernel's ``LocalRuntime`` holds the flow's processing lock (one runtime per state database),
    so the server does not open a second runtime: the ingress appends to the first action's queue
    through :class:`flownb.runtime.local.ingress.FirstQueue` (the rows ``LocalRuntime.submit_many``
    writes, group-committed by :class:`~flownb.runtime.local.ingress.LocalIngest`), and the kernel
    processes them.
    """
    from flownb.components.webhook import WebhookConfig
    from flownb.flow import load
    from flownb.runtime.local.ingress import FirstQueue, LocalIngest
    from flownb.webhook.pipeline import Hook

    flow = load(reg.spec)
    config = registry.webhook_config(flow) or WebhookConfig(token_env="FLOWNB_JUPYTER_TOKEN")
    config = config.model_copy(update={"max_body": reg.max_body})
    secret = reg.secret
    if config.hmac_secret_env and not secret:
        # a registration written before secrets were registered: the server's own environment, or refuse
        secret = os.environ.get(config.hmac_secret_env, "")
        if not secret:
            raise ConfigError(
                f"flow '{flow.name}' requires signed requests but its registration has no secret; "
                f"call serve_in_jupyter(flow) again in the kernel, with {config.hmac_secret_env} set",
                field="config.hmac_secret_env",
            )
    queue = FirstQueue(flow, reg.state_dir)
    try:
        return Hook(flow.name, config, LocalIngest(queue), reg.token.encode(), secret.encode() or None)
    except BaseException:
        queue.close()
        raise


async def _close_hook(hook) -> None:
    await hook.ingest.close()
    hook.ingest.runtime.close()


class _Hooks:
    """One hook per registered flow, rebuilt when the kernel registers the flow again, dropped when
    it stops serving; the registry is read on every request."""

    def __init__(self, registry_path: str | None):
        self.registry_path = registry_path or None
        self._cache: dict[str, tuple[float, Any]] = {}
        self._lock: asyncio.Lock | None = None

    async def get(self, flow_name: str):
        """The hook served for ``flow_name``, or None. FlownbError when its registration is unusable."""
        if not _SLUG.match(flow_name):
            return None  # not a flow name (and never a path outside the registry)
        loop = asyncio.get_running_loop()
        reg = await loop.run_in_executor(_POOL, registry.read, flow_name, self.registry_path)
        cached = self._cache.get(flow_name)
        if reg is not None and cached is not None and cached[0] == reg.registered_at:
            return cached[1]
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            cached = self._cache.pop(flow_name, None)
            if reg is not None and cached is not None and cached[0] == reg.registered_at:
                self._cache[flow_name] = cached  # another request rebuilt it meanwhile
                return cached[1]
            if cached is not None:
                await _close_hook(cached[1])
            if reg is None:
                return None
            hook = await loop.run_in_executor(_POOL, _build_hook, reg)
            await hook.ingest.start()
            self._cache[flow_name] = (reg.registered_at, hook)
            return hook


_HOOK_PATH = re.compile(r"(/flownb/hooks/[^/?]*/)[^?]*")


def redact_hook_uri(uri: str) -> str:
    """``uri`` with what follows ``/flownb/hooks/<flow>/`` (the token) replaced by ``***``."""
    return _HOOK_PATH.sub(r"\1***", uri, count=1)


class _NoTokenInLogs:
    """The hook token is in the path: no log line (the server's access log, tornado's warnings and
    exception logs) may show it. Tornado logs ``request.uri`` (the server's ``log_function`` after
    :meth:`finish`) and :meth:`_request_summary`; both see the redacted URI."""

    def _request_summary(self) -> str:
        req = self.request
        return f"{req.method} {redact_hook_uri(req.uri)} ({req.remote_ip})"

    def _log(self) -> None:
        req = self.request
        uri, path = req.uri, req.path
        req.uri, req.path = redact_hook_uri(uri), redact_hook_uri(path)
        try:
            super()._log()
        finally:
            req.uri, req.path = uri, path


@tornado.web.stream_request_body
class HookHandler(_NoTokenInLogs, tornado.web.RequestHandler):
    """``/flownb/hooks/<flow>/<token>``: the request goes through :mod:`flownb.webhook.pipeline`, the
    pipeline of ``flownb run --port`` — same checks in the same order, same answers — and is
    committed into the flow's first queue before the 202.

    Tornado streams the body: :meth:`prepare` runs the checks before the body (414, 404, 405, 403,
    431, 413 on the declared length), :meth:`data_received` counts it (413 as soon as it passes
    ``max_body``), :meth:`post` runs the rest (401, 400/415, queue).

    A refusal is sent at once, but the connection is closed only once the rest of the body is read
    (up to :data:`DRAIN` bytes): closing a socket with unread input resets it, and the client would
    lose the answer. Beyond that, or for a declared length over it, the connection is closed."""

    DRAIN = 1 << 20

    def initialize(self, hooks: _Hooks, prefix: str = "") -> None:
        self.hooks = hooks
        self.prefix = prefix  # the server's base URL + "flownb": not counted in the URL length
        self.hook = None
        self.request_head = None
        self.body_limit = None
        self.refused = False
        self.dropped = 0

    def check_xsrf_cookie(self) -> None:
        """Webhooks come from other systems: the token in the path is the credential."""

    def _answer(self, reply) -> None:
        self.set_status(reply.status)
        self.set_header("Content-Type", "application/json")
        for k, v in (reply.headers or {}).items():
            self.set_header(k, v)
        self.set_header("Content-Length", str(len(reply.body)))
        self.write(reply.body)

    def _refuse(self, exc) -> None:
        from flownb.webhook.pipeline import error_reply

        if self._finished or self.refused:
            return
        self._answer(error_reply(exc))
        self.refused = True
        headers = self.request.headers
        declared = headers.get("Content-Length", "")
        if headers.get("Expect", "").lower() == "100-continue" or (
            declared.isascii() and declared.isdigit() and int(declared) > self.DRAIN
        ):
            self.finish()  # the client will not send (or we will not read) the body: answer and close
        else:
            self.flush()  # the answer now; finished (keep-alive) once the body has been read

    async def prepare(self) -> None:
        from flownb.webhook.parse import HttpError
        from flownb.webhook.pipeline import BodyLimit, RequestHead, admit

        req = self.request
        # the checks below bound the body; tornado's own limit must not answer first (with a bare 400)
        req.connection.set_max_body_size(1 << 62)
        self.request_head = head = RequestHead(
            req.method,
            self.path_kwargs.get("flow", ""),
            self.path_kwargs.get("token", ""),
            # tornado decodes the request line as latin-1: one character per byte
            len(req.path) - len(self.prefix) + len(req.query),
            req.query.encode("latin-1", "replace"),
            [(k.lower().encode("latin-1"), v.encode("latin-1", "replace")) for k, v in req.headers.get_all()],
        )
        try:
            try:
                hook = await self.hooks.get(head.flow) if head.flow else None
            except FlownbError as exc:
                raise HttpError(500, f"flow '{head.flow}' cannot be served: {exc}") from None
            self.hook = admit(head, hook)
        except HttpError as exc:
            return self._refuse(exc)
        self.body_limit = BodyLimit(self.hook.config.max_body)

    def data_received(self, chunk: bytes) -> None:
        from flownb.webhook.parse import HttpError

        if self._finished:
            return
        if self.refused:
            self.dropped += len(chunk)
            if self.dropped > self.DRAIN:
                self.finish()
            return
        try:
            self.body_limit.feed(chunk)
        except HttpError as exc:
            self._refuse(exc)

    async def post(self, flow: str = "", token: str = "") -> None:
        from flownb.webhook.pipeline import accept

        if not self.refused:
            self._answer(await accept(self.hook, self.request_head, self.body_limit.body()))

    # every other method was refused (405) by prepare(); the answer is finished once the body is read
    async def get(self, flow: str = "", token: str = "") -> None:
        pass

    head = put = patch = delete = options = get


class HookNotFound(_NoTokenInLogs, tornado.web.RequestHandler):
    """Anything else under ``/flownb/hooks/``: the pipeline's 404."""

    def check_xsrf_cookie(self) -> None:
        """Not a browser form: nothing to protect."""

    def prepare(self) -> None:
        from flownb.webhook.parse import HttpError
        from flownb.webhook.pipeline import error_reply

        reply = error_reply(HttpError(404, "not found; webhooks live at /flownb/hooks/<flow>/<token>"))
        self.set_status(404)
        self.set_header("Content-Type", "application/json")
        self.finish(reply.body)


# -- schedules API ---------------------------------------------------------------------------------


class _Api(APIHandler):
    def initialize(self, ext: Extension) -> None:
        self.ext = ext

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = (
            exc.log_message if isinstance(exc, tornado.web.HTTPError) and exc.log_message else str(exc or "")
        )
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": message or self._reason, "status": status_code}))

    def reply(self, payload: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(payload, default=str))

    async def call(self, fn, *args, **kw):
        try:
            return await asyncio.get_running_loop().run_in_executor(_POOL, lambda: fn(*args, **kw))
        except SpecError as exc:
            status = 404 if "no schedule named" in str(exc) or "no run with id" in str(exc) else 400
            raise tornado.web.HTTPError(status, str(exc).replace("%", "%%")) from exc
        except FlownbError as exc:
            raise tornado.web.HTTPError(500, str(exc).replace("%", "%%")) from exc


def _schedule_view(store, s) -> dict:
    from flownb.schedule.model import next_fire

    nxt = next_fire(s, time.time())
    last = store.history(s.name, limit=1)
    return {
        **s.to_dict(),
        "next_run": nxt,
        "last_run": last[0].to_dict() if last else None,
    }


#: the JSON type of each schedule field (a wrong type is a 400 that names the field, never a 500)
_FIELD_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "cron": ((str,), "a string such as \"0 3 * * *\""),
    "name": ((str,), "a string"),
    "tz": ((str,), "a time zone name such as \"Europe/Berlin\""),
    "parameters": ((dict,), "a JSON object of parameter name → value"),
    "timeout": ((int, float), "a number of seconds"),
    "catchup": ((str,), "a string"),
    "keep": ((int,), "an integer"),
    "allow_overlap": ((bool,), "true or false"),
    "replace": ((bool,), "true or false"),
}
#: SQLite's INTEGER range: a run id or limit beyond it is not a number the store can hold
_MAX_INT = (1 << 63) - 1
_MAX_LIMIT = 10_000


def _json_type(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number"
    )


def _check_fields(fields: dict) -> None:
    for key, value in fields.items():
        types, want = _FIELD_TYPES[key]
        ok = isinstance(value, types) and not (bool not in types and isinstance(value, bool))
        if ok and isinstance(value, (int, float)) and not isinstance(value, bool):
            ok = abs(value) <= _MAX_INT
        if not ok:
            raise tornado.web.HTTPError(400, f"field '{key}' must be {want}, got {_json_type(value)} "
                                             f"{json.dumps(value)[:80]}".replace("%", "%%"))


def _int_arg(value: str, name: str, *, low: int = 1, high: int = _MAX_INT) -> int:
    """``value`` as an integer in [low, high]; else a 400 that names ``name``."""
    text = value.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 19 or not low <= int(text) <= high:
        raise tornado.web.HTTPError(
            400, f"'{name}' must be an integer from {low} to {high}, got {value[:40]!r}".replace("%", "%%")
        )
    return int(text)


class SchedulesHandler(_Api):
    @tornado.web.authenticated
    async def get(self) -> None:
        store = self.ext.store
        self.reply({"schedules": await self.call(lambda: [_schedule_view(store, s) for s in store.list()])})

    @tornado.web.authenticated
    async def post(self) -> None:
        from flownb.schedule import add_schedule

        data = self.get_json_body() or {}
        if not isinstance(data, dict) or "notebook" not in data:
            raise tornado.web.HTTPError(
                400,
                "send a JSON object with notebook, cron and name "
                "(optional: tz, parameters, timeout, catchup, keep, allow_overlap)",
            )
        if not isinstance(data["notebook"], str):
            raise tornado.web.HTTPError(
                400, f"field 'notebook' must be a path string, got {_json_type(data['notebook'])}"
            )
        notebook = self.ext.notebook_path(str(data.pop("notebook")))
        fields = {
            k: data[k]
            for k in (
                "cron",
                "name",
                "tz",
                "parameters",
                "timeout",
                "catchup",
                "keep",
                "allow_overlap",
                "replace",
            )
            if k in data
        }
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise tornado.web.HTTPError(
                400,
                f"unknown field(s) {unknown}; accepted: notebook, cron, name, tz, "
                f"parameters, timeout, catchup, keep, allow_overlap, replace",
            )
        if "cron" not in fields or "name" not in fields:
            raise tornado.web.HTTPError(400, "'cron' and 'name' are required")
        _check_fields(fields)
        s = await self.call(add_schedule, self.ext.store, notebook, **fields)
        self.reply(await self.call(_schedule_view, self.ext.store, s), 201)


class ScheduleHandler(_Api):
    @tornado.web.authenticated
    async def get(self, name: str) -> None:
        store = self.ext.store
        self.reply(await self.call(lambda: _schedule_view(store, store.get(name))))

    @tornado.web.authenticated
    async def delete(self, name: str) -> None:
        await self.call(self.ext.store.remove, name)
        self.set_status(204)
        self.finish()


class RunNowHandler(_Api):
    @tornado.web.authenticated
    async def post(self, name: str) -> None:
        from flownb.schedule.runner import claim

        store = self.ext.store
        schedule = await self.call(store.get, name)
        run_id = await self.call(claim, store, schedule, trigger="manual", planned_for=time.time())
        if run_id is None:
            rec = (await self.call(store.history, name, limit=1))[0]
            return self.reply({"run": rec.to_dict()}, 409)
        self.ext.start_run(schedule, run_id)
        self.reply({"run": (await self.call(store.run, run_id)).to_dict()}, 202)


class HistoryHandler(_Api):
    @tornado.web.authenticated
    async def get(self, name: str) -> None:
        limit = _int_arg(self.get_query_argument("limit", "50"), "limit", high=_MAX_LIMIT)
        store = self.ext.store
        await self.call(store.get, name)
        runs = await self.call(store.history, name, limit=limit)
        self.reply({"schedule": name, "runs": [r.to_dict() for r in runs]})


class RunHandler(_Api):
    @tornado.web.authenticated
    async def get(self, run_id: str) -> None:
        self.reply((await self.call(self.ext.store.run, _int_arg(run_id, "run id", low=0))).to_dict())


class HooksHandler(_Api):
    @tornado.web.authenticated
    async def get(self) -> None:
        regs = await self.call(registry.served_flows, self.ext.config.registry_dir or None)
        self.reply({"hooks": [r.public() for r in regs]})


# -- wiring ----------------------------------------------------------------------------------------


class Extension:
    """What the handlers share: settings, the schedule store, background runs, the optional scheduler."""

    def __init__(self, serverapp):
        self.config = FlownbExtension(config=serverapp.config)
        self.root = Path(serverapp.root_dir).resolve()
        state = Path(self.config.state_dir).expanduser()
        self.state_dir = state if state.is_absolute() else self.root / state
        self._store = None
        self.runs: dict[int, threading.Thread] = {}
        self.scheduler = None

    @property
    def store(self):
        if self._store is None:
            from flownb.schedule import ScheduleStore

            self._store = ScheduleStore(self.state_dir)
        return self._store

    def notebook_path(self, notebook: str) -> Path:
        """A notebook path as the client sees it (relative to the server's root) → absolute path."""
        path = (self.root / notebook.lstrip("/")).resolve()
        if self.root not in path.parents:
            raise tornado.web.HTTPError(400, f"notebook '{notebook}' is outside the server's root directory")
        return path

    def start_run(self, schedule, run_id: int) -> None:
        from flownb.schedule.runner import execute, record_failure

        def work() -> None:
            try:
                execute(self.store, schedule, run_id)
            except Exception as exc:
                log.exception("run %d of '%s' could not be executed", run_id, schedule.name)
                record_failure(self.store, schedule, run_id, exc)
            finally:
                self.runs.pop(run_id, None)

        t = threading.Thread(target=work, name=f"flownb-run-{run_id}", daemon=True)
        self.runs[run_id] = t
        t.start()

    def start_scheduler(self) -> None:
        from flownb.schedule import Scheduler

        self.scheduler = Scheduler(self.store, interval=self.config.scheduler_interval)
        threading.Thread(target=self.scheduler.serve, name="flownb-scheduler", daemon=True).start()


def setup_handlers(serverapp) -> Extension:
    ext = Extension(serverapp)
    base = serverapp.web_app.settings["base_url"]
    hooks = _Hooks(ext.config.registry_dir or None)
    api = {"ext": ext}
    name = r"(?P<name>[a-z0-9][a-z0-9-]*)"
    routes = [
        (
            r"flownb/hooks/(?P<flow>[^/]+)/(?P<token>[^/]+)",
            HookHandler,
            {"hooks": hooks, "prefix": url_path_join(base, "flownb")},
        ),
        (r"flownb/hooks(?:/.*)?", HookNotFound, {}),
        (r"flownb/api/hooks", HooksHandler, api),
        (r"flownb/api/schedules", SchedulesHandler, api),
        (rf"flownb/api/schedules/{name}", ScheduleHandler, api),
        (rf"flownb/api/schedules/{name}/run", RunNowHandler, api),
        (rf"flownb/api/schedules/{name}/history", HistoryHandler, api),
        (r"flownb/api/runs/(?P<run_id>\d+)", RunHandler, api),
    ]
    serverapp.web_app.add_handlers(".*$", [(url_path_join(base, r), h, kw) for r, h, kw in routes])
    if ext.config.run_scheduler:
        ext.start_scheduler()
    serverapp.log.info(
        "jupyter_flownb: hooks at %sflownb/hooks/<flow>/<token>, schedules API at "
        "%sflownb/api/schedules (state %s)",
        base,
        base,
        ext.state_dir,
    )
    return ext
