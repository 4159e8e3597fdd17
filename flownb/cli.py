"""The ``flownb`` command: assembles the sub-commands of each package (their ``cli.py``, each with
``add_parser(sub)`` and its handlers) and runs one; here only what is global: ``-v``, the logging set-up
and the exit code of an error (2 on bad input, 1 on any other FlownbError, 130 on Ctrl-C). A test
(tests/test_cli_layout.py) keeps every sub-parser in a ``cli.py`` and every handler out of this file."""

from __future__ import annotations

import argparse
import logging
import sys

from .errors import FlownbError, MessageError, SpecError

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    from .components.cli import add_parser as validate_parsers
    from .deploy.cli import add_parser as deploy_parsers
    from .runtime.amqp.cli import add_parser as worker_parser
    from .runtime.cli import add_parser as runtime_parsers
    from .runtime.local.cli import add_parser as run_parser
    from .schedule.cli import add_parser as schedule_parser

    ap = argparse.ArgumentParser(prog="flownb", description="Integration flows built in Jupyter, run anywhere.")
    ap.add_argument("-v", "--verbose", action="store_true", help="log debug output")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for add in (validate_parsers, run_parser, runtime_parsers, worker_parser, deploy_parsers, schedule_parser):
        add(sub)
    return ap


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
