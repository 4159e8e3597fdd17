"""Fixtures of the parity suite: the session's flow × path table (printed at the end of the run)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from parity_runner import ParityTable  # noqa: E402

_TABLE = ParityTable()


@pytest.fixture(scope="session")
def parity_table() -> ParityTable:
    """The flow × path outcome table of this session (``parity_table.render()``)."""
    return _TABLE


def pytest_runtest_logreport(report):
    if "tests/parity/test_parity.py::test_parity[" not in report.nodeid.replace("\\", "/"):
        return
    flow, path = report.nodeid.split("[", 1)[1].rstrip("]").rsplit("-", 1)
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        if hasattr(report, "wasxfail"):
            outcome = "xfail" if report.skipped else "XPASS"
        else:
            outcome = {"passed": "pass", "failed": "FAIL", "skipped": "skip"}[report.outcome]
        _TABLE.record(flow, path, outcome, report.duration)


def pytest_terminal_summary(terminalreporter):
    text = _TABLE.render()
    if text:
        terminalreporter.section("parity: flow × path")
        terminalreporter.write_line(text)
