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


class _BrokerNodes(argparse.Action):
    """``--broker URL``, repeatable: every URL given, joined with commas into the one broker URL the
    runtime takes (``flownb.runtime.amqp.topology.broker_urls``: the nodes of a cluster, tried in order)."""

    def __call__(self, parser, namespace, values, option_string=None):
        before = getattr(namespace, self.dest, None)
        setattr(namespace, self.dest, f"{before},{values}" if before else values)


def add_broker(p: Any, help: str) -> None:
    """The ``--broker URL`` option of a command (``p``: a parser or an argument group): repeatable, one
    URL per node of a cluster, or several hosts in one URL (``amqp://u:p@h1,h2,h3/vhost``)."""
    p.add_argument("--broker", default=None, action=_BrokerNodes, metavar="URL",
                   help=f"{help}; repeat it, or list hosts (amqp://u:p@h1,h2,h3/vhost), for the nodes of a cluster")


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
