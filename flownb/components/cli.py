"""``flownb validate SPEC [--env]``: check a spec and every step's config against its component,
nothing runs; ``flownb components [NAME]``: the installed components, or one component's config
fields (the registry, flownb/registry.py). Both answer "is this configuration right?" before any
runtime is involved."""

from __future__ import annotations

from typing import Any

from .._cli import add_spec, console, load_flow
from ..errors import FlownbError

__all__ = ["add_parser", "validate_cli", "components_cli"]


def add_parser(sub: Any) -> None:
    p = sub.add_parser("validate", help="check a spec and every step's config; nothing runs")
    add_spec(p)
    p.add_argument("--env", action="store_true",
                   help="also check that every environment variable the flow reads is set")
    p.set_defaults(handler=validate_cli)

    p = sub.add_parser("components", help="list installed components, or one component's config fields")
    p.add_argument("name", nargs="?", default=None, help="a component key (e.g. sql.upsert): show its fields")
    p.set_defaults(handler=components_cli)


def validate_cli(args) -> int:
    from ..secrets import check_env, required_env
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


def components_cli(args) -> int:
    from rich.table import Table

    from ..registry import available, describe, field_rows, get
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
