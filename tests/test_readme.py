"""The README's examples, run as a reader would run them (its two commands are run by
tests/test_cli.py::test_scripts_example_says_what_it_read_kept_and_where_the_result_is and by CI)."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

from flownb.testing import HttpTarget

README = Path(__file__).resolve().parents[1] / "README.md"
FLOWNB = str(Path(sys.executable).with_name("flownb"))


def _block(title: str, lang: str) -> str:
    m = re.search(rf"## {re.escape(title)}\n\n```{lang}\n(.*?)```", README.read_text(), re.S)
    assert m, f"README has no '## {title}' section with a {lang} block"
    return m.group(1)


def _cli(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([FLOWNB, *args], capture_output=True, text=True, timeout=120, cwd=cwd,
                          env={**os.environ, "COLUMNS": "200", **env})


def test_the_flow_of_the_readme_runs_as_written(tmp_path):
    (tmp_path / "flow.yaml").write_text(_block("A flow", "yaml"))
    assert _cli("validate", "flow.yaml", cwd=tmp_path).returncode == 0

    # before the database exists: a clear error naming the step and the file, and no empty shop.db left
    r = _cli("run", "flow.yaml", "--until-idle", cwd=tmp_path, CRM_TOKEN="t0ken-for-the-readme")
    assert r.returncode == 2
    assert "step 'new-orders', field 'config.url': the SQLite database 'shop.db' does not exist" in r.stderr
    assert not (tmp_path / "shop.db").exists()

    with sqlite3.connect(tmp_path / "shop.db") as db:
        db.execute("create table orders (id integer primary key, customer_email text, qty integer, "
                   "price real, updated_at text)")
        db.executemany("insert into orders values (?, ?, ?, ?, ?)", [
            (1, "Ada@Example.com", 3, 40.0, "2024-05-01T10:00:00"),    # 120: pushed
            (2, "grace@navy.mil", 1, 19.99, "2024-05-01T10:01:00"),    # 19.99: filtered
            (3, "ALAN@turing.org", 2, 75.5, "2024-05-01T10:02:00")])   # 151: pushed
    with HttpTarget() as crm:
        r = _cli("run", "flow.yaml", "-p", "crm_url", crm.url, "--until-idle", cwd=tmp_path,
                 CRM_TOKEN="t0ken-for-the-readme")
        assert r.returncode == 0, r.stdout + r.stderr
        got = [(x.path, x.json) for x in crm.received]
        auth = {x.headers.get("authorization") for x in crm.received}
    assert got == [("/contacts", {"id": 1, "email": "ada@example.com", "total": 120.0}),
                   ("/contacts", {"id": 3, "email": "alan@turing.org", "total": 151.0})]
    assert auth == {"Bearer t0ken-for-the-readme"}
    assert "3 record(s) in from 'new-orders'; 2 came out of the last step 'push'" in r.stdout
