"""The process that executes one scheduled notebook with papermill (``python -m flownb.schedule._child``).

It runs in its own process group so a timeout kills it and its kernel without touching the scheduler.
Argument: one JSON object ``{notebook, output, partial, log, result, parameters, cwd, secret_env}``.
papermill writes to ``partial``; when it ends (ok, failed or interrupted) the redacted copy becomes
``output`` (flownb.schedule.runner.publish_output). The progress bar and the cells' output go to the
log file as lines, redacted (a flownb.secrets.RedactingFilter on its handler); the outcome (ok, or the
index of the failing cell in the output notebook with the error name and value from
PapermillExecutionError, redacted) is written as JSON to ``result``. Files are 0600.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
from pathlib import Path

from ..secrets import RedactingFilter, Redactor
from .runner import partial_path, private_file, publish_output, run_redactor, write_private


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


def execute(job: dict, redactor: Redactor | None = None) -> dict:
    redactor = redactor if redactor is not None else run_redactor(job.get("secret_env") or [])
    partial = Path(job.get("partial") or partial_path(Path(job["output"])))
    try:
        result = _execute(job, str(partial))
    finally:  # also on SIGTERM (timeout): only a redacted notebook is left behind
        publish_output(partial, Path(job["output"]), redactor)
    if result.pop("_in_cell", False):  # papermill's index, checked against the output notebook
        result["error_cell"] = _failed_cell(job["output"], result["error_cell"])
    for key in ("error_name", "error_value"):
        if isinstance(result.get(key), str):
            result[key] = redactor.redact(result[key])
    return result


def _execute(job: dict, partial: str) -> dict:
    import papermill
    from papermill.exceptions import PapermillExecutionError

    logger = logging.getLogger("flownb.schedule.run")
    private_file(Path(partial))
    try:
        papermill.execute_notebook(
            job["notebook"],
            partial,
            parameters=job.get("parameters") or {},
            cwd=job.get("cwd"),
            log_output=True,
            progress_bar={"file": _LogWriter(logger), "ascii": True, "mininterval": 0, "ncols": 80},
        )
    except PapermillExecutionError as exc:
        return {
            "status": "failed",
            "error_cell": exc.cell_index,
            "_in_cell": True,
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
    redactor = run_redactor(job.get("secret_env") or [])
    handler = logging.FileHandler(private_file(Path(job["log"])), encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter(redactor))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    result = execute(job, redactor)
    write_private(Path(job["result"]), json.dumps(result))
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
