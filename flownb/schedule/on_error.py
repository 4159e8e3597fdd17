"""A schedule's ``on_error``: the actions that hear of its failed runs, through the machinery of a
flow's error flow (flownb.runtime.on_error: the same delivery message, ``batch`` and ``every``).

A run that ends ``failed`` (a cell raised, the notebook could not start), ``timeout`` (killed) or
``lost`` (the process that ran it died) becomes a ``schedule_failed`` event::

    {"kind": "schedule_failed", "flow": <schedule>, "step": <notebook file name>, "error_type",
     "error", "attempt": None, "trace": "<schedule>#<run id>", "message_id": "<schedule>#<run id>",
     "body": None, "at": <when it ended>,
     "schedule", "run_id", "status", "notebook", "output", "error_cell"}

``message_id`` is the run's own key, so an errors table upserted on it gets one row per run. A run
that was ``skipped`` (its fire time came while a run was in progress) is not a failure: a run that
hangs ends as ``timeout`` and is reported then. Manual runs (``run-now``) are not reported either —
whoever started one sees its result, as with n8n's error workflows.

Pending events are the failed runs themselves: the run history marks each one ``reported`` once a
delivery went through, so nothing waits in memory and a scheduler restarted after a crash delivers
what its predecessor had not (a crash between a delivery and its mark sends that delivery again: key
an errors table on ``message_id``). A failed delivery is logged as an ERROR and its runs stay pending
for the next window. The scheduler (``flownb schedule serve``) delivers; run-now does not.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ..errors import ErrorFlowFailed, ScheduleInputError
from ..flow import Flow, OnError, step
from ..runtime.on_error import ErrorFlow, delivery, event
from .model import RunRecord, Schedule
from .store import ScheduleStore

__all__ = ["ScheduleErrorNotifier", "describe", "error_flow_of", "event_from_run", "load_on_error"]

log = logging.getLogger("flownb.on_error")

#: the trigger of the flow a schedule's on_error actions run in (its name is not an action's)
TRIGGER = "scheduled-run"


def load_on_error(source: OnError | dict | list | str | Path, *, base: Path | None = None) -> OnError:
    """A schedule's ``on_error`` from what ``add_schedule(on_error=…)`` / ``--on-error FILE`` take: an
    :class:`OnError`, its mapping or list of steps, or a YAML file holding one of those or a flow spec
    whose ``on_error:`` the schedule shares. Relative file paths in the actions' configs (a
    ``sqlite:///errors.db`` url, a csv path) are made absolute against the file's folder (``base``,
    default the current directory, for a mapping): the scheduler runs elsewhere."""
    if isinstance(source, str | Path):
        from .. import _yaml

        path = Path(source)
        if not path.is_file():
            raise ScheduleInputError(f"on_error file '{path}' does not exist; give a YAML file with an "
                                     f"'on_error:' list of actions (or a flow spec that has one)",
                                     field="on_error")
        data = _yaml.load(path.read_text(encoding="utf-8"), source=str(path))
        if isinstance(data, dict) and ("on_error" in data or "trigger" in data):  # a flow spec, or on_error:
            data = data.get("on_error")
        elif isinstance(data, dict) and "steps" not in data:  # neither: nothing to read actions from
            data = None
        if data is None:
            raise ScheduleInputError(f"'{path}' has no 'on_error:' actions; add an 'on_error:' list of "
                                     f"actions (docs/errors.md)", field="on_error")
        return load_on_error(data, base=path.resolve().parent)
    from pydantic import ValidationError
    try:
        config = source if isinstance(source, OnError) else OnError.model_validate(source)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ScheduleInputError(f"on_error is not valid at '{where}': {err['msg']}; write a list of "
                                 f"actions or a mapping with steps/batch/every (docs/errors.md)",
                                 field="on_error") from None
    flow = Flow(name="on-error", trigger=step(TRIGGER, "schedule", cron="0 0 * * *"), on_error=config)
    flow.validate_components()  # each action's config, as `flownb validate` checks a flow's
    anchored = flow.located(base or Path.cwd()).resolved()
    assert anchored.on_error is not None
    return anchored.on_error


def error_flow_of(schedule: Schedule) -> Flow:
    """The flow a schedule's on_error actions run in: named after the schedule (its logs, its
    deliveries' ``flow``), triggered by its cron expression (never run: the scheduler is the trigger)."""
    assert schedule.on_error is not None
    return Flow(name=schedule.name, trigger=step(TRIGGER, "schedule", cron=schedule.cron, timezone=schedule.tz),
                on_error=schedule.on_error)


