"""Scheduled notebook runs: cron schedules of notebooks with papermill parameters, run history,
no self-overlap, timeouts, catch-up after downtime, retention, and Kubernetes CronJob export.

Public API::

    store = ScheduleStore(".flownb")
    add_schedule(store, "report.ipynb", cron="0 3 * * *", name="nightly", parameters={"n": 5})
    Scheduler(store).serve()                  # the loop behind ``flownb schedule serve``
    run_now(store, "nightly")                 # one run, now, in this process
    store.history("nightly")                  # RunRecord list, newest first
    cronjob_manifests(store.list(), image="registry/app:1")   # Kubernetes CronJobs

papermill is imported only where a notebook is inspected or executed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .k8s import cronjob_manifests
from .model import (
    RunRecord,
    Schedule,
    ScheduleError,
    ScheduleInputError,
    next_fire,
    next_fire_times,
    parse_schedule,
)
from .runner import prune_outputs, run_now
from .scheduler import Scheduler
from .store import ScheduleStore

__all__ = [
    "Schedule",
    "RunRecord",
    "ScheduleStore",
    "Scheduler",
    "ScheduleError",
    "ScheduleInputError",
    "add_schedule",
    "run_now",
    "prune_outputs",
    "cronjob_manifests",
    "next_fire",
    "next_fire_times",
    "parse_schedule",
]


def add_schedule(
    store: ScheduleStore,
    notebook: str | Path,
    *,
    cron: str,
    name: str,
    tz: str = "UTC",
    parameters: dict[str, Any] | None = None,
    timeout: float = 3600.0,
    catchup: str = "none",
    keep: int = 20,
    allow_overlap: bool = False,
    replace: bool = False,
    secret_env: list[str] | None = None,
    on_error: Any = None,
) -> Schedule:
    """Validate (cron, time zone, parameters against the notebook's ``parameters`` cell) and store a
    schedule. String parameter values are converted to the notebook's parameter types.
    ``secret_env``: variables whose values are redacted from the runs' outputs (docs/secrets.md).
    ``on_error``: actions that hear of failed runs — a list of steps, an ``on_error`` mapping, or the
    path of a YAML file holding one (or a flow spec whose ``on_error`` it shares); see
    :func:`flownb.schedule.on_error.load_on_error` and docs/schedule.md."""
    from ..errors import ParameterError
    from ..params import coerce_all, inspect
    from .on_error import load_on_error

    path = Path(notebook).resolve()
    errors = None if on_error is None else load_on_error(on_error)
    schedule = parse_schedule(
        {
            "name": name,
            "notebook": str(path),
            "cron": cron,
            "tz": tz,
            "parameters": {},
            "timeout": timeout,
            "catchup": catchup,
            "keep": keep,
            "allow_overlap": allow_overlap,
            "secret_env": list(secret_env or []),
        }
    )
    declared = inspect(path)
    if parameters and not declared:
        raise ParameterError(f"notebook '{path}' has no 'parameters' cell; tag a cell 'parameters' "
                             f"(cell toolbar → tags) that assigns the defaults, then add the schedule again")
    values = coerce_all(declared, dict(parameters or {}), source=f"notebook '{path.name}'")
    return store.add(schedule.model_copy(update={"parameters": values, "on_error": errors}), replace=replace)
