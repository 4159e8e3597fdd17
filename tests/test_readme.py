"""The README's examples, run as a reader would run them. Every fenced block of README.md is covered
(:data:`BLOCKS`; a new block fails until it is): each command line runs here as written, or with a
named local stand-in (a free port for 8080, an HttpTarget for the CRM, the example flow's own files);
a line that needs Docker or a running RabbitMQ is parsed by the real ``flownb`` parser and names the
test that runs it. A README command renamed or broken fails here."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from flownb.testing import HttpTarget
from tests.processes import free_port as _free_port
from tests.processes import stop

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
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


# -- every fenced block ------------------------------------------------------------------------------

#: (section, language) of every fenced block of README.md → the test that runs it
BLOCKS = {
    ("Two commands on a fresh machine", "bash"): "tests/test_readme.py::test_the_two_commands_exist_and_are_run",
    ("A flow", "yaml"): "tests/test_readme.py::test_the_flow_of_the_readme_runs_as_written",
    ("A flow", "bash"): "tests/test_readme.py::test_the_commands_under_the_flow_run_as_written",
    ("When production fails: fix it in the notebook", "python"):
        "tests/runtime/test_workbench_local.py::test_the_readme_loop_runs_as_written",
    ("Notebook → containers → schedules", "bash"):
        "tests/test_readme.py::test_the_notebook_to_containers_commands_run_as_written",
}


def _fenced() -> list[tuple[str, str, str]]:
    """(section, language, text) of every fenced block, in order."""
    out, section = [], ""
    for m in re.finditer(r"^## ([^\n]+)$|^```(\w*)\n(.*?)^```", README.read_text(), re.S | re.M):
        if m.group(1) is not None:
            section = m.group(1).strip()
        else:
            out.append((section, m.group(2), m.group(3)))
    return out


def _commands(section: str) -> list[str]:
    """The commands of the section's bash block: comments dropped, ``a && b`` split."""
    (text,) = [t for s, lang, t in _fenced() if s == section and lang == "bash"]
    cmds = []
    for line in text.splitlines():
        line = re.sub(r"\s+#.*$", "", line).strip()
        cmds += [c.strip() for c in line.split("&&") if c.strip()]
    return cmds


def _named_test_exists(ref: str) -> None:
    path, _, name = ref.partition("::")
    assert (ROOT / path).is_file() and re.search(rf"^def {re.escape(name)}\(", (ROOT / path).read_text(), re.M), \
        f"{ref} does not exist"


def _parses(cmd: str) -> None:
    """The command as the real ``flownb`` parser reads it (argparse exits 2 on an unknown command or flag)."""
    from flownb.cli import build_parser
    argv = shlex.split(cmd)
    assert argv[0] == "flownb", cmd
    try:
        args = build_parser().parse_args(argv[1:])
    except SystemExit as exc:
        pytest.fail(f"README command {cmd!r} does not parse (exit {exc.code})")
    assert callable(getattr(args, "handler", None)), cmd


def test_every_fenced_block_of_the_readme_is_covered():
    found = [(s, lang) for s, lang, _t in _fenced()]
    assert len(found) == len(set(found)), f"two blocks of one language in one section: {found}"
    assert set(found) == set(BLOCKS), f"README blocks not covered by a test: {set(found) - set(BLOCKS)}; " \
                                      f"covered blocks gone: {set(BLOCKS) - set(found)}"
    for ref in BLOCKS.values():
        _named_test_exists(ref)


def test_the_two_commands_exist_and_are_run():
    assert _commands("Two commands on a fresh machine") == ["scripts/example", "scripts/test"]
    for script in ("scripts/example", "scripts/test"):
        assert os.access(ROOT / script, os.X_OK), f"{script} is not an executable file"
    # scripts/example is run by this test; scripts/test is the suite itself, run by CI's .ci/run
    _named_test_exists("tests/test_cli.py::test_scripts_example_says_what_it_read_kept_and_where_the_result_is")
    assert "scripts/test" in (ROOT / ".ci" / "run").read_text()




