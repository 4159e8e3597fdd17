"""``flownb dlq list|show|replay``: the dead letters of either runtime (a state directory or a broker);
``flownb state show|set|rewind``: a polling trigger's cursor on either runtime (flownb/cursor.py);
``flownb trace`` and ``flownb recorder``: the flight recorder (flownb/recorder.py); ``flownb plan`` and
``flownb upgrade``: changing a running flow's spec without stranding its messages (upgrade.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._cli import add_broker, add_spec, console, load_flow
from ..errors import SpecError, UpgradeError
from .amqp.names import BROKER_ENV

if TYPE_CHECKING:
    from ..flow import Flow


def add_parser(sub: Any) -> None:
    p = sub.add_parser("dlq", help="list, show or replay dead letters")
    p.add_argument("action", choices=["list", "show", "replay"])
    add_spec(p)
    p.add_argument("--step", default=None)
    p.add_argument("--id", action="append", default=None, help="dead letter id (show/replay)")
    p.add_argument("--state-dir", default=None,
                   help="the embedded runtime's state directory (default .flownb)")
    add_broker(p, "RabbitMQ URL: use the broker's dead-letter queues (default: FLOWNB_BROKER_URL "
                  "when it is set and --state-dir is not given)")
    p.add_argument("--edit", default=None, metavar="FILE.jsonl",
                   help="replay: the dead letters named in FILE (one JSON object per line: \"_id\" and the "
                        "body's fields, nested or dotted), with their bodies edited so (docs/debugging.md)")
    p.add_argument("--limit", type=int, default=20, metavar="N",
                   help="list: show at most N dead letters after the summary by step and error (default 20)")
    p.add_argument("--all", dest="list_all", action="store_true", help="list: show every dead letter")
    p.set_defaults(handler=dlq_cli)

    p = sub.add_parser("state", help="show, set or rewind a polling trigger's cursor (the flow must be stopped)")
    p.add_argument("action", choices=["show", "set", "rewind"])
    add_spec(p)
    p.add_argument("--to", default=None, metavar="VALUE",
                   help="set: the whole state as JSON ({\"cursor\": 5}); rewind: the cursor's new value "
                        "(JSON or text; without --to the cursor is emptied: read from the beginning)")
    p.add_argument("--key", default=None, help="rewind: the state field to set (default: 'cursor' or the only one)")
    p.add_argument("--state-dir", default=None, help="the embedded runtime's state directory (default .flownb)")
    add_broker(p, "RabbitMQ URL: the cursor in the broker's state queue "
                  "(default: FLOWNB_BROKER_URL when set and --state-dir is not)")
    p.set_defaults(handler=state_cli)

    p = sub.add_parser("backfill", help="read a past range of a polling trigger again into the flow's first "
                                        "queue, running or not; its cursor is not touched")
    add_spec(p)
    p.add_argument("--from", dest="start", required=True, metavar="A",
                   help="read what comes after A (JSON or text, of the cursor's type)")
    p.add_argument("--to", dest="end", required=True, metavar="B", help="until the cursor reaches B")
    p.add_argument("--key", default=None,
                   help="the state field that is the position (default: 'cursor' or the only one)")
    p.add_argument("--state-dir", default=None, help="the embedded runtime's state directory (default .flownb)")
    add_broker(p, "RabbitMQ URL (default: FLOWNB_BROKER_URL when set and --state-dir is not)")
    p.set_defaults(handler=backfill_cli)

    p = sub.add_parser("trace", help="print the recorded path of one record through the steps (the flight "
                                     "recorder: the spec's record:)")
    add_spec(p)
    p.add_argument("trace_id", metavar="ID", help="the trace id (the _trace of a dead letter), or a unique "
                                                  "prefix of it (8 characters or more)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--state-dir", default=None, help="the embedded runtime's state directory (default .flownb)")
    g.add_argument("--db", default=None, help="the SQLite file 'flownb recorder' writes (RabbitMQ)")
    p.set_defaults(handler=trace_cli)

    p = sub.add_parser("recorder", help="drain the flight recorder's events of a flow on RabbitMQ into a "
                                        "SQLite file (for 'flownb trace --db')")
    add_spec(p)
    add_broker(p, "RabbitMQ URL (default: $FLOWNB_BROKER_URL, else the local broker)")
    p.add_argument("--db", required=True, help="the SQLite file to write (created when missing)")
    p.add_argument("--until-idle", action="store_true", help="exit 0 once the tap queue is empty")
    p.set_defaults(handler=recorder_cli)

    for name, helptext in (("plan", "what changing a flow's spec does to its queues and state"),
                           ("upgrade", "move the messages of renamed steps, then remove the old queues")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("old", help="the spec that runs now")
        p.add_argument("new", help="the spec that replaces it")
        p.add_argument("--rename", action="append", metavar="OLD=NEW", help="a renamed step (repeatable)")
        g = p.add_mutually_exclusive_group(required=name == "upgrade")
        g.add_argument("--state-dir", default=None, help="the embedded runtime's state directory")
        add_broker(g, "the RabbitMQ URL of a deployment")
        p.set_defaults(handler=plan_cli if name == "plan" else upgrade_cli)


def _dlq_store(args, flow):
    broker = _where(args)["broker"]
    if broker:
        from .amqp.dlq import AmqpDeadLetters
        return AmqpDeadLetters(flow, broker)
    from .local import LocalDeadLetters
    return LocalDeadLetters(flow, Path(args.state_dir or ".flownb"))


def dlq_cli(args) -> int:
    flow = load_flow(args)
    if args.edit and args.action != "replay":
        raise SpecError(f"--edit goes with 'dlq replay', not 'dlq {args.action}'")
    store = _dlq_store(args, flow)  # list/show return copies with the flow's secrets masked
    con = console()
    if args.action == "list":
        from rich.table import Table
        items = store.list(args.step)
        if len(items) > 1:  # what failed how often, before the letters themselves
            groups: dict[tuple[str, str], list] = {}
            for d in items:
                groups.setdefault((d.step, d.error.type), []).append(d)
            g = Table(title=f"dead letters of '{flow.name}' by step and error")
            for c in ("step", "error", "count", "first message"):
                g.add_column(c, overflow="fold", justify="right" if c == "count" else "left")
            for (step, etype), ds in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
                first = (ds[0].error.message.strip().splitlines() or [""])[0]
                g.add_row(step, etype, f"{len(ds):,}", first[:160])
            con.print(g)
        limit = len(items) if args.list_all else max(args.limit, 0)
        shown_items = items[:limit]
        t = Table(title=f"dead letters of '{flow.name}'" + (f" step '{args.step}'" if args.step else ""))
        for c in ("id", "step", "attempts", "spec", "error", "body"):
            # the error's words whole (its type first); ids and bodies may fold anywhere
            t.add_column(c, overflow="fold", min_width=24 if c == "error" else None)
        for d in shown_items:  # the spec's first 8 hex digits, as git shows a commit (dlq show: all 16)
            t.add_row(d.id, d.step, str(d.error.attempt), (d.spec or "-")[:8], f"{d.error.type}: {d.error.message}",
                      json.dumps(d.message.body)[:80])
        if shown_items:
            con.print(t)
        if len(shown_items) < len(items):
            con.print(f"showing {len(shown_items):,} of {len(items):,}; --limit N or --all for more, "
                      f"'flownb dlq show --id ID' for one in full", soft_wrap=True)
        con.print(f"{len(items)} dead letter(s)")
    elif args.action == "show":
        if not args.id:
            raise SpecError("dlq show needs --id ID (see 'flownb dlq list')")
        for i in args.id:
            d = store.show(i)
            con.print_json(json.dumps({**d.to_dict(), "spec": d.spec}, default=str))
    elif args.edit:
        from ..workbench import read_edits, replay_rows
        if args.id:
            raise SpecError("dlq replay takes --edit FILE or --id, not both: the file names the dead letters")
        rows = read_edits(args.edit)
        broker = getattr(store, "url", None)
        if broker is None:
            store.close()
        done = replay_rows(flow, rows, state_dir=None if broker else Path(args.state_dir or ".flownb"),
                           broker=broker, step=args.step)
        edited = sum(1 for d in done if d["edited"])
        con.print(f"replayed {len(done)} dead letter(s), {edited} with an edited body")
    else:
        n = store.replay(args.step, args.id)
        con.print(f"replayed {n} dead letter(s)")
    return 0


def _where(args) -> dict:
    """The runtime to act on: the broker with --broker, or with FLOWNB_BROKER_URL set (as for
    ``flownb worker``) unless --state-dir names a local state directory."""
    broker = args.broker or (os.environ.get(BROKER_ENV) if args.state_dir is None else None)
    return {"state_dir": None if broker else args.state_dir, "broker": broker}


def state_cli(args) -> int:
    from ..cursor import parse_value, read_cursor, rewound, write_cursor
    flow = load_flow(args)
    where = _where(args)
    con = console()
    if args.action == "show":
        if args.to is not None:
            raise SpecError("'state show' takes no --to; use 'state set' or 'state rewind'")
        con.print(json.dumps(read_cursor(flow, **where), default=str))
        return 0
    if args.action == "set":
        if args.to is None:
            raise SpecError("'state set' needs --to JSON, the whole state (see 'flownb state show')")
        state = parse_value(args.to)
        if not isinstance(state, dict):
            raise SpecError(f"--to {args.to!r} is not a JSON object; write the whole state, e.g. '{{\"cursor\": 0}}'")
        old, new = write_cursor(flow, state, **where)
    else:
        to = parse_value(args.to) if args.to is not None else None
        old, new = write_cursor(flow, change=lambda s: rewound(s, to, args.key), **where)
    con.print(f"old: {json.dumps(old, default=str)}")
    con.print(f"new: {json.dumps(new, default=str)}")
    return 0


def backfill_cli(args) -> int:
    from ..cursor import backfill, parse_value
    flow = load_flow(args)
    done = backfill(flow, parse_value(args.start), parse_value(args.end), key=args.key, **_where(args))
    cursor = ("held by the running trigger worker" if done["cursor"] is None
              else json.dumps(done["cursor"], default=str))
    console().print(f"backfill: {done['messages']} message(s) queued in {done['polls']} poll(s); the flow's "
                    f"cursor untouched: {cursor}", soft_wrap=True)
    return 0


def trace_cli(args) -> int:
    import sys

    from ..recorder import TRACE_COLUMNS, not_recorded, trace_rows
    flow = load_flow(args)
    rows = trace_rows(args.trace_id, spec=flow, state_dir=None if args.db else (args.state_dir or ".flownb"),
                      db=args.db)
    if not rows:
        print(f"flownb: {not_recorded(args.trace_id, flow)}", file=sys.stderr)
        return 1
    import datetime as dt

    def cell(r: dict, c: str) -> str:
        v = r[c]
        if c == "at":
            return dt.datetime.fromtimestamp(v, dt.UTC).isoformat(timespec="milliseconds")
        if c in ("input", "output"):
            return json.dumps(v, ensure_ascii=False, default=str)
        if c == "error":
            return f"{r['error_type']}: {v}" if v is not None else ""
        return "" if v is None else str(v)
    cols = [c for c in TRACE_COLUMNS if c not in ("error_type", "message")]
    if sys.stdout.isatty():
        from rich.table import Table
        from rich.text import Text
        t = Table(title=f"trace {rows[0]['trace']} of '{flow.name}'")
        for c in cols:
            t.add_column(c, overflow="fold")
        colour = {"delivered": "green", "filtered": "yellow", "retry": "magenta", "dead": "red"}
        for r in rows:  # Text: a body's brackets are not rich markup
            t.add_row(*[Text(cell(r, c), style=colour.get(r["outcome"], "") if c == "outcome" else "")
                        for c in cols])
        console().print(t)
        return 0
    print("\t".join(cols))
    for r in rows:
        print("\t".join(cell(r, c).replace("\t", " ").replace("\n", " ") for c in cols))
    return 0


def recorder_cli(args) -> int:
    from .._cli import redacted
    return redacted(_recorder, args)


def _recorder(flow: Flow, args) -> int:
    """``flownb recorder SPEC --broker URL --db FILE [--until-idle]``: SIGTERM/SIGINT stop it after the
    batch in hand is written (exit 0); a lost broker connection exits 1."""
    import signal
    import threading

    from .amqp.names import broker_url
    from .amqp.recorder import drain
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    counts = drain(flow, broker_url(args.broker), args.db, until_idle=args.until_idle, stop=stop)
    print(f"flownb recorder: {counts['rows']} row(s) of {counts['events']} event(s) written to {args.db}"
          + (f"; {counts['bad']} unreadable event(s) skipped" if counts["bad"] else "")
          + (f"; {counts['pruned']} row(s) older than keep pruned" if counts["pruned"] else ""), flush=True)
    return 0


def _cli_renames(values: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for v in values or []:
        a, sep, b = v.partition("=")
        if not sep or not a or not b:
            raise UpgradeError(f"--rename {v!r}: write OLD=NEW (step names)")
        out[a.strip()] = b.strip()
    return out


def _load(path: str) -> Flow:
    from ..flow import load
    flow = load(Path(path))
    flow.validate_components()
    return flow


def plan_cli(args) -> int:
    from .upgrade import amqp_depths, local_depths, local_specs, make_plan
    old, new = _load(args.old), _load(args.new)
    depths = specs = None
    if args.state_dir:
        depths = local_depths(Path(args.state_dir), new.name) or {}
        specs = local_specs(Path(args.state_dir), new.name)
    elif args.broker:
        depths = amqp_depths(old, args.broker)
    plan = make_plan(old, new, _cli_renames(args.rename), depths=depths)
    plan.specs = specs
    con = console()
    for line in plan.lines():
        con.print(line, soft_wrap=True, markup=False)
    if args.broker:
        con.print("  queued messages per spec version: not counted on RabbitMQ (reading a message takes it off "
                  "its queue and returns it; see docs/rabbitmq.md)", soft_wrap=True, markup=False)
    if plan.orphaned or plan.guessed:
        con.print("upgrade would refuse: confirm the renames or empty the removed steps' queues first",
                  markup=False)
        return 1
    return 0


def upgrade_cli(args) -> int:
    from .upgrade import upgrade
    plan, moved = upgrade(_load(args.old), _load(args.new), _cli_renames(args.rename),
                          state_dir=args.state_dir, broker=args.broker)
    con = console()
    for line in plan.lines():
        con.print(line, soft_wrap=True, markup=False)
    for a, n in moved.items():
        con.print(f"moved {n:,} message(s) from '{a}' to '{plan.renamed[a]}'", markup=False)
    return 0
