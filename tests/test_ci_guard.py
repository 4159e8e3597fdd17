"""Under CI (FLOWNB_CI=1) a skipped test fails; outside CI it is reported as skipped."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SAMPLE = '''
import pytest

@pytest.mark.rabbitmq
def test_needs_a_broker():
    pytest.skip("RabbitMQ is not running on 127.0.0.1:5672")

@pytest.mark.xfail(strict=True, reason="known")
def test_expected_failure():
    assert False

def test_fine():
    assert True
'''


def _run(tmp_path, ci: bool) -> subprocess.CompletedProcess:
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    env = {k: v for k, v in os.environ.items() if k != "FLOWNB_CI"}
    if ci:
        env["FLOWNB_CI"] = "1"
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.ci_guard", "-p", "no:cacheprovider",
                           "-q", "-o", "addopts=", "--rootdir", str(tmp_path), str(tmp_path)],
                          capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)


def test_a_skip_is_a_failure_under_ci(tmp_path):
    out = _run(tmp_path, ci=True)
    assert out.returncode == 1, out.stdout
    assert "1 failed, 1 passed, 1 xfailed" in out.stdout
    assert "skipped under CI (FLOWNB_CI=1): RabbitMQ is not running" in out.stdout
    assert "markers: rabbitmq" in out.stdout


def test_outside_ci_a_skip_stays_a_skip(tmp_path):
    out = _run(tmp_path, ci=False)
    assert out.returncode == 0, out.stdout
    assert "1 passed, 1 skipped, 1 xfailed" in out.stdout
