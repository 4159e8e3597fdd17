"""An unset secret stops `run`, `worker` and `validate --env` before anything is consumed: exit 2
naming the step, field and variable; `validate` lists what a flow reads."""

from __future__ import annotations

import os
import subprocess
import sys

import flownb
from flownb.cli import main
from flownb.secrets import missing_env, required_env


def _flow(tmp_path) -> flownb.Flow:
    return flownb.Flow(
        name="needs-secrets",
        trigger=flownb.step("src", "python.poll", source="def p(s, c):\n    return [{'a': 1}]\n", function="p"),
        steps=[flownb.step("m", "mapping", fields={"a": "a"}),
               flownb.step("push", "http.request", method="POST", url="http://127.0.0.1:9/x",
                           token_env="FLOWNB_TEST_CRM_TOKEN"),
               flownb.step("db", "sql.upsert", url="sqlite:///" + str(tmp_path / "x.db"), table="t", key=["a"],
                           create=True)])


def test_required_env_names_step_and_field(tmp_path):
    env = required_env(_flow(tmp_path))
    assert [(v.step, v.field, v.name) for v in env] == [("push", "token_env", "FLOWNB_TEST_CRM_TOKEN")]
    assert missing_env(_flow(tmp_path), environ={"FLOWNB_TEST_CRM_TOKEN": "x"}) == []


def test_validate_lists_the_variables_and_env_checks_them(tmp_path, capsys, monkeypatch):
    spec = _flow(tmp_path).save(tmp_path / "flow.yaml")
    monkeypatch.delenv("FLOWNB_TEST_CRM_TOKEN", raising=False)
    assert main(["validate", str(spec)]) == 0
    out = capsys.readouterr().out
    assert "FLOWNB_TEST_CRM_TOKEN" in out and "step 'push'" in out
    assert main(["validate", str(spec), "--env"]) == 2
    err = capsys.readouterr().err
    assert "step 'push', field 'token_env': environment variable 'FLOWNB_TEST_CRM_TOKEN' is not set" in err
    monkeypatch.setenv("FLOWNB_TEST_CRM_TOKEN", "t")
    assert main(["validate", str(spec), "--env"]) == 0
    assert "(all set)" in capsys.readouterr().out


def test_run_exits_2_before_polling_when_a_secret_is_unset(tmp_path):
    spec = _flow(tmp_path).save(tmp_path / "flow.yaml")
    env = {k: v for k, v in os.environ.items() if k != "FLOWNB_TEST_CRM_TOKEN"}
    out = subprocess.run([sys.executable, "-m", "flownb.cli", "run", str(spec), "--state-dir",
                          str(tmp_path / "state"), "--until-idle"], capture_output=True, text=True,
                         timeout=60, env=env)
    assert out.returncode == 2, out.stderr
    assert "FLOWNB_TEST_CRM_TOKEN" in out.stderr and "step 'push'" in out.stderr
    assert not (tmp_path / "state" / "needs-secrets.db").exists()  # nothing polled, nothing queued


def test_worker_exits_2_before_consuming_when_its_secret_is_unset(tmp_path):
    spec = _flow(tmp_path).save(tmp_path / "flow.yaml")
    env = {k: v for k, v in os.environ.items() if k != "FLOWNB_TEST_CRM_TOKEN"}
    env["FLOWNB_BROKER_URL"] = "amqp://guest:guest@127.0.0.1:5672/"
    out = subprocess.run([sys.executable, "-m", "flownb.cli", "worker", str(spec), "--step", "push"],
                         capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 2, out.stderr
    assert "step 'push', field 'token_env'" in out.stderr
