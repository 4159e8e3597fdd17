"""What every command of the ``flownb`` CLI shares: the spec argument, loading it, the console, and
running a command with the flow's secrets redacted.

Each package with commands has a ``cli.py`` with ``add_parser(sub)`` (its sub-parsers, each with
``set_defaults(handler=…)``) and the handlers; :mod:`flownb.cli` only assembles them. The modules
holding ``add_parser`` import nothing heavy (no pika, pandas or Docker SDK): the handlers do.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import FlownbError


def add_spec(p: argparse.ArgumentParser, params: bool = True) -> None:
    p.add_argument("spec", help="path to flow.yaml")
    if params:
        p.add_argument("-p", "--param", nargs=2, action="append", metavar=("NAME", "VALUE"),
                       help="override a flow parameter (repeatable)")


def load_flow(args: argparse.Namespace):
    from .flow import load
    flow = load(Path(args.spec))
    params = dict(getattr(args, "param", None) or [])
    if params:
        flow = flow.with_parameters(params)
    flow.validate_components()
    return flow


def console():
    from rich.console import Console
    return Console(stderr=False, highlight=False)


def redacted(entry: Callable[[Any, argparse.Namespace], int], args: argparse.Namespace) -> int:
    """``entry(flow, args)`` with the flow's secrets redacted from stored errors, logs and
    stdout/stderr (docs/secrets.md), and from the message of a FlownbError it raises."""
    from .secrets import install_log_redaction, redact
    flow = load_flow(args)
    undo = install_log_redaction(flow)
    try:
        return entry(flow, args)
    except FlownbError as exc:  # main() prints it after the redaction is undone
        exc.args = tuple(redact(a) if isinstance(a, str) else a for a in exc.args)
        raise
    finally:
        undo()
