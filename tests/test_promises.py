"""scripts/promises: every promise docs/*.md marks as tested names a test that exists."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "promises"


def _run(*docs: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, docs)], capture_output=True, text=True,
                          timeout=60)


def test_every_marked_promise_in_the_docs_names_an_existing_test():
    r = _run()
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines and all(line.endswith(": ok") for line in lines), r.stdout
    # each doc that makes a promise listed in issue 19 carries its markers
    docs = {line.split(":", 1)[0] for line in lines}
    assert {"docs/local.md", "docs/webhook.md", "docs/rabbitmq.md", "docs/deploy.md", "docs/schedule.md",
            "docs/rules.md", "docs/components.md"} <= docs


def test_a_marker_naming_a_missing_test_fails(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("A promise. <!-- tested: tests/test_promises.py::test_that_does_not_exist -->\n"
                   "Another. <!-- tested: tests/no_such_file.py::test_x, "
                   "tests/test_promises.py::test_a_marker_naming_a_missing_test_fails -->\n")
    r = _run(doc)
    assert r.returncode == 1
    assert r.stdout.splitlines() == [
        f"{doc}:1: tests/test_promises.py::test_that_does_not_exist: MISSING: no test "
        "test_that_does_not_exist in tests/test_promises.py",
        f"{doc}:2: tests/no_such_file.py::test_x: MISSING: no file tests/no_such_file.py",
        f"{doc}:2: tests/test_promises.py::test_a_marker_naming_a_missing_test_fails: ok"]
    assert "2 missing" in r.stderr


def test_a_doc_without_markers_fails(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("Promises, but none marked.\n")
    r = _run(doc)
    assert r.returncode == 1 and "no '<!-- tested:" in r.stderr