def _until(cond, what: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert proc.poll() is None, f"the command ended ({proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} within {timeout:.0f} s"
        time.sleep(0.1)


def _stop(proc: subprocess.Popen, log: Path) -> str:
    code = stop(proc)
    out = log.read_text()
    assert code == 0, out[-3000:]
    return out


def _shop(path: Path, rows: list[tuple]) -> None:
    with sqlite3.connect(path) as db:
        db.execute("create table if not exists orders (id integer primary key, customer_email text, "
                   "qty integer, price real, updated_at text)")
        db.executemany("insert into orders values (?, ?, ?, ?, ?)", rows)


def test_the_commands_under_the_flow_run_as_written(tmp_path):
    """The block after the flow's spec, line by line, in a folder holding that spec and its shop.db."""
    cmds = _commands("A flow")
    flownb_lines = {c.split("#")[0].strip() for c in cmds}
    assert flownb_lines == {
        "flownb validate flow.yaml",
        "flownb run flow.yaml -p crm_url http://crm:8080",
        "flownb run flow.yaml --until-idle",
        "flownb dlq list flow.yaml",
        "flownb plan old.yaml flow.yaml --state-dir .flownb",
        "flownb upgrade old.yaml flow.yaml --state-dir .flownb --rename slow=enrich",
        "flownb components",
        "flownb worker flow.yaml --step push",
    }, "a README command changed: cover it here"
    for c in cmds:
        _parses(c)
    spec_text = _block("A flow", "yaml")
    (tmp_path / "flow.yaml").write_text(spec_text)
    _shop(tmp_path / "shop.db", [(1, "Ada@Example.com", 3, 40.0, "2024-05-01T10:00:00"),
                                 (2, "grace@navy.mil", 1, 19.99, "2024-05-01T10:01:00")])
    env = {"CRM_TOKEN": "t0ken-for-the-readme"}

    def run(cmd: str, *, cwd: Path = tmp_path, **subst: str) -> subprocess.CompletedProcess:
        for old, new in subst.items():
            assert old in cmd, (old, cmd)
            cmd = cmd.replace(old, new)
        return _cli(*shlex.split(cmd)[1:], cwd=cwd, **env)

    r = run("flownb validate flow.yaml")
    assert r.returncode == 0 and "ok flow 'orders-to-crm'" in r.stdout, r.stdout + r.stderr
    with HttpTarget() as crm:
        # stand-in: the CRM at http://crm:8080 is an HttpTarget; the flow runs until it is stopped
        cmd = "flownb run flow.yaml -p crm_url http://crm:8080".replace("http://crm:8080", crm.url)
        log = tmp_path / "run.log"
        with log.open("wb") as out:
            proc = subprocess.Popen([FLOWNB, *shlex.split(cmd)[1:]], cwd=tmp_path, stdout=out,
                                    stderr=subprocess.STDOUT, env={**os.environ, "COLUMNS": "200", **env})
        try:
            _until(lambda: len(crm.received) >= 1, "the big order at the CRM", proc)
        finally:
            _stop(proc, log)
        assert [x.json["id"] for x in crm.received] == [1]  # 2 is filtered (19.99)
        _shop(tmp_path / "shop.db", [(3, "ALAN@turing.org", 2, 75.5, "2024-05-01T10:02:00")])
        # stand-in: the same CRM for the parameter's default (http://localhost:8080)
        r = run("flownb run flow.yaml --until-idle", **{"--until-idle": f"--until-idle -p crm_url {crm.url}"})
        assert r.returncode == 0, r.stdout + r.stderr
        assert [x.json["id"] for x in crm.received] == [1, 3]  # the run went on from the saved cursor
    r = run("flownb dlq list flow.yaml")
    assert r.returncode == 0 and "0 dead letter(s)" in r.stdout, r.stdout + r.stderr
    r = run("flownb components")
    assert r.returncode == 0 and "sql.poll" in r.stdout and "http.request" in r.stdout
    # plan / upgrade: stand-ins where the step 'slow' of old.yaml is 'enrich' in flow.yaml
    up = tmp_path / "upgrade"
    up.mkdir()
    spec = yaml.safe_load(spec_text)
    for name, step in (("old.yaml", "slow"), ("flow.yaml", "enrich")):
        spec["steps"][1]["name"] = step
        (up / name).write_text(yaml.safe_dump(spec, sort_keys=False))
    _shop(up / "shop.db", [(1, "Ada@Example.com", 3, 40.0, "2024-05-01T10:00:00")])
    with HttpTarget() as crm:
        assert _cli("run", "old.yaml", "--until-idle", "-p", "crm_url", crm.url, cwd=up, **env).returncode == 0
    r = run("flownb plan old.yaml flow.yaml --state-dir .flownb", cwd=up)
    assert r.returncode == 1 and "confirm with --rename slow=enrich" in r.stdout, r.stdout + r.stderr
    r = run("flownb upgrade old.yaml flow.yaml --state-dir .flownb --rename slow=enrich", cwd=up)
    assert r.returncode == 0 and "from 'slow' to 'enrich'" in r.stdout, r.stdout + r.stderr
    # needs RabbitMQ: parsed above; run by real worker processes in
    _named_test_exists("tests/runtime/amqp/test_cursor_amqp.py::"
                       "test_backfill_while_the_workers_run_reaches_the_sink_and_leaves_the_live_cursor")


def test_the_notebook_to_containers_commands_run_as_written(tmp_path):
    cmds = _commands("Notebook → containers → schedules")
    assert cmds == [
        "jupyter lab notebooks/",
        "flownb export notebooks/03-export-and-deploy.ipynb -p crm_url https://crm.example.com -o build/crm",
        "flownb deploy build/crm", "flownb status build/crm", "flownb down build/crm",
        "flownb run hooks.yaml --port 8080",
        'flownb schedule add report.ipynb --name nightly --cron "0 3 * * *" -p limit 500',
        "flownb schedule serve",
    ], "a README command changed: cover it here"
    for c in cmds[1:]:
        _parses(c)
    # jupyter lab: installed, on the notebooks the comment lists; the browser test starts it on a copy
    assert Path(sys.executable).with_name("jupyter-lab").exists()
    comment = [line for line in _block_lines("Notebook → containers → schedules") if "jupyter lab" in line][0]
    for nb in ("01", "02", "03", "04"):
        assert nb in comment and list((ROOT / "notebooks").glob(f"{nb}-*.ipynb")), nb
    _named_test_exists("tests/notebook/test_browser.py::test_mapping_editor_preview_follows_typing")
    # export: as written, on a copy of notebooks/ (papermill runs 03 with the parameter)
    shutil.copytree(ROOT / "notebooks", tmp_path / "notebooks", ignore=shutil.ignore_patterns("build", ".ipynb_*"))
    r = _cli(*shlex.split(cmds[1])[1:], cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    exported = yaml.safe_load((tmp_path / "build" / "crm" / "flow.yaml").read_text())
    assert exported["parameters"]["crm_url"] == "https://crm.example.com"
    # deploy / status / down: Docker; parsed above, on the folder export wrote; run in
    _named_test_exists("tests/deploy/test_cli_docker.py::"
                       "test_deploy_without_broker_url_starts_its_own_broker_then_no_build_keep_broker_and_volumes")
    # run hooks.yaml: stand-ins: a webhook flow in hooks.yaml, a free port for 8080
    token = "readme-hook-token-0123456789"
    (tmp_path / "hooks.yaml").write_text(yaml.safe_dump({
        "flownb": 1, "name": "hooks", "trigger": {"name": "in", "component": "webhook",
                                                  "config": {"token_env": "HOOK_TOKEN"}},
        "steps": [{"name": "say", "component": "log", "config": {"level": "info"}}]}))
    port = _free_port()
    log = tmp_path / "hooks.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([FLOWNB, *shlex.split(cmds[5].replace("8080", str(port)))[1:]], cwd=tmp_path,
                                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "HOOK_TOKEN": token})

    def up() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False
    try:
        _until(up, "the webhook server", proc)
        r2 = httpx.post(f"http://127.0.0.1:{port}/hooks/hooks/{token}", json={"order": 7}, timeout=10)
        assert r2.status_code in (200, 202), r2.text
        _until(lambda: 'flownb.hooks.say: {"order":7' in log.read_text(), "the body logged by the step", proc)
    finally:
        _stop(proc, log)
    # schedule add: as written, with a stand-in report.ipynb whose parameters cell has 'limit'
    import nbformat
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    cell = nbformat.v4.new_code_cell("limit = 100")
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell, nbformat.v4.new_code_cell("print(limit)")]
    nbformat.write(nb, str(tmp_path / "report.ipynb"))
    r = _cli(*shlex.split(cmds[6])[1:], cwd=tmp_path)
    assert r.returncode == 0 and "added schedule 'nightly'" in r.stdout, r.stdout + r.stderr
    # schedule serve runs until stopped: parsed above; run (a due schedule, then SIGTERM) in
    _named_test_exists("tests/schedule/test_cli.py::test_serve_runs_due_schedules_and_stops_on_sigterm")


def _block_lines(section: str) -> list[str]:
    (text,) = [t for s, lang, t in _fenced() if s == section and lang == "bash"]
    return text.splitlines()
