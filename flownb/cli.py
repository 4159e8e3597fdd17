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
    from .schedule.cli import add_parser as schedule_parser

    ap = argparse.ArgumentParser(prog="flownb", description="Integration flows built in Jupyter, run anywhere.")
    ap.add_argument("-v", "--verbose", action="store_true", help="log debug output")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("validate", help="check a spec and every step's config; nothing runs")
    add_spec(p)
    p.add_argument("--env", action="store_true",
                   help="also check that every environment variable the flow reads is set")
    p.set_defaults(handler=_validate)

    sub.add_parser("components", help="list installed components and their config fields"
                   ).set_defaults(handler=_components)

    for add in (run_parser, dlq_parser, worker_parser, deploy_parsers, schedule_parser):
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
              f"({flow.trigger.component}) + {len(flow.steps)} step(s)")
    if env:
        state = " (all set)" if args.env else " (check they are set with --env)"
        con.print(f"environment variables it reads{state}:")
        for v in env:
            con.print(f"  {v.name}  [dim]step '{v.step}', field '{v.field}'[/dim]")
    return 0


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
    con = console()
    con.print(table)
    con.print("* required")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:  # pika narrates every connection at INFO (and each reconnect at ERROR)
        logging.getLogger("pika").setLevel(logging.CRITICAL)
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
