"""The ``flownb`` command: parses arguments, calls the public API. Exit 2 on bad input."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable

from .errors import FlownbError, MessageError, SpecError

__all__ = ["main", "build_parser"]

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(name: str):
    def deco(fn):
        COMMANDS[name] = fn
        return fn
    return deco


def _console():
    from rich.console import Console
    return Console(stderr=False, highlight=False)


def _load_flow(args: argparse.Namespace):
    from .flow import load
    flow = load(Path(args.spec))
    params = dict(getattr(args, "param", None) or [])
    if params:
        flow = flow.with_parameters(params)
    flow.validate_components()
    return flow


def _add_spec(p: argparse.ArgumentParser, params: bool = True) -> None:
    p.add_argument("spec", help="path to flow.yaml")
    if params:
        p.add_argument("-p", "--param", nargs=2, action="append", metavar=("NAME", "VALUE"),
                       help="override a flow parameter (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="flownb", description="Integration flows built in Jupyter, run anywhere.")
    ap.add_argument("-v", "--verbose", action="store_true", help="log debug output")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("validate", help="check a spec and every step's config; nothing runs")
    _add_spec(p)
    p.add_argument("--env", action="store_true",
                   help="also check that every environment variable the flow reads is set")

    sub.add_parser("components", help="list installed components and their config fields")

    p = sub.add_parser("run", help="run a flow on the embedded runtime (SQLite queues)")
    _add_spec(p)
    p.add_argument("--state-dir", default=".flownb", help="where queues, cursors and dead letters live")
    p.add_argument("--until-idle", action="store_true",
                   help="poll once, drain every queue, exit (1 if the run dead-lettered messages)")
    p.add_argument("--port", type=int, default=None, help="serve a webhook trigger on this port")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--reset-state", action="store_true",
                   help="start over: move this flow's state (cursor, queues, dead letters) aside first")
    p.add_argument("--allow-dead-letters", action="store_true",
                   help="with --until-idle: exit 0 even when the run dead-lettered messages (default: 1)")

    p = sub.add_parser("dlq", help="list, show or replay dead letters")
    p.add_argument("action", choices=["list", "show", "replay"])
    _add_spec(p)
    p.add_argument("--step", default=None)
    p.add_argument("--id", action="append", default=None, help="dead letter id (show/replay)")
    p.add_argument("--state-dir", default=None,
                   help="the embedded runtime's state directory (default .flownb)")
    p.add_argument("--broker", default=None,
                   help="RabbitMQ URL: use the broker's dead-letter queues (default: FLOWNB_BROKER_URL "
                        "when it is set and --state-dir is not given)")

    p = sub.add_parser("worker", help="run one step (or --all) against RabbitMQ")
    _add_spec(p)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--step", help="the step this worker runs")
    g.add_argument("--all", action="store_true", help="every step in one process (development)")
    p.add_argument("--broker", default=os.environ.get("FLOWNB_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/"))
    p.add_argument("--prefetch", type=int, default=None)
    p.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus metrics on this port")
    p.add_argument("--port", type=int, default=None, help="serve a webhook trigger on this port")
    p.add_argument("--host", default="127.0.0.1")

    _deploy_parsers(sub)
    from .schedule.cli import add_parser as _schedule_parser
    _schedule_parser(sub)
    for extra in _EXTRA_PARSERS:
        extra(sub)
    return ap


#: modules that add sub-commands (deploy, schedule) append a function(sub) here
_EXTRA_PARSERS: list[Callable[[Any], None]] = []


@command("validate")
def _validate(args) -> int:
    from .secrets import check_env, required_env
    flow = _load_flow(args)
    con = _console()
    env = required_env(flow)
    if args.env:
        check_env(flow)
    con.print(f"[green]ok[/green] flow '{flow.name}': trigger '{flow.trigger.name}' "
              f"({flow.trigger.component}) + {len(flow.steps)} step(s)")
    if env:
        state = " (all set)" if args.env else " (check they are set with --env)"
        con.print(f"environment variables it reads{state}:")
        for v in env:
            con.print(f"  {v.name}  [dim]step '{v.step}', field '{v.field}'[/dim]")
    return 0


@command("components")
def _components(args) -> int:
    from rich.table import Table
    from .registry import available, describe
    table = Table(title="installed flownb components")
    for col in ("key", "kind", "config fields", "description"):
        table.add_column(col)
    for key in available():
        try:
            d = describe(key)
        except FlownbError as exc:
            table.add_row(key, "?", f"[red]{exc}[/red]", "")
            continue
        fields = ", ".join(f"{f['name']}{'*' if f['required'] else ''}: {f['type']}" for f in d["fields"])
        table.add_row(key, d["kind"], fields, d["description"])
    _console().print(table)
    _console().print("* required")
    return 0


def _redacted(entry: Callable[[Any, argparse.Namespace], int], args: argparse.Namespace) -> int:
    """``entry(flow, args)`` with the flow's secrets redacted from stored errors, logs and
    stdout/stderr (docs/secrets.md), and from the message of a FlownbError it raises."""
    from .secrets import install_log_redaction, redact
    flow = _load_flow(args)
    undo = install_log_redaction(flow)
    try:
        return entry(flow, args)
    except FlownbError as exc:  # main() prints it after the redaction is undone
        exc.args = tuple(redact(a) if isinstance(a, str) else a for a in exc.args)
        raise
    finally:
        undo()


@command("run")
def _run(args) -> int:
    from .runtime.local import run_cli
    return _redacted(run_cli, args)


def _dlq_store(args, flow):
    # the broker's dead letters with --broker, or with FLOWNB_BROKER_URL set (as for `flownb worker`)
    # unless --state-dir names a local state directory
    broker = args.broker or (os.environ.get("FLOWNB_BROKER_URL") if args.state_dir is None else None)
    if broker:
        from .runtime.amqp.dlq import AmqpDeadLetters
        return AmqpDeadLetters(flow, broker)
    from .runtime.local import LocalDeadLetters
    return LocalDeadLetters(flow, Path(args.state_dir or ".flownb"))


@command("dlq")
def _dlq(args) -> int:
    flow = _load_flow(args)
    store = _dlq_store(args, flow)  # list/show return copies with the flow's secrets masked
    con = _console()
    if args.action == "list":
        from rich.table import Table
        items = store.list(args.step)
        t = Table(title=f"dead letters of '{flow.name}'" + (f" step '{args.step}'" if args.step else ""))
        for c in ("id", "step", "attempts", "error", "body"):
            t.add_column(c, overflow="fold")
        for d in items:
            t.add_row(d.id, d.step, str(d.error.attempt), f"{d.error.type}: {d.error.message}",
                      json.dumps(d.message.body)[:80])
        con.print(t)
        con.print(f"{len(items)} dead letter(s)")
    elif args.action == "show":
        if not args.id:
            raise SpecError("dlq show needs --id ID (see 'flownb dlq list')")
        for i in args.id:
            con.print_json(json.dumps(store.show(i).to_dict(), default=str))
    else:
        n = store.replay(args.step, args.id)
        con.print(f"replayed {n} dead letter(s)")
    return 0


@command("worker")
def _worker(args) -> int:
    from .runtime.amqp.worker import worker_cli
    return _redacted(worker_cli, args)


def _deploy_parsers(sub) -> None:
    p = sub.add_parser("export", help="run a notebook with papermill (or read a spec) and write a deployment")
    p.add_argument("source", metavar="NOTEBOOK|SPEC", help="a notebook (.ipynb) or a flow.yaml")
    p.add_argument("-p", "--param", nargs=2, action="append", metavar=("NAME", "VALUE"),
                   help="a notebook parameter (a flow parameter for a spec); repeatable")
    p.add_argument("-f", "--params-file", default=None, help="YAML file of name: value parameters")
    p.add_argument("--target", choices=["compose", "k8s", "all"], default="all")
    p.add_argument("--flow", default=None, help="the flow to export when the notebook displays several")
    p.add_argument("--broker-url", default=None, help="use this RabbitMQ instead of deploying one")
    p.add_argument("--image", default=None, help="image name (default flownb-<flow>:latest)")
    p.add_argument("--ingress-host", default=None, help="Kubernetes: add an Ingress for a webhook trigger")
    p.add_argument("--keda", action="store_true", help="Kubernetes: a KEDA ScaledObject per action step")
    p.add_argument("--kernel", default=None, help="Jupyter kernel (default: the notebook's)")
    p.add_argument("--schedules", default=None, metavar="STATE_DIR",
                   help="Kubernetes: turn the schedules stored there ('flownb schedule add') into CronJobs")
    p.add_argument("--schedule", action="append", default=None, metavar="NAME",
                   help="with --schedules: export only this schedule (repeatable)")
    p.add_argument("-o", "--output", required=True, help="the deployment directory to write")

    p = sub.add_parser("build", help="build the worker image of an exported directory (wheelhouse + docker)")
    p.add_argument("dir", help="a directory written by 'flownb export'")
    p.add_argument("--base-image", default=None, help="default python:3.11-slim")
    p.add_argument("--tag", default=None)

    p = sub.add_parser("deploy", help="build and start an exported flow's containers (Docker)")
    p.add_argument("dir", help="a directory written by 'flownb export'")
    p.add_argument("--broker-url", default=None, help="use this RabbitMQ instead of starting one")
    p.add_argument("--network", default="host", help="Docker network mode of the containers")
    p.add_argument("--base-image", default=None)
    p.add_argument("--no-build", action="store_true", help="use the image built before")
    p.add_argument("-v", "--volume", action="append", default=[], metavar="HOST:CONTAINER",
                   help="bind-mount a host path into every worker (repeatable)")

    p = sub.add_parser("status", help="containers and queue depths of a deployed flow")
    p.add_argument("dir")
    p.add_argument("--broker-url", default=None)
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")

    p = sub.add_parser("down", help="stop and remove a deployed flow's containers")
    p.add_argument("dir")
    p.add_argument("--keep-broker", action="store_true")
    p.add_argument("--volumes", action="store_true", help="also remove the broker's data volume")


@command("export")
def _export(args) -> int:
    from .deploy.cli_views import export_cli
    return export_cli(args, _console())


@command("build")
def _build(args) -> int:
    from .deploy.cli_views import build_cli
    return build_cli(args, _console())


@command("deploy")
def _deploy(args) -> int:
    from .deploy.cli_views import deploy_cli
    return deploy_cli(args, _console())


@command("status")
def _status(args) -> int:
    from .deploy.cli_views import status_cli
    return status_cli(args, _console())


@command("down")
def _down(args) -> int:
    from .deploy.cli_views import down_cli
    return down_cli(args, _console())


@command("schedule")
def _schedule(args) -> int:
    from .schedule.cli import schedule_cli
    return schedule_cli(args, _console())


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:  # pika narrates every connection at INFO (and each reconnect at ERROR)
        logging.getLogger("pika").setLevel(logging.CRITICAL)
    try:
        return COMMANDS[args.command](args)
    except (SpecError, MessageError) as exc:
        print(f"flownb: error: {exc}", file=sys.stderr)
        return 2
    except FlownbError as exc:
        print(f"flownb: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