def event_from_run(schedule: Schedule, rec: RunRecord) -> dict:
    """The ``schedule_failed`` event of a failed run (see the module docstring)."""
    key = f"{schedule.name}#{rec.id}"
    error_type = rec.error_name or {"lost": "RunLost", "timeout": "TimeoutError"}.get(rec.status, "RunFailed")
    ev = event("schedule_failed", schedule.name, Path(schedule.notebook).name, error_type,
               rec.error_value or f"the run ended {rec.status}", at=rec.finished_at or rec.started_at)
    ev.update(trace=key, message_id=key, schedule=schedule.name, run_id=rec.id, status=rec.status,
              notebook=schedule.notebook, output=rec.output, error_cell=rec.error_cell)
    return ev


class ScheduleErrorNotifier:
    """Delivers the failed runs of a store's schedules to each schedule's on_error, one window per
    schedule. The schedules are read every :meth:`tick`, as the scheduler reads them, so adding or
    changing a schedule's on_error takes effect without a restart."""

    def __init__(self, store: ScheduleStore):
        self.store = store
        self.flows: dict[str, tuple[str, ErrorFlow]] = {}  # schedule → (its on_error as JSON, runner)
        self.delivered = 0                                   # failed runs delivered by this notifier
        self.failed_deliveries = 0

    def _error_flow(self, s: Schedule) -> ErrorFlow:
        assert s.on_error is not None
        key = json.dumps(s.on_error.spec(), sort_keys=True, default=str)
        held = self.flows.get(s.name)
        if held is not None and held[0] == key:
            return held[1]
        if held is not None:
            held[1].close()
        flow = ErrorFlow(error_flow_of(s), state_dir=self.store.state_dir)
        self.flows[s.name] = (key, flow)
        return flow

    def tick(self, now: float, *, force: bool = False) -> int:
        """Deliver each schedule's pending failed runs when its window allows (``force``: now, as the
        scheduler stops). Returns how many failed runs were delivered."""
        done = 0
        for s in self.store.list():
            if s.on_error is None:
                continue
            try:
                done += self._tick(s, now, force)
            except Exception:  # one schedule's broken on_error must not stop the others
                log.exception("schedule '%s': on_error failed", s.name)
        for name in set(self.flows) - {s.name for s in self.store.list() if s.on_error is not None}:
            self.flows.pop(name)[1].close()  # removed, or its on_error was
        return done

    def _tick(self, s: Schedule, now: float, force: bool) -> int:
        flow = self._error_flow(s)
        if not force and not flow.window.due(now):
            return 0
        runs, ids = self.store.unreported(s.name, flow.batch)
        if not ids:
            return 0
        events = [event_from_run(s, r) for r in runs]
        body = delivery(s.name, events, len(ids), {("schedule_failed", Path(s.notebook).name): len(ids)},
                        source="schedule")
        flow.window.sent(now)  # a failed delivery waits a window too: no tight loop
        try:
            flow.send(body)
        except ErrorFlowFailed as exc:
            self.failed_deliveries += 1
            log.error("schedule '%s': %s", s.name, exc)
            return 0
        self.store.mark_reported(ids, now)
        self.delivered += len(ids)
        log.info("schedule '%s': %d failed run(s) delivered to on_error", s.name, len(ids))
        return len(ids)

    def close(self) -> None:
        for _key, flow in self.flows.values():
            flow.close()
        self.flows.clear()


def describe(on_error: Any) -> str:
    """The actions of an on_error, for listings: ``chat (http.request) → errors (sql.upsert)``."""
    if on_error is None:
        return "-"
    return " → ".join(f"{s.name} ({s.component})" for s in on_error.steps)
