"""The linter is clean: ruff (pinned in the dev extra, rules in pyproject.toml's [tool.ruff.lint])
finds nothing in the repository's Python code and notebooks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing():
    ruff = Path(sys.executable).with_name("ruff")
    r = subprocess.run([str(ruff), "check", "--no-cache", "."], cwd=REPO, capture_output=True, text=True,
                       timeout=300, check=False)
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_pinned_ruff_is_the_one_that_runs():
    from importlib.metadata import version
    pinned = next(line for line in (REPO / "pyproject.toml").read_text().splitlines() if '"ruff==' in line)
    assert f'"ruff=={version("ruff")}"' in pinned
