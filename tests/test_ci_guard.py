"""Under CI (FLOWNB_CI=1) a skipped test fails, and so does a file whose collection was skipped;
outside CI both are reported as skipped."""

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


#: a whole file skipped at collection (a dev dependency missing): no test of it ever reaches runtest
SKIPPED_MODULE = '''
import pytest

pytest.importorskip("flownb_no_such_module_anywhere")


def test_never_collected():
    assert True
'''


def _run(tmp_path, ci: bool, sample: str = SAMPLE) -> subprocess.CompletedProcess:
    (tmp_path / "test_sample.py").write_text(sample)
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


def test_a_skipped_collection_is_a_failure_under_ci(tmp_path):
    out = _run(tmp_path, ci=True, sample=SKIPPED_MODULE)
    assert out.returncode == 2, out.stdout  # pytest's "interrupted": errors during collection
    assert "1 error" in out.stdout and "skipped" not in out.stdout.splitlines()[-1], out.stdout
    assert "ERROR test_sample.py" in out.stdout
    assert "test_sample.py skipped under CI (FLOWNB_CI=1)" in out.stdout
    assert "could not import 'flownb_no_such_module_anywhere'" in out.stdout


def test_outside_ci_a_skipped_collection_stays_a_skip(tmp_path):
    out = _run(tmp_path, ci=False, sample=SKIPPED_MODULE)
    assert out.returncode == 5, out.stdout  # no tests collected: the file was skipped
    assert "1 skipped" in out.stdout
