"""The example notebooks write nothing to stderr when run as a reader runs them (issue 17: a raw log
line is a pink box in the notebook). Notebook 04 runs a LocalRuntime whose batch dead-letters
records: the runtime's warnings must not reach the notebook (flownb's notebook log handler,
flownb/runtime/local/runtime.py); errors still would. The same is checked in a real browser by
tests/notebook/test_browser.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.integration]


def _stderr(nb) -> list[tuple[int, str]]:
    return [(i, "".join(o.get("text", ""))[:300]) for i, c in enumerate(nb.cells) if c.cell_type == "code"
            for o in c.get("outputs", []) if o.get("output_type") == "stream" and o.get("name") == "stderr"]


def test_fix_and_replay_notebook_writes_nothing_to_stderr(tmp_path):
    work = tmp_path / "notebooks"
    shutil.copytree(ROOT / "notebooks", work, ignore=shutil.ignore_patterns("build", ".ipynb_*"))
    nb = nbformat.read(work / "04-fix-and-replay.ipynb", as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(work)}}).execute()
    assert _stderr(nb) == []
    # the runs did dead-letter records (what used to print a WARNING per run): the notebook says so itself
    assert "EvaluationError" in "".join(str(o) for c in nb.cells for o in c.get("outputs", []))


def test_the_committed_fix_and_replay_notebook_has_no_stderr_output():
    assert _stderr(nbformat.read(ROOT / "notebooks" / "04-fix-and-replay.ipynb", as_version=4)) == []


def test_the_notebook_log_handler_shows_errors_only_and_steps_aside_once_logging_is_configured():
    import io
    import logging

    from flownb.runtime.local.runtime import _NotebookLog
    out = io.StringIO()
    handler = _NotebookLog()
    handler.setStream(out)
    logger = logging.getLogger("flownb.test-notebook-log")
    logger.addHandler(handler)
    root = logging.getLogger()
    kept = root.handlers[:]
    root.handlers.clear()  # a notebook whose logging nobody configured
    try:
        logger.warning("a dead letter")
        logger.error("a poll failed")
        assert out.getvalue() == "a poll failed\n"
        root.addHandler(logging.NullHandler())  # logging.basicConfig(): that configuration decides
        logger.error("another poll failed")
        assert out.getvalue() == "a poll failed\n"
    finally:
        root.handlers[:] = kept
        logger.removeHandler(handler)
