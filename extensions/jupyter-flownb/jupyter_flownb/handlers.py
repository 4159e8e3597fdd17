"""Tornado handlers: webhook ingress for flows registered by kernels, and the schedules REST API.

Routes (under the server's base URL):

=======  ======================================  =================================================
POST     /flownb/hooks/<flow>/<token>            202 {"id"} once durably committed; 403/404/413/429
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
import hmac
import json
import logging
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

from flownb.errors import FlownbError, MessageError, QueueFull, SpecError

from . import registry

log = logging.getLogger("jupyter_flownb")
_POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="flownb-ext")


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


class Ingress:
    """Commits hook requests into a registered flow's queue database (``<state_dir>/<flow>.db``).

    The kernel's ``LocalRuntime`` holds the flow's processing lock (one runtime per state database),
    so the server does not open a second runtime: it only appends to the first action's queue through
    :class:`flownb.runtime.local.QueueStore` — the same insert ``LocalRuntime.submit`` does, one
    SQLite WAL transaction, safe alongside the kernel's runtime — and the kernel processes it.
    """

    def __init__(self, reg: registry.HookRegistration, max_queue: int = 10_000):
        from flownb.flow import load
        from flownb.runtime.local import QueueStore

        flow = load(reg.spec)
        self.flow = flow.name
        self.trigger = flow.trigger.name
        self.first = flow.steps[0].name if flow.steps else None
        self.max_queue = max_queue
        self.store = QueueStore(Path(reg.state_dir) / f"{flow.name}.db")

    def submit(self, body: dict, headers: dict[str, str]):
        from flownb.message import Message

        if self.first is None:
            raise MessageError(f"flow '{self.flow}' has no actions to queue the request for; add a step")
        depth = self.store.depth(self.first)
        if depth >= self.max_queue:
            raise QueueFull(
                f"queue of step '{self.first}' holds {depth} messages (limit {self.max_queue})",
                depth=depth,
                limit=self.max_queue,
            )
        message = Message(body=body, headers=headers, flow=self.flow, step=self.trigger)
        self.store.enqueue(self.first, [message.to_json()], time.time())
        return message

    def close(self) -> None:
        self.store.close()


class _Ingresses:
    """One :class:`Ingress` per registered flow, rebuilt when the kernel registers the flow again."""

    def __init__(self, registry_path: str | None):
        self.registry_path = registry_path or None
        self._cache: dict[str, tuple[float, Ingress]] = {}
        self._lock = threading.Lock()

    def get(self, flow_name: str) -> tuple[registry.HookRegistration, Ingress] | None:
        reg = registry.read(flow_name, self.registry_path)
        if reg is None:
            return None
        with self._lock:
            cached = self._cache.get(flow_name)
            if cached is None or cached[0] != reg.registered_at:
                if cached is not None:
                    cached[1].close()
                self._cache[flow_name] = cached = (reg.registered_at, Ingress(reg))
        return reg, cached[1]


class HookHandler(tornado.web.RequestHandler):
    """``POST /flownb/hooks/<flow>/<token>``: the request becomes a message in the flow's first queue."""

    def initialize(self, ingresses: _Ingresses) -> None:
        self.ingresses = ingresses

    def check_xsrf_cookie(self) -> None:
        """Webhooks come from other systems: the token in the path is the credential."""

    def _reply(self, status: int, payload: dict) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(payload))

    async def post(self, flow: str, token: str) -> None:
        from flownb.webhook.parse import HttpError, parse_body, public_headers, query_dict

        try:
            found = await asyncio.get_running_loop().run_in_executor(_POOL, self.ingresses.get, flow)
        except FlownbError as exc:
            return self._reply(500, {"error": f"flow '{flow}' cannot be served: {exc}", "status": 500})
        if found is None:
            return self._reply(
                404,
                {
                    "error": f"no flow '{flow}' is served here; run "
                    f"jupyter_flownb.serve_in_jupyter(flow) in the kernel",
                    "status": 404,
                },
            )
        reg, ingress = found
        if not hmac.compare_digest(token.encode(), reg.token.encode()):
            return self._reply(
                403,
                {"error": "wrong token in the URL; use the path serve_in_jupyter returned", "status": 403},
            )
        raw = self.request.body or b""
        if len(raw) > reg.max_body:
            return self._reply(
                413, {"error": f"body of {len(raw)} bytes is over the limit of {reg.max_body}", "status": 413}
            )
        try:
            body = parse_body(raw, self.request.headers.get("Content-Type"), max_depth=64)
        except HttpError as exc:
            return self._reply(exc.status, {"error": exc.detail, "status": exc.status})
        body["_query"] = query_dict(self.request.query.encode())
        body["_headers"] = public_headers(
            [(k.lower().encode(), v.encode()) for k, v in self.request.headers.get_all()],
            "X-Flownb-Signature",
        )
        try:
            message = await asyncio.get_running_loop().run_in_executor(_POOL, ingress.submit, body, {})
        except QueueFull as exc:
            self.set_header("Retry-After", "1")
            return self._reply(
                429, {"error": f"the flow's first queue is full; retry later ({exc})", "status": 429}
            )
        except MessageError as exc:
            return self._reply(400, {"error": f"the body cannot be queued: {exc}", "status": 400})
        self._reply(202, {"id": message.id})


# -- schedules API ---------------------------------------------------------------------------------


class _Api(APIHandler):
    def initialize(self, ext: "Extension") -> None:
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
        limit = int(self.get_query_argument("limit", "50"))
        store = self.ext.store
        await self.call(store.get, name)
        runs = await self.call(store.history, name, limit=limit)
        self.reply({"schedule": name, "runs": [r.to_dict() for r in runs]})


class RunHandler(_Api):
    @tornado.web.authenticated
    async def get(self, run_id: str) -> None:
        self.reply((await self.call(self.ext.store.run, int(run_id))).to_dict())


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
        from flownb.schedule.runner import execute

        def work() -> None:
            try:
                execute(self.store, schedule, run_id)
            except Exception as exc:
                log.exception("run %d of '%s' could not be executed", run_id, schedule.name)
                self.store.update_run(
                    run_id,
                    status="failed",
                    finished_at=time.time(),
                    error_name=type(exc).__name__,
                    error_value=str(exc),
                )
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
    ingresses = _Ingresses(ext.config.registry_dir or None)
    api = {"ext": ext}
    name = r"(?P<name>[a-z0-9][a-z0-9-]*)"
    routes = [
        (
            r"flownb/hooks/(?P<flow>[a-z0-9][a-z0-9-]*)/(?P<token>[^/]+)",
            HookHandler,
            {"ingresses": ingresses},
        ),
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
