"""The type checker is clean: mypy, configured in pyproject.toml ([tool.mypy]), finds no error in flownb."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_mypy_finds_no_error(tmp_path):
    # its cache in a temporary folder: a test run leaves no .mypy_cache in the repository
    r = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "mypy-cache")], cwd=REPO,
                       capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
