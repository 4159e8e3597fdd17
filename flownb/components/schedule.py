"""``schedule``: a cron expression (with a time zone) that emits ``{"scheduled_for": iso8601}``.

It is a polling trigger whose :meth:`Schedule.next_delay` follows the cron expression. The state
is ``{"until": iso8601}``: every due time up to it has been emitted. The first poll (empty state)
only records "now", so a new flow does not replay the past (no backlog). After downtime, ``catchup:
true`` (default) emits each missed due time, at most ``max_catchup`` (the most recent ones);
``catchup: false`` emits only the latest missed one.

Cron syntax is croniter's: five fields ``minute hour day-of-month month day-of-week``, plus an
optional sixth field for seconds (``* * * * * */10`` is every ten seconds; ``*/10 * * * * *`` would fire
every second of every tenth minute).
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from pydantic import BaseModel, ConfigDict, Field

from ..errors import ConfigError, did_you_mean
from .base import Context, PollingTrigger

__all__ = ["Schedule", "ScheduleConfig"]


class ScheduleConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cron: str = Field(description="cron expression, e.g. '0 7 * * mon-fri' (07:00 on weekdays); a sixth "
                                  "field gives seconds")
    timezone: str = Field("UTC", description="IANA time zone the expression is read in, e.g. Europe/Berlin")
    catchup: bool = Field(True, description="after downtime, emit every missed due time (true) or only "
                                            "the latest (false)")
    max_catchup: int = Field(100, ge=1, description="at most this many missed due times are emitted "
                                                    "(the most recent)")


def _zone(name: str, step: str | None) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        hint = did_you_mean(name, available_timezones())
        raise ConfigError(f"unknown time zone {name!r}{hint}; use an IANA name such as 'UTC', "
                          f"'Europe/Berlin' or 'America/New_York'", step=step, field="config.timezone") from None


def _check_cron(expr: str, step: str | None) -> None:
    from croniter import croniter
    if not croniter.is_valid(expr):
        n = len(expr.split())
        why = f"it has {n} field(s)" if n not in (5, 6) else "a field is out of range or misspelt"
        raise ConfigError(f"invalid cron expression {expr!r} ({why}); write five fields 'minute hour "
                          f"day-of-month month day-of-week', e.g. '*/15 * * * *' or '0 7 * * mon-fri'",
                          step=step, field="config.cron")


class Schedule(PollingTrigger[ScheduleConfig]):
    """Emit {"scheduled_for": …} at each time the cron expression names."""

    Config = ScheduleConfig

    @classmethod
    def check_config(cls, config, step) -> None:
        _check_cron(config.cron, step.name)
        _zone(config.timezone, step.name)

    def setup(self) -> None:
        self.tz = _zone(self.config.timezone, self.ctx.step)

    def now(self) -> dt.datetime:
        """The current time in the schedule's zone (a seam for tests)."""
        return dt.datetime.now(self.tz)

    def _iter(self, start: dt.datetime):
        from croniter import croniter
        return croniter(self.config.cron, start.astimezone(self.tz))

    def next_delay(self, state: dict) -> float:
        if "until" not in state:
            return 0.0  # poll at once to record where the schedule starts
        nxt = self._iter(dt.datetime.fromisoformat(state["until"])).get_next(dt.datetime)
        return max(0.0, (nxt - self.now()).total_seconds())

    def poll(self, state: dict, ctx: Context) -> list[dict]:
        now = self.now()
        if "until" not in state:
            state["until"] = now.isoformat()
            return []
        until = dt.datetime.fromisoformat(state["until"])
        limit = self.config.max_catchup if self.config.catchup else 1
        due: list[dt.datetime] = []
        it = self._iter(now + dt.timedelta(microseconds=1))  # get_prev may then return `now` itself
        while len(due) < limit:
            t = it.get_prev(dt.datetime)
            if t <= until:
                break
            due.append(t)
        if due:
            state["until"] = max(due[0], until).isoformat()
        if len(due) == limit and self.config.catchup:
            ctx.logger.warning("schedule '%s': at least %d due times were missed; emitted the latest %d",
                               ctx.step, limit, limit)
        return [{"scheduled_for": t.isoformat()} for t in reversed(due)]
