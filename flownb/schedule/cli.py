"""``flownb schedule …``: add, list, remove, run-now, history, serve. Thin: parse, call, print (rich)."""

from __future__ import annotations

import argparse
import signal
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "schedule_cli"]


def add_parser(sub: Any) -> None:
    """Add the ``schedule`` command group to the ``flownb`` sub-parsers."""
    p = sub.add_parser("schedule", help="run notebooks on cron schedules with papermill")
    p.add_argument("--state-dir", default=".flownb", help="where schedules, run history and outputs live")
    p.set_defaults(handler=_schedule)
    ss = p.add_subparsers(dest="schedule_command", required=True, metavar="ACTION")
    # ``--state-dir`` is accepted after the action too (flownb schedule list --state-dir X)
    state = argparse.ArgumentParser(add_help=False)
    state.add_argument("--state-dir", default=argparse.SUPPRESS, help="as above")

    a = ss.add_parser(
        "add",
        parents=[state],
        help="schedule a notebook (parameters are checked against its parameters cell)",
    )
    a.add_argument("notebook")
    a.add_argument("--cron", required=True, help="'0 3 * * *' (5 fields) or with seconds as a 6th field")
    a.add_argument("--name", required=True, help="schedule name: lowercase letters, digits, '-'")
    a.add_argument("--tz", default="UTC", help="IANA time zone the cron expression is read in")
    a.add_argument(
        "-p",
        "--param",
        nargs=2,
        action="append",
        metavar=("NAME", "VALUE"),
        default=[],
        help="papermill parameter (repeatable)",
    )
    a.add_argument("--timeout", type=float, default=3600.0, help="seconds before a run is killed")
    a.add_argument(
        "--catchup",
        choices=["none", "last", "all"],
        default="none",
        help="after downtime: run nothing missed, the last missed run, or every missed run",
    )
    a.add_argument("--keep", type=int, default=20, help="newest output notebooks kept")
    a.add_argument("--allow-overlap", action="store_true", help="let a run start while the previous one runs")
    a.add_argument("--replace", action="store_true", help="replace a schedule of the same name")
    a.add_argument(
        "--secret-env",
        action="append",
        default=[],
        metavar="VAR",
        help="an environment variable the notebook reads a secret from: its value is redacted from "
        "the runs' output notebooks, logs and errors (repeatable; *TOKEN*/*SECRET*/*PASSWORD*… always are)",
    )
    a.add_argument(
        "--on-error",
        metavar="FILE.yaml",
        help="actions that hear of failed and timed-out runs: a YAML file with an 'on_error:' list of "
        "actions (a chat webhook, smtp.send, an errors table), or a flow spec whose on_error it shares; "
        "batched and rate-limited as a flow's (docs/schedule.md)",
    )

    ss.add_parser("list", parents=[state], help="schedules and their next run")
    r = ss.add_parser("remove", parents=[state], help="delete a schedule (its history stays)")
    r.add_argument("name")
    r = ss.add_parser("run-now", parents=[state], help="run a schedule once, now, and wait for it")
    r.add_argument("name")
    h = ss.add_parser("history", parents=[state], help="run history of a schedule, newest first")
    h.add_argument("name")
    h.add_argument("--limit", type=int, default=20)
    s = ss.add_parser(
        "serve", parents=[state], help="the scheduler: run schedules as they come due until Ctrl-C"
    )
    s.add_argument("--interval", type=float, default=0.5, help="seconds between scheduling decisions")
    s.add_argument(
        "--grace",
        type=float,
        default=60.0,
        help="a run due at most this many seconds ago is on time; older ones are missed",
    )


