"""The process that executes one scheduled notebook with papermill (``python -m flownb.schedule._child``).

It runs in its own process group so a timeout kills it and its kernel without touching the scheduler.
Argument: one JSON object ``{notebook, output, log, result, parameters, cwd}``. The progress bar and
the cells' output go to the log file as lines; the outcome (ok, or the index of the failing cell in the output
notebook with the error name and value from PapermillExecutionError) is written as JSON to ``result``.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
from pathlib import Path


class _LogWriter:
    """A file for tqdm that turns its carriage-return updates into log lines."""

    def __init__(self, logger: logging.Logger):
        self.logger = logger
        self._last = ""

    def write(self, text: str) -> int:
        for part in text.replace("\r", "\n").split("\n"):
            part = part.strip()
            if part and part != self._last:
                self._last = part
                self.logger.info("%s", part)
        return len(text)

    def flush(self) -> None:
        pass


def _failed_cell(output: str, fallback: int | None) -> int | None:
    """Index of the failing cell in the saved output notebook (papermill adds banner cells above it)."""
    import nbformat

    try:
        nb = nbformat.read(output, as_version=4)
    except (OSError, ValueError):
        return fallback
    for i, cell in enumerate(nb.cells):
        if cell.get("metadata", {}).get("papermill", {}).get("exception"):
            return i
    return fallback


def execute(job: dict) -> dict:
    import papermill
    from papermill.exceptions import PapermillExecutionError

    logger = logging.getLogger("flownb.schedule.run")
    try:
        papermill.execute_notebook(
            job["notebook"],
            job["output"],
            parameters=job.get("parameters") or {},
            cwd=job.get("cwd"),
            log_output=True,
            progress_bar={"file": _LogWriter(logger), "ascii": True, "mininterval": 0, "ncols": 80},
        )
    except PapermillExecutionError as exc:
        return {
            "status": "failed",
            "error_cell": _failed_cell(job["output"], exc.cell_index),
            "error_name": exc.ename,
            "error_value": exc.evalue,
        }
    except Exception as exc:  # kernel did not start, notebook unreadable …: recorded, not raised
        logger.exception("run failed before or outside a cell")
        return {
            "status": "failed",
            "error_cell": None,
            "error_name": type(exc).__name__,
            "error_value": str(exc),
        }
    return {"status": "ok"}


def _terminate(signum, frame):
    raise SystemExit(128 + signum)  # unwinds papermill, whose cleanup shuts the kernel down


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGTERM, _terminate)
    job = json.loads(argv[0])
    handler = logging.FileHandler(job["log"], encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    result = execute(job)
    Path(job["result"]).write_text(json.dumps(result), encoding="utf-8")
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
