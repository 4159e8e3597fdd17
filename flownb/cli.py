"""The ``flownb`` command: assembles the sub-commands of each package (their ``cli.py``) and runs
one. ``validate`` and ``components`` (the flow model's own) live here. Exit 2 on bad input."""

from __future__ import annotations

import argparse
import logging
import sys

from ._cli import add_spec, console, load_flow
from .errors import FlownbError, MessageError, SpecError

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    from .deploy.cli import add_parser as deploy_parsers
    from .runtime.amqp.cli import add_parser as worker_parser
    from .runtime.cli import add_parser as dlq_parser
    from .runtime.local.cli import add_parser as run_parser
    from .runtime.upgrade import add_parser as upgrade_parsers
    from .schedule.cli import add_parser as schedule_parser

    ap = argparse.ArgumentParser(prog="flownb", description="Integration flows built in Jupyter, run anywhere.")
    ap.add_argument("-v", "--verbose", action="store_true", help="log debug output")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("validate", help="check a spec and every step's config; nothing runs")
    add_spec(p)
    p.add_argument("--env", action="store_true",
                   help="also check that every environment variable the flow reads is set")
    p.set_defaults(handler=_validate)

    p = sub.add_parser("components", help="list installed components, or one component's config fields")
    p.add_argument("name", nargs="?", default=None, help="a component key (e.g. sql.upsert): show its fields")
    p.set_defaults(handler=_components)

    for add in (run_parser, dlq_parser, worker_parser, upgrade_parsers, deploy_parsers, schedule_parser):
        add(sub)
    return ap


def _validate(args) -> int:
    from .secrets import check_env, required_env
    flow = load_flow(args)
    con = console()
    env = required_env(flow)
    if args.env:
        check_env(flow)
    con.print(f"[green]ok[/green] flow '{flow.name}': trigger '{flow.trigger.name}' "
              f"({flow.trigger.component}) + {len(flow.actions)} step(s)")
    if env:
        state = " (all set)" if args.env else " (check they are set with --env)"
        con.print(f"environment variables it reads{state}:")
        for v in env:
            con.print(f"  {v.name}  [dim]step '{v.step}', field '{v.field}'[/dim]")
    return 0


def _components(args) -> int:
    from rich.table import Table

    from .registry import available, describe, field_rows, get
    con = console()
    if args.name:
        get(args.name)  # an unknown key: UnknownComponentError with the nearest installed one
        d = describe(args.name)
        con.print(f"{d['key']} ({d['kind']}): {d['description']}")
        t = Table(show_lines=False)
        for col in ("field", "type", "default", "description"):
            t.add_column(col, overflow="fold")
        for row in field_rows(args.name):
            t.add_row(*row)
        con.print(t)
        return 0
    table = Table(title="installed flownb components")
    for col in ("key", "kind", "description"):
        table.add_column(col, overflow="fold")
    for key in available():
        try:
            d = describe(key)
        except FlownbError as exc:
            table.add_row(key, "?", f"[red]{exc}[/red]")
            continue
        table.add_row(key, d["kind"], d["description"])
    con.print(table)
    con.print("'flownb components NAME' shows a component's config fields")
    return 0


def configure_logging(verbose: bool) -> None:
    """flownb's own log lines (the ``flownb`` loggers, INFO and up); the libraries it uses (pika,
    aiormq, paho, nats, httpx, sqlalchemy …) only from WARNING, since their INFO lines narrate every
    connection and request. ``-v``: everything, DEBUG and up."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not verbose:
        logging.getLogger("flownb").setLevel(logging.INFO)
        # pika also logs each reconnect at ERROR, which flownb reports itself (a WARNING naming the step)
        logging.getLogger("pika").setLevel(logging.CRITICAL)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    try:
        return args.handler(args)
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
