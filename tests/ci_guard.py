"""A pytest plugin (loaded by the root conftest.py): under CI (``FLOWNB_CI=1``, set by ``.ci/run``) a
skipped test is a failure, and so is a skipped collection (a module-level ``pytest.importorskip`` or
``pytest.skip(allow_module_level=True)``, which skips every test of a file before any test runs and so
never reaches ``pytest_runtest_makereport``).

CI's machine runs every service the suite needs (``scripts/services`` fails fast when one cannot
start), so a skip there means a part went untested while CI stayed green: a broker that did not
start, a missing browser, an import guard hiding a regression. Outside CI, skips print their reason
as usual (``-ra``). Expected failures (``xfail``) are not skips and are unaffected.
"""

from __future__ import annotations

import os

import pytest

_CI = os.environ.get("FLOWNB_CI") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    if not _CI:
        return
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        markers = sorted({m.name for m in item.iter_markers()} &
                         {"docker", "rabbitmq", "postgres", "mysql", "browser", "integration"})
        report.outcome = "failed"
        report.longrepr = (f"skipped under CI (FLOWNB_CI=1): {reason}\n"
                           f"markers: {', '.join(markers) or 'none'}; CI's machine runs every service "
                           f"the suite needs, so a skip here is a part that went untested. Start the "
                           f"service (scripts/services) or fix the test.")


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """A file whose collection was skipped turns into a collection error under CI: its tests never ran."""
    outcome = yield
    if not _CI:
        return
    report = outcome.get_result()
    if report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        report.outcome = "failed"
        report.longrepr = (f"collection of {collector.nodeid or collector.path} skipped under CI (FLOWNB_CI=1): "
                           f"{reason}\nEvery test of it went untested. CI's machine installs every dev "
                           f"dependency and runs every service the suite needs: install the module "
                           f"(scripts/venv.sh dev), start the service (scripts/services) or fix the test.")
