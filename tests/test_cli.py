"""``flownb validate | run | dlq | components``: through the real console script and ``cli.main``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from flownb.cli import main

FLOWNB = str(Path(sys.executable).parent / "flownb")

POLL = textwrap.dedent('''
    def poll(state, ctx):
        start = state.get("next", 0)
        total = ctx.config.options["total"]
        state["next"] = total
        bad = ctx.config.options.get("poison", [])
        return [{"n": i, "poison": i in bad} for i in range(start, total)]
''')
WORK = textwrap.dedent('''
    import os
    def work(body, ctx):
        if body["poison"] and not os.path.exists(ctx.config.options["fix_file"]):
            raise ValueError(f"cannot handle {body['n']}")
        return {"n": body["n"], "w": body["n"] * 2}
''')


def spec(tmp: Path, *, total=10, poison=(), poll=POLL) -> Path:
    flow = {
        "flownb": 1, "name": "cli-test",
        "parameters": {"total": total, "label": "x"},
        "trigger": {"name": "numbers", "component": "python.poll",
                    "config": {"source": poll, "function": "poll",
                               "options": {"total": "{{ total }}", "poison": list(poison)}}},
        "steps": [{"name": "work", "component": "python",
                   "config": {"source": WORK, "function": "work",
                              "options": {"fix_file": str(tmp / "fixed")}}},
                  {"name": "out", "component": "log", "config": {"level": "debug"}}],
    }
    import yaml
    text = yaml.safe_dump(flow, sort_keys=False)
    path = tmp / "flow.yaml"
    path.write_text(text)
    return path


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([FLOWNB, *args], capture_output=True, text=True, timeout=120, cwd=cwd)


# -- the real console script -----------------------------------------------------------------------

def test_validate_ok(tmp_path):
    r = cli("validate", str(spec(tmp_path)))
    assert r.returncode == 0, r.stderr
    assert "ok" in r.stdout and "cli-test" in r.stdout and "2 step(s)" in r.stdout


def test_invalid_yaml_exits_2(tmp_path):
    p = tmp_path / "flow.yaml"
    p.write_text("name: x\ntrigger: [unclosed\n  steps: -\n")
    r = cli("validate", str(p))
    assert r.returncode == 2
    assert "invalid YAML at line" in r.stderr and "fix the YAML" in r.stderr


def test_missing_spec_file_exits_2(tmp_path):
    r = cli("run", str(tmp_path / "nope.yaml"), "--until-idle")
    assert r.returncode == 2 and "does not exist" in r.stderr


def test_unknown_component_suggests_nearest_and_nothing_runs(tmp_path):
    p = spec(tmp_path)
    p.write_text(p.read_text().replace("component: log", "component: lgo"))
    state = tmp_path / "state"
    r = cli("run", str(p), "--state-dir", str(state), "--until-idle")
    assert r.returncode == 2
    assert "step 'out'" in r.stderr and "unknown component 'lgo'" in r.stderr
    assert "did you mean 'log'" in r.stderr
    assert not state.exists()          # validated before anything ran


def test_missing_and_mistyped_config_name_step_and_field(tmp_path):
    p = spec(tmp_path)
    text = p.read_text()
    p.write_text(text.replace("function: work", "functon: work"))
    r = cli("validate", str(p))
    assert r.returncode == 2
    assert "step 'work'" in r.stderr and "config" in r.stderr and "did you mean 'function'" in r.stderr

    p.write_text(text.replace("level: debug", "level: loud"))
    r = cli("validate", str(p))
    assert r.returncode == 2
    assert "step 'out'" in r.stderr and "field 'config.level'" in r.stderr and "'loud'" in r.stderr


def test_unknown_parameter_lists_known_ones(tmp_path):
    r = cli("validate", str(spec(tmp_path)), "-p", "totl", "5")
    assert r.returncode == 2
    assert "unknown parameter 'totl'" in r.stderr and "did you mean 'total'" in r.stderr
    assert "label, total" in r.stderr
    r = cli("validate", str(spec(tmp_path)), "-p", "total", "many")
    assert r.returncode == 2 and "does not fit the type" in r.stderr


def test_run_until_idle_prints_summary(tmp_path):
    state = tmp_path / "state"
    r = cli("run", str(spec(tmp_path, total=7)), "--state-dir", str(state), "--until-idle", "-p", "total", "12")
    assert r.returncode == 0, r.stderr
    for word in ("numbers", "work", "out", "retried", "dead", "msg/s"):
        assert word in r.stdout
    flat = " ".join(r.stdout.split())
    assert "12 record(s) in from 'numbers'; 12 came out of the last step 'out' (24 step inputs in" in flat
    assert (state / "cli-test.db").exists()


def test_body_not_json_exits_2_naming_the_step_and_queues_nothing(tmp_path):
    p = spec(tmp_path, poll=POLL.replace('"poison": i in bad}', '"poison": i in bad, "tags": {1, 2}}'))
    state = tmp_path / "state"
    r = cli("run", str(p), "--state-dir", str(state), "--until-idle")
    assert r.returncode == 2, r.stderr
    assert "step 'numbers'" in r.stderr and "not JSON-serialisable" in r.stderr
    import sqlite3
    db = sqlite3.connect(state / "cli-test.db")
    assert db.execute("select count(*) from queue").fetchone()[0] == 0
    assert db.execute("select count(*) from trigger_state where state != '{}'").fetchone()[0] == 0
    db.close()


def test_components_lists_installed(tmp_path):
    r = cli("components")
    assert r.returncode == 0, r.stderr
    for key in ("log", "python", "python.poll", "csv.poll", "sql.upsert"):
        assert key in r.stdout


def test_components_name_shows_every_field_as_written_in_yaml_required_first():
    r = cli("components", "http.request")
    assert r.returncode == 0, r.stderr
    out = " ".join(r.stdout.split())  # the table wraps long cells
    assert "http.request (action): Call an HTTP endpoint for each message." in out
    rows = [line for line in r.stdout.splitlines() if line.startswith("│ ") and not line.startswith("│  ")]
    timeout = next(line for line in rows if line.split("│")[1].strip() == "timeout")
    assert "duration" in timeout and "30s" in timeout and "float" not in timeout
    up = cli("components", "sql.upsert")
    flat = " ".join(up.stdout.split())
    assert "A batch is written in one transaction." in flat and "``" not in flat  # whole, plain text
    up_names = [line.split("│")[1].strip() for line in up.stdout.splitlines()
                if line.startswith("│ ") and line.split("│")[1].strip()]
    assert up_names[:2] == ["table", "key"]  # the required fields first
    assert "error | ignore" in up.stdout
    bad = cli("components", "sql.upser")
    assert bad.returncode == 2 and "did you mean 'sql.upsert'" in bad.stderr


def test_dlq_without_state_is_a_clear_error(tmp_path):
    r = cli("dlq", "list", str(spec(tmp_path)), "--state-dir", str(tmp_path / "none"))
    assert r.returncode == 1 and "run the flow first" in r.stderr


# -- dead letters through cli.main -------------------------------------------------------------------

def test_dlq_list_show_replay_after_fix(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    p = str(spec(tmp_path, total=6, poison=[2, 5]))
    state = str(tmp_path / "state")
    assert main(["run", p, "--state-dir", state, "--until-idle"]) == 1  # the run dead-lettered messages
    out = capsys.readouterr().out
    assert "2 dead letter(s) stored" in out
    assert "dead-lettered step 'work': 2 × ValueError: cannot handle 2" in out  # one line per step and kind
    assert f"see 'flownb dlq list {p} --state-dir {state}'" in out
    assert "2 message(s) were dead-lettered by this run" in out

    assert main(["dlq", "list", p, "--state-dir", state]) == 0
    out = capsys.readouterr().out
    assert "ValueError: cannot handle 2" in out and "2 dead letter(s)" in out

    assert main(["dlq", "show", p, "--state-dir", state, "--id", "1"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["step"] == "work" and shown["message"]["body"]["n"] == 2
    assert "Traceback" in shown["error"]["traceback"] and shown["error"]["attempt"] == 1

    assert main(["dlq", "show", p, "--state-dir", state]) == 2          # --id missing
    assert main(["dlq", "list", p, "--state-dir", state, "--step", "wrk"]) == 2
    assert "did you mean 'work'" in capsys.readouterr().err

    (tmp_path / "fixed").touch()
    assert main(["dlq", "replay", p, "--state-dir", state]) == 0
    assert "replayed 2 dead letter(s)" in capsys.readouterr().out
    assert main(["run", p, "--state-dir", state, "--until-idle"]) == 0
    out = capsys.readouterr().out
    assert "dead letter(s) stored" not in out and "(4 step inputs in" in " ".join(out.split())
    assert main(["dlq", "list", p, "--state-dir", state]) == 0
    assert "0 dead letter(s)" in capsys.readouterr().out


def test_dlq_list_groups_by_step_and_error_then_shows_a_limited_list(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    p = str(spec(tmp_path, total=40, poison=list(range(1, 31))))
    state = str(tmp_path / "state")
    assert main(["run", p, "--state-dir", state, "--until-idle"]) == 1
    capsys.readouterr()
    assert main(["dlq", "list", p, "--state-dir", state]) == 0
    out = capsys.readouterr().out
    summary = out.split("by step and error", 1)[1].split("dead letters of", 1)[0]
    row = next(line for line in summary.splitlines() if "ValueError" in line)
    assert "work" in row and " 30 " in row and "cannot handle 1" in row  # one group: its count, its first
    letters = out.split("by step and error", 1)[1].split("dead letters of", 1)[1]
    assert letters.count("ValueError: cannot handle") == 20  # the default limit
    assert "showing 20 of 30; --limit N or --all for more" in out and out.rstrip().endswith("30 dead letter(s)")
    assert main(["dlq", "list", p, "--state-dir", state, "--limit", "5"]) == 0
    out = capsys.readouterr().out
    assert out.count("ValueError: cannot handle") == 5 and "showing 5 of 30" in out  # letters (summary: apart)
    assert main(["dlq", "list", p, "--state-dir", state, "--all"]) == 0
    out = capsys.readouterr().out
    assert out.count("ValueError: cannot handle") == 30 and "showing" not in out


def _idle(db: Path) -> bool:
    import sqlite3
    if not db.exists():
        return False
    con = sqlite3.connect(db, timeout=5)
    try:
        polled = con.execute("select count(*) from trigger_state").fetchone()[0]
        queued = con.execute("select count(*) from queue").fetchone()[0]
    except sqlite3.OperationalError:
        return False
    finally:
        con.close()
    return polled == 1 and queued == 0


@pytest.mark.slow
def test_run_stops_on_sigterm(tmp_path):
    import signal
    import time
    p = spec(tmp_path)
    proc = subprocess.Popen([FLOWNB, "run", str(p), "--state-dir", str(tmp_path / "s")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    db = tmp_path / "s" / "cli-test.db"
    deadline = time.monotonic() + 60
    while not _idle(db):                # polled once and processed everything: now idle
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    flat = " ".join(out.split())
    assert "(20 step inputs in" in flat
    # it said at once what it runs, where its state is and how to stop it
    assert flat.startswith(f"flow 'cli-test' on the embedded runtime: polling 'numbers' (python.poll) every 1m; "
                           f"2 step(s); state in {tmp_path / 's'}; stop with Ctrl-C or SIGTERM")


# -- the example flow (README's first command) ---------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]


def _expected_orders() -> dict[str, float]:
    import csv
    out = {}
    with open(REPO / "examples/orders/orders.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            total = round(int(row["qty"]) * float(row["unit_price"]) * (1 - float(row["discount"])), 2)
            if row["status"] != "cancelled" and total >= 20:
                out[row["order_id"]] = total
    return out


def test_example_flow_runs_and_is_idempotent(tmp_path):
    import sqlite3
    db = tmp_path / "orders.db"
    args = ("run", "examples/orders/flow.yaml", "--state-dir", str(tmp_path / "state"), "--until-idle",
            "-p", "db_url", f"sqlite:///{db}")
    r = cli(*args, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert "new-orders" in r.stdout and "save" in r.stdout
    expected = _expected_orders()
    assert 100 < len(expected) < 300
    con = sqlite3.connect(db)
    rows = {oid: (total, email) for oid, total, email in con.execute("select order_id, total, email from orders")}
    assert {k: v[0] for k, v in rows.items()} == pytest.approx(expected)
    assert all(email == email.lower() and "@" in email for _, email in rows.values())
    r = cli(*args, cwd=REPO)                    # the cursor was kept: nothing new the second time
    assert r.returncode == 0, r.stderr
    assert con.execute("select count(*) from orders").fetchone()[0] == len(expected)
    con.close()
    assert "'new-orders': no new records since cursor '2024-03-10T14:11:00Z'" in r.stdout


def test_scripts_example_says_what_it_read_kept_and_where_the_result_is(tmp_path):
    """The README's first command, run for real (twice) in a copy of the repository's example."""
    import shutil
    root = tmp_path / "repo"
    (root / "scripts").mkdir(parents=True)
    for name in ("example", "venv.sh"):
        shutil.copy2(REPO / "scripts" / name, root / "scripts" / name)
    shutil.copytree(REPO / "examples", root / "examples")
    shutil.copy2(REPO / "pyproject.toml", root / "pyproject.toml")
    # the virtual environment running these tests; its install stamp must stay newer than the copied
    # pyproject.toml, or scripts/venv.sh would reinstall flownb from this copy (which has no package)
    # into the running environment
    stamps = list(Path(sys.prefix).glob(".installed-*"))
    assert stamps, f"{sys.prefix} was not made by scripts/venv.sh (no .installed-* stamp)"
    os.utime(root / "pyproject.toml", (0, 0))
    (root / ".venv").symlink_to(sys.prefix)
    def run() -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(root / "scripts" / "example")], capture_output=True, text=True,
                              timeout=300, env={**os.environ, "COLUMNS": "200"})
    first = run()
    assert first.returncode == 0, first.stderr
    n = len(_expected_orders())
    assert f"300 record(s) in from 'new-orders'; {n} came out of the last step 'save'" in first.stdout
    assert f"result: {n} orders (total " in first.stdout and "in .flownb/example/shop.db (table orders)" in first.stdout
    assert (root / ".flownb" / "example" / "orders.db").exists()  # the runtime's state, apart from the result
    second = run()
    assert second.returncode == 0, second.stderr
    assert "'new-orders': no new records since cursor '2024-03-10T14:11:00Z'" in second.stdout
    assert f"result: {n} orders" in second.stdout


def test_jsonata_syntax_error_names_step_field_and_position(tmp_path):
    text = (REPO / "examples/orders/flow.yaml").read_text()
    bad = tmp_path / "flow.yaml"
    bad.write_text(text.replace("email: $lowercase(customer_email)", "email: $lowercase(customer_email"))
    state = tmp_path / "state"
    r = cli("run", str(bad), "--state-dir", str(state), "--until-idle", cwd=REPO)
    assert r.returncode == 2
    assert "step 'to-order'" in r.stderr and "field 'config.fields.email'" in r.stderr
    assert "position 25" in r.stderr and "$lowercase(customer_email\n" in r.stderr
    assert not state.exists()


def test_until_idle_reports_retries_scheduled_later_and_delivers_them_next_run(tmp_path):
    later = textwrap.dedent('''
        import os
        from flownb import Retry
        def work(body, ctx):
            if not os.path.exists(ctx.config.options["fix_file"]):
                raise Retry("not yet", after=3600)
            return body
    ''')
    p = spec(tmp_path, total=3)
    import yaml
    data = yaml.safe_load(p.read_text())
    data["steps"][0]["config"]["source"] = later
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    state = str(tmp_path / "state")
    import os
    env = {**os.environ, "FLOWNB_RETRY_WAIT": "0.5", "COLUMNS": "200"}
    r = subprocess.run([FLOWNB, "run", str(p), "--state-dir", state, "--until-idle"], capture_output=True,
                       text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    assert "pending (scheduled retries) work: 3" in r.stdout and "next retry due in 3" in r.stdout
    import sqlite3
    con = sqlite3.connect(Path(state) / "cli-test.db")
    con.execute("update queue set available_at = 0")    # as if the hour had passed
    con.commit()
    con.close()
    (tmp_path / "fixed").touch()
    r = subprocess.run([FLOWNB, "run", str(p), "--state-dir", state, "--until-idle"], capture_output=True,
                       text=True, timeout=120, env=env)
    assert r.returncode == 0 and "pending" not in r.stdout and "(6 step inputs in" in " ".join(r.stdout.split())


@pytest.mark.integration
@pytest.mark.rabbitmq
def test_dlq_uses_flownb_broker_url_and_prints_no_pika_chatter(tmp_path):
    import os
    p = spec(tmp_path)
    env = {**os.environ, "FLOWNB_BROKER_URL": "amqp://guest:guest@127.0.0.1:5672/"}
    r = subprocess.run([FLOWNB, "dlq", "list", str(p)], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    assert "0 dead letter(s)" in r.stdout  # read from the broker: there is no local state at all
    assert "pika" not in r.stderr and "INFO" not in r.stderr
    local = subprocess.run([FLOWNB, "dlq", "list", str(p), "--state-dir", str(tmp_path / "none")],
                           capture_output=True, text=True, timeout=120, env=env)
    assert local.returncode == 1 and "run the flow first" in local.stderr  # --state-dir means local


def test_the_cli_logs_flownbs_own_lines_and_library_lines_only_with_v(tmp_path):
    """``flownb run`` of a flow with an HTTP step: httpx logs every request at INFO ("HTTP Request:
    POST …"), which the CLI shows only with -v; flownb's own INFO lines (the step's ``log`` output
    at INFO) show either way."""
    import http.server
    import threading

    import yaml

    class Ok(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            self.rfile.read(int(self.headers.get("content-length") or 0))
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):  # the server's own access log: not what is tested
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        flow = {"flownb": 1, "name": "cli-logs",
                "trigger": {"name": "numbers", "component": "python.poll",
                            "config": {"source": POLL, "function": "poll", "options": {"total": 3}}},
                "steps": [{"name": "call", "component": "http.request",
                           "config": {"url": f"http://127.0.0.1:{server.server_port}/hook"}},
                          {"name": "out", "component": "log", "config": {"level": "info"}}]}
        path = tmp_path / "flow.yaml"
        path.write_text(yaml.safe_dump(flow, sort_keys=False))
        quiet = cli("run", str(path), "--state-dir", str(tmp_path / "a"), "--until-idle", cwd=tmp_path)
        loud = cli("-v", "run", str(path), "--state-dir", str(tmp_path / "b"), "--until-idle", cwd=tmp_path)
    finally:
        server.shutdown()
    assert quiet.returncode == 0 and loud.returncode == 0, quiet.stderr + loud.stderr
    for r in (quiet, loud):
        assert "INFO flownb" in r.stderr, r.stderr  # flownb's own lines, with or without -v
    assert "httpx" not in quiet.stderr and "HTTP Request" not in quiet.stderr, quiet.stderr
    assert "INFO httpx: HTTP Request: POST" in loud.stderr, loud.stderr
    assert not [line for line in quiet.stderr.splitlines() if " INFO " in line and " INFO flownb" not in line]


TWO_KINDS = textwrap.dedent('''
    def work(body, ctx):
        if body["poison"]:
            if body["n"] % 2:
                raise KeyError(f"no field for {body['n']}")
            raise ValueError(f"cannot handle {body['n']}")
        return {"n": body["n"]}
''')


def test_until_idle_over_many_poison_rows_warns_once_per_step_and_kind(tmp_path):
    """50 poison rows of two error kinds: stderr has one WARNING per step and kind (the rest are
    DEBUG: all 50 with -v), the summary one line per step and kind with its count."""
    import re

    import yaml
    flow = {"flownb": 1, "name": "poison-cli",
            "trigger": {"name": "numbers", "component": "python.poll",
                        "config": {"source": POLL, "function": "poll",
                                   "options": {"total": 60, "poison": list(range(5, 55))}}},
            "steps": [{"name": "work", "component": "python", "config": {"source": TWO_KINDS, "function": "work"}},
                      {"name": "out", "component": "log", "config": {"level": "debug"}}]}
    p = tmp_path / "flow.yaml"
    p.write_text(yaml.safe_dump(flow, sort_keys=False))
    env = {**os.environ, "COLUMNS": "250"}
    r = subprocess.run([FLOWNB, "run", str(p), "--state-dir", str(tmp_path / "state"), "--until-idle"],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 1, r.stderr
    warned = re.findall(r"WARNING .*step '(\w+)': message \w+ dead-lettered after attempt \d+: (\w+):", r.stderr)
    assert sorted(warned) == [("work", "KeyError"), ("work", "ValueError")], r.stderr
    assert r.stderr.count("WARNING") == 2, r.stderr
    summary = [line for line in r.stdout.splitlines() if line.startswith("dead-lettered step")]
    assert sorted(summary) == ["dead-lettered step 'work': 25 × KeyError: 'no field for 5'",
                               "dead-lettered step 'work': 25 × ValueError: cannot handle 6"], r.stdout
    assert "50 dead letter(s) stored" in r.stdout
    # the other 48 were logged at DEBUG: -v shows every one
    r = subprocess.run([FLOWNB, "-v", "run", str(p), "--state-dir", str(tmp_path / "state2"), "--until-idle"],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 1
    levels = re.findall(r"(WARNING|DEBUG) \S+: step 'work': message \w+ dead-lettered after", r.stderr)
    assert sorted(levels) == ["DEBUG"] * 48 + ["WARNING"] * 2
