"""Running flows through the real ``flownb run`` console script in the connector tests."""

from __future__ import annotations

import csv
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import yaml

FLOWNB = str(Path(sys.executable).parent / "flownb")


def write_flow(tmp: Path, name: str, trigger: dict, steps: list[dict]) -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "trigger": {"name": "src", **trigger}, "steps": steps}))
    return path


def run(spec: Path, state: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """``flownb run SPEC --until-idle``; must exit 0."""
    p = subprocess.run([FLOWNB, "run", str(spec), "--state-dir", str(state), "--until-idle", *args],
                       check=False, capture_output=True, text=True, timeout=timeout, cwd=spec.parent)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def records_in(p: subprocess.CompletedProcess) -> str:
    return p.stdout.replace("\n", " ")


def csv_ids(path: Path) -> list[int]:
    if not path.exists():
        return []
    with path.open() as f:
        return [int(r["id"]) for r in csv.DictReader(f)]


def start(spec: Path, state: Path, log: Path) -> subprocess.Popen:
    """``flownb run SPEC`` in the background (its own session), stderr to ``log``."""
    return subprocess.Popen([FLOWNB, "run", str(spec), "--state-dir", str(state)], cwd=spec.parent,
                            stdout=subprocess.DEVNULL, stderr=log.open("w"), start_new_session=True)


def wait_first_poll(proc: subprocess.Popen, db: Path, log: Path, timeout: float = 30) -> None:
    """Until the process committed its first poll (the trigger's state row exists)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with sqlite3.connect(db, timeout=5) as c:
                if c.execute("SELECT count(*) FROM trigger_state").fetchone()[0]:
                    return
        except sqlite3.OperationalError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
