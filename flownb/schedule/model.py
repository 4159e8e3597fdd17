"""The schedule model: a notebook, a cron expression with a time zone, parameters and run policies.

Pure data (pydantic, frozen). Cron expressions have 5 fields (minute … weekday) or 6, the sixth
being seconds (croniter's convention: ``* * * * * */10`` fires every ten seconds).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from croniter import croniter
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import ScheduleError, ScheduleInputError, did_you_mean
from ..flow import OnError

__all__ = [
    "Schedule",
    "RunRecord",
    "ScheduleError",
    "ScheduleInputError",
    "Catchup",
    "STATUSES",
    "next_fire",
    "next_fire_times",
    "parse_schedule",
]

Catchup = Literal["none", "last", "all"]
#: run statuses: queued → running → ok | failed | timeout;  skipped (overlap) and lost (owner died)
STATUSES = ("queued", "running", "ok", "failed", "timeout", "skipped", "lost")
NAME = r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$"


class Schedule(BaseModel):
    """A notebook run on a cron schedule with papermill parameters."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str = Field(pattern=NAME, max_length=48)
    notebook: str = Field(min_length=1, description="absolute path of the notebook")
    cron: str
    tz: str = "UTC"
    parameters: dict[str, Any] = Field(default_factory=dict)
    timeout: float = Field(3600.0, gt=0, description="seconds before a run is killed (status timeout)")
    catchup: Catchup = "none"
    keep: int = Field(20, ge=1, description="newest output notebooks kept per schedule")
    allow_overlap: bool = False
    secret_env: list[str] = Field(
        default_factory=list,
        description="environment variables the notebook reads secrets from: their values are "
        "redacted from the run's output notebook, log and error (besides variables named like "
        "secrets; docs/secrets.md)",
    )
    on_error: OnError | None = Field(
        None,
        description="actions that hear of the schedule's failed runs (failed, timed out, lost), batched "
        "and rate-limited as a flow's on_error (docs/schedule.md, docs/errors.md)",
    )
    created_at: float = 0.0

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str) -> str:
        v = " ".join(v.split())
        if len(v.split()) not in (5, 6) or not croniter.is_valid(v):
            raise ValueError(
                f"{v!r} is not a cron expression; write 5 fields 'minute hour day month "
                f"weekday' (e.g. '0 3 * * *') or add a 6th field for seconds ('* * * * * */10')"
            )
        return v

    @field_validator("secret_env")
    @classmethod
    def _secret_env(cls, v: list[str]) -> list[str]:
        for name in v:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise ValueError(f"{name!r} is not an environment variable name (letters, digits, '_')")
        return list(dict.fromkeys(v))

    @field_validator("tz")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            hint = did_you_mean(v, sorted(available_timezones()))
            raise ValueError(
                f"unknown time zone {v!r}{hint} use an IANA name like 'Europe/Berlin' or 'UTC'"
            ) from None
        return v

    @property
    def has_seconds(self) -> bool:
        return len(self.cron.split()) == 6

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")


def parse_schedule(data: dict) -> Schedule:
    """Validate ``data`` into a Schedule; a ScheduleInputError names the field and what to write."""
    try:
        return Schedule.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or None
        msg = err["msg"].removeprefix("Value error, ")
        if field == "name" and err["type"] == "string_pattern_mismatch":
            msg = f"{err.get('input')!r} is not a valid schedule name; use lowercase letters, digits and '-'"
        elif err["type"] == "extra_forbidden":
            msg = (
                f"unknown field{did_you_mean(str(field), Schedule.model_fields)} "
                f"allowed: {', '.join(Schedule.model_fields)}"
            )
        raise ScheduleInputError(msg, field=field) from None


def next_fire(schedule: Schedule, after: float) -> float:
    """The first fire time (epoch seconds) of ``schedule`` after ``after``."""
    zone = ZoneInfo(schedule.tz)
    return croniter(schedule.cron, datetime.fromtimestamp(after, zone)).get_next(datetime).timestamp()


def next_fire_times(schedule: Schedule, after: float, until: float, limit: int = 1000) -> list[float]:
    """Fire times (epoch seconds) of ``schedule`` in ``(after, until]``, oldest first; at most the
    newest ``limit`` of them (walked backwards from ``until``, so a long window costs ``limit`` steps)."""
    zone = ZoneInfo(schedule.tz)
    it = croniter(schedule.cron, datetime.fromtimestamp(until, zone))
    out: list[float] = []
    if next_fire(schedule, until - 1e-3) == until:  # ``until`` itself is a fire time
        out.append(float(until))
    while len(out) < limit:
        t = it.get_prev(datetime).timestamp()
        if t <= after:
            break
        out.append(t)
    return [t for t in reversed(out) if t > after]


def iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


class RunRecord(BaseModel):
    """One row of run history."""

    model_config = ConfigDict(frozen=True)
    id: int
    schedule: str
    status: str
    trigger: str = "cron"  # cron | catchup | manual
    planned_for: float | None = None
    queued_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    output: str | None = None
    log: str | None = None
    error_cell: int | None = None
    error_name: str | None = None
    error_value: str | None = None
    pid: int | None = None

    @property
    def duration(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at

    @property
    def output_exists(self) -> bool:
        return bool(self.output and Path(self.output).exists())

    def to_dict(self) -> dict:
        d = self.model_dump(mode="json")
        d["duration"] = self.duration
        d["output_exists"] = self.output_exists
        for k in ("planned_for", "queued_at", "started_at", "finished_at"):
            d[k + "_iso"] = iso(d[k])
        return d
