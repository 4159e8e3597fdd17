"""The connector template, installed into the venv, used by a flow through ``flownb run --until-idle``."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import BIN, EXTENSIONS

pytestmark = pytest.mark.slow


def flownb_cli(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [str(BIN / "flownb"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_installed_components_are_listed(connector_installed, tmp_path):
    out = flownb_cli("components", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "example.jsonl.poll" in out.stdout and "example.format" in out.stdout


def test_flow_using_the_connector_runs_until_idle(connector_installed, tmp_path):
    (tmp_path / "events.jsonl").write_text('{"name": "Ada", "n": 1}\n{"name": "Lin", "n": 2}\n')
    spec = {
        "name": "greet-events",
        "trigger": {
            "name": "lines",
            "component": "example.jsonl.poll",
            "config": {"path": "events.jsonl", "interval": "1s"},
        },
        "steps": [
            {
                "name": "greet",
                "component": "example.format",
                "config": {"field": "greeting", "template": "Hello {name}!", "upper": True},
            },
            {
                "name": "save",
                "component": "csv.write",
                "config": {"path": "out.csv", "columns": ["n", "greeting"]},
            },
        ],
    }
    (tmp_path / "flow.yaml").write_text(yaml.safe_dump(spec))
    assert flownb_cli("validate", "flow.yaml", cwd=tmp_path).returncode == 0

    out = flownb_cli("run", "flow.yaml", "--until-idle", "--state-dir", "state", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    rows = list(csv.DictReader(open(tmp_path / "out.csv")))
    assert rows == [{"n": "1", "greeting": "HELLO ADA!"}, {"n": "2", "greeting": "HELLO LIN!"}]

    # the trigger's cursor is kept in the state directory: a second run emits only the new line
    with open(tmp_path / "events.jsonl", "a") as fh:
        fh.write(json.dumps({"name": "Bo", "n": 3}) + "\n")
    out = flownb_cli("run", "flow.yaml", "--until-idle", "--state-dir", "state", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    rows = list(csv.DictReader(open(tmp_path / "out.csv")))
    assert [r["n"] for r in rows] == ["1", "2", "3"]


def test_bad_config_is_refused_before_running(connector_installed, tmp_path):
    spec = {
        "name": "bad",
        "trigger": {
            "name": "lines",
            "component": "example.jsonl.poll",
            "config": {"path": "events.jsonl", "batchh": 5},
        },
        "steps": [],
    }
    (tmp_path / "flow.yaml").write_text(yaml.safe_dump(spec))
    out = flownb_cli("run", "flow.yaml", "--until-idle", cwd=tmp_path)
    assert out.returncode == 2 and "did you mean 'batch'" in out.stderr


def test_the_templates_own_tests_pass(connector_installed):
    src = EXTENSIONS["flownb_connector_example"]
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(src / "tests")],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert " passed" in out.stdout and "failed" not in out.stdout