def _when(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


_STYLE = {
    "ok": "green",
    "failed": "red",
    "timeout": "red",
    "lost": "red",
    "skipped": "yellow",
    "running": "cyan",
    "queued": "blue",
}


def _status(status: str) -> str:
    return f"[{_STYLE.get(status, 'white')}]{status}[/]"


def schedule_cli(args: argparse.Namespace, console: Any) -> int:
    from . import ScheduleStore

    store = ScheduleStore(args.state_dir)
    return _ACTIONS[args.schedule_command](args, store, console)


def _add(args, store, console) -> int:
    from . import add_schedule

    s = add_schedule(
        store,
        args.notebook,
        cron=args.cron,
        name=args.name,
        tz=args.tz,
        parameters=dict(args.param),
        timeout=args.timeout,
        catchup=args.catchup,
        keep=args.keep,
        allow_overlap=args.allow_overlap,
        replace=args.replace,
        secret_env=args.secret_env,
        on_error=args.on_error,
    )
    console.print(
        f"[green]added[/green] schedule '{s.name}': {s.notebook} at '{s.cron}' ({s.tz}), "
        f"parameters {s.parameters or '{}'}"
    )
    if s.on_error is not None:
        from .on_error import describe

        console.print(f"failed runs go to on_error: {describe(s.on_error)}, at most one delivery every "
                      f"{s.on_error.every:g}s")
    return 0


def _list(args, store, console) -> int:
    import time

    from rich.table import Table

    from .model import next_fire
    from .on_error import describe

    t = Table(title=f"schedules in {store.state_dir}")
    for c in (
        "name",
        "notebook",
        "cron",
        "tz",
        "parameters",
        "timeout",
        "catchup",
        "keep",
        "overlap",
        "on error",
        "next run",
        "last run",
    ):
        t.add_column(c, overflow="fold")
    for s in store.list():
        nxt = next_fire(s, time.time())
        last = store.history(s.name, limit=1)
        t.add_row(
            s.name,
            Path(s.notebook).name,
            s.cron,
            s.tz,
            str(s.parameters),
            f"{s.timeout:g}s",
            s.catchup,
            str(s.keep),
            "yes" if s.allow_overlap else "no",
            describe(s.on_error),
            _when(nxt),
            f"{_status(last[0].status)} {_when(last[0].started_at or last[0].queued_at)}" if last else "-",
        )
    console.print(t)
    return 0


def _remove(args, store, console) -> int:
    store.remove(args.name)
    console.print(f"removed schedule '{args.name}' (its run history and outputs stay)")
    return 0


def _print_run(console, rec) -> None:
    line = f"run {rec.id} of '{rec.schedule}': {_status(rec.status)}"
    if rec.duration is not None:
        line += f" in {rec.duration:.1f}s"
    if rec.output:
        line += f" → {rec.output}"
    console.print(line)
    if rec.error_name or rec.error_value:
        cell = f"cell {rec.error_cell}: " if rec.error_cell is not None else ""
        console.print(f"  [red]{cell}{rec.error_name or ''}: {rec.error_value or ''}[/red]")


def _run_now(args, store, console) -> int:
    from .runner import run_now

    rec = run_now(store, args.name)
    _print_run(console, rec)
    return 0 if rec.status == "ok" else 1


def _history(args, store, console) -> int:
    from rich.table import Table

    from .runner import run_redactor

    # errors are redacted when recorded; this also masks those recorded before that was so
    redactor = run_redactor(store.get(args.name).secret_env)
    t = Table(title=f"runs of '{args.name}' (newest first)")
    for c in ("id", "status", "trigger", "planned for", "started", "duration", "output", "error"):
        t.add_column(c, overflow="fold")
    for r in store.history(args.name, limit=args.limit):
        err = ""
        if r.error_name or r.error_value:
            err = (
                f"cell {r.error_cell}: " if r.error_cell is not None else ""
            ) + redactor.redact(f"{r.error_name or ''}: {r.error_value or ''}")
        t.add_row(
            str(r.id),
            _status(r.status),
            r.trigger,
            _when(r.planned_for),
            _when(r.started_at),
            "-" if r.duration is None else f"{r.duration:.1f}s",
            (r.output or "-") + ("" if r.output_exists or not r.output else " (pruned)"),
            err,
        )
    console.print(t)
    return 0


def _serve(args, store, console) -> int:
    from .scheduler import Scheduler

    sched = Scheduler(
        store, interval=args.interval, grace=args.grace, on_run=lambda r: _print_run(console, r)
    )
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: sched.stop())
    console.print(
        f"[bold]flownb scheduler[/bold] on {store.state_dir}: {len(store.names())} schedule(s); "
        f"Ctrl-C to stop (runs in progress finish first)"
    )
    try:
        sched.serve()
    except KeyboardInterrupt:
        sched.stop()
        console.print("stopping: waiting for runs in progress …")
        sched.wait_idle()
    return 0


_ACTIONS = {
    "add": _add,
    "list": _list,
    "remove": _remove,
    "run-now": _run_now,
    "history": _history,
    "serve": _serve,
}


def _schedule(args) -> int:
    from .._cli import console
    return schedule_cli(args, console())
