"""jupyter_flownb inside a real Jupyter server (subprocess, 127.0.0.1, token, free port)."""

from __future__ import annotations

import csv
import dataclasses
import json
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

import flownb
from flownb.runtime.local import LocalRuntime

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_extension_is_enabled_by_its_installed_config_file(jupyter_flownb_installed):
    out = subprocess.run(
        [sys.executable, "-m", "jupyter", "server", "extension", "list"],
        capture_output=True,
        text=True,
        check=True,
    )
    text = out.stdout + out.stderr
    assert "jupyter_flownb" in text and "enabled" in text.split("jupyter_flownb", 1)[1][:40]


def _flow(tmp_path):
    name = f"hook-{uuid.uuid4().hex[:8]}"
    return flownb.Flow.model_validate(
        {
            "name": name,
            "trigger": {"name": "incoming", "component": "webhook", "config": {"token_env": "NB_HOOK_TOKEN"}},
            "steps": [
                {
                    "name": "save",
                    "component": "csv.write",
                    "config": {"path": str(tmp_path / "out.csv"), "columns": ["order", "total"]},
                }
            ],
        }
    )


def _play_kernel(jupyter, monkeypatch) -> str:
    """This test process plays the kernel: the server's runtime dir (so the same hook registry) and
    the flow's token in its environment (the server never had it); returns the token."""
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(jupyter.runtime))
    monkeypatch.delenv("FLOWNB_JUPYTER_REGISTRY", raising=False)
    token = uuid.uuid4().hex
    monkeypatch.setenv("NB_HOOK_TOKEN", token)
    return token


def test_a_real_http_call_reaches_the_flow_the_kernel_is_testing(jupyter, tmp_path, monkeypatch):
    from jupyter_flownb import serve_in_jupyter, served_flows, stop_serving

    token = _play_kernel(jupyter, monkeypatch)
    flow = _flow(tmp_path)
    state = tmp_path / "state"
    hook = serve_in_jupyter(flow, state, max_body=2000)
    assert hook.path == f"/flownb/hooks/{flow.name}/{token}"
    assert [r.flow for r in served_flows()] == [flow.name]

    # the kernel runs the same flow on the same state directory (holding its runtime lock) while a
    # real HTTP call comes in; the request is committed to the queue and the kernel's runtime processes it
    rt = LocalRuntime(flow, state)
    stop = threading.Event()
    kernel = threading.Thread(target=rt.run, kwargs={"stop_event": stop})
    kernel.start()
    try:
        c = jupyter.client
        r = c.post(hook.path, json={"order": 17, "total": 99.5}, headers={"Authorization": ""})
        assert r.status_code == 202, r.text
        assert len(r.json()["id"]) >= 32
        r = c.post(
            hook.path,
            content="order=18&total=5",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert r.status_code == 202, r.text

        assert c.post(f"/flownb/hooks/{flow.name}/{'x' * 32}", json={}).status_code == 403
        assert c.post(f"/flownb/hooks/nope-{flow.name}/{token}", json={}).status_code == 404
        assert (
            c.post(hook.path, content=b"x" * 3000, headers={"Content-Type": "text/plain"}).status_code == 413
        )
        assert (
            c.post(hook.path, content=b"{bad", headers={"Content-Type": "application/json"}).status_code
            == 400
        )
        listed = c.get("/flownb/api/hooks").json()["hooks"]
        assert [h["flow"] for h in listed] == [flow.name] and token not in json.dumps(listed)

        out = tmp_path / "out.csv"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 3):
            time.sleep(0.1)
        with open(out) as fh:
            rows = list(csv.DictReader(fh))
        assert rows == [{"order": "17", "total": "99.5"}, {"order": "18", "total": "5"}]
    finally:
        stop.set()
        kernel.join(30)
        rt.close()

    assert stop_serving(flow.name)
    assert c.post(hook.path, json={"order": 1}).status_code == 404


def _wait_run(c, run_id, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = c.get(f"/flownb/api/runs/{run_id}").json()
        if run["status"] not in ("queued", "running"):
            return run
        time.sleep(0.2)
    pytest.fail(f"run {run_id} did not finish")


def test_schedules_api(jupyter):
    c = jupyter.client
    name = f"s-{uuid.uuid4().hex[:8]}"
    r = c.post(
        "/flownb/api/schedules",
        json={"notebook": "params.ipynb", "cron": "0 3 * * *", "name": name, "parameters": {"nn": 1}},
    )
    assert (
        r.status_code == 400
        and "did you mean 'n'" in r.json()["error"]
        and "rate (float)" in r.json()["error"]
    )
    r = c.post(
        "/flownb/api/schedules", json={"notebook": "../outside.ipynb", "cron": "0 3 * * *", "name": name}
    )
    assert r.status_code == 400 and "outside" in r.json()["error"]
    r = c.post(
        "/flownb/api/schedules",
        json={
            "notebook": "params.ipynb",
            "cron": "0 3 * * *",
            "name": name,
            "tz": "Europe/Berlin",
            "parameters": {"n": "4", "fail": True},
        },
    )
    assert r.status_code == 201, r.text
    assert r.json()["parameters"] == {"n": 4, "fail": True} and r.json()["next_run"] > time.time()
    assert name in [s["name"] for s in c.get("/flownb/api/schedules").json()["schedules"]]

    r = c.post(f"/flownb/api/schedules/{name}/run")
    assert r.status_code == 202 and r.json()["run"]["status"] == "running"
    run = _wait_run(c, r.json()["run"]["id"])
    assert (run["status"], run["error_name"], run["error_value"]) == ("failed", "ValueError", "bad n=4")
    assert run["output_exists"] and run["duration"] > 0 and run["error_cell"] == 5
    # 5: the raising cell of the saved output notebook (papermill's banner and injected cells come first)
    assert "raise ValueError" in "".join(json.loads(Path(run["output"]).read_text())["cells"][5]["source"])
    [h] = c.get(f"/flownb/api/schedules/{name}/history").json()["runs"]
    assert h["id"] == run["id"]
    assert c.get(f"/flownb/api/schedules/{name}").json()["last_run"]["status"] == "failed"

    assert c.delete(f"/flownb/api/schedules/{name}").status_code == 204
    r = c.get(f"/flownb/api/schedules/{name}")
    assert r.status_code == 404 and "no schedule named" in r.json()["error"]


def test_run_now_while_running_is_skipped(jupyter):
    c = jupyter.client
    name = f"slow-{uuid.uuid4().hex[:8]}"
    assert (
        c.post(
            "/flownb/api/schedules",
            json={"notebook": "slow.ipynb", "cron": "0 3 * * *", "name": name, "parameters": {"seconds": 3}},
        ).status_code
        == 201
    )
    first = c.post(f"/flownb/api/schedules/{name}/run")
    second = c.post(f"/flownb/api/schedules/{name}/run")
    assert first.status_code == 202 and second.status_code == 409
    assert second.json()["run"]["status"] == "skipped"
    assert _wait_run(c, first.json()["run"]["id"])["status"] == "ok"


def test_api_needs_the_server_token(jupyter):
    import httpx

    r = httpx.get(f"{jupyter.url}/flownb/api/schedules")
    assert r.status_code == 403
    r = httpx.post(f"{jupyter.url}/flownb/api/schedules", json={})
    assert r.status_code == 403


def test_scheduler_inside_the_server(tmp_path, jupyter_flownb_installed):
    import shutil

    from .conftest import REPO, JupyterServer

    root, runtime = tmp_path / "root", tmp_path / "runtime"
    root.mkdir()
    runtime.mkdir()
    shutil.copy(REPO / "tests" / "schedule" / "data" / "params.ipynb", root / "params.ipynb")
    server = JupyterServer(
        root,
        runtime,
        [
            "--FlownbExtension.run_scheduler=True",
            "--FlownbExtension.scheduler_interval=0.2",
            "--FlownbExtension.state_dir=sched-state",
        ],
    )
    try:
        c = server.client
        r = c.post(
            "/flownb/api/schedules",
            json={
                "notebook": "params.ipynb",
                "cron": "* * * * * */2",
                "name": "often",
                "parameters": {"n": 3},
            },
        )
        assert r.status_code == 201, r.text
        deadline = time.monotonic() + 60
        runs: list = []
        while time.monotonic() < deadline:
            runs = c.get("/flownb/api/schedules/often/history").json()["runs"]
            if any(run["status"] == "ok" for run in runs):
                break
            time.sleep(0.3)
        ok = [run for run in runs if run["status"] == "ok"]
        assert ok and ok[0]["trigger"] == "cron" and ok[0]["planned_for"] % 2 == 0
        assert ok[0]["output"].startswith(str(root / "sched-state" / "runs" / "often"))
    finally:
        server.stop()


def test_a_flow_with_hmac_secret_refuses_unsigned_requests(jupyter, tmp_path, monkeypatch):
    """The bug: the extension queued unsigned requests (202) for a flow whose trigger requires an HMAC
    signature, where ``flownb run --port`` answers 401. The hook must apply the flow's own checks."""
    from jupyter_flownb import serve_in_jupyter, stop_serving

    from flownb.message import Message
    from flownb.runtime.local import QueueStore
    from flownb.webhook import sign

    _token, secret = _play_kernel(jupyter, monkeypatch), uuid.uuid4().hex
    # the server was started before these were set: only the kernel (this process) has them
    monkeypatch.setenv("NB_HOOK_SECRET", secret)
    name = f"signed-{uuid.uuid4().hex[:8]}"
    flow = flownb.Flow.model_validate(
        {
            "name": name,
            "trigger": {
                "name": "incoming",
                "component": "webhook",
                "config": {"token_env": "NB_HOOK_TOKEN", "hmac_secret_env": "NB_HOOK_SECRET"},
            },
            "steps": [{"name": "keep", "component": "log", "config": {"level": "debug"}}],
        }
    )
    state = tmp_path / "state"
    hook = serve_in_jupyter(flow, state)
    c = jupyter.client
    try:
        body = b'{"order": 1}'
        r = c.post(hook.path, content=body, headers={"Content-Type": "application/json", "Authorization": ""})
        assert r.status_code == 401, r.text
        assert r.json()["status"] == 401 and "X-Flownb-Signature" in r.json()["error"]
        signed = {"Content-Type": "application/json", "X-Flownb-Signature": sign(secret, body)}
        r = c.post(hook.path, content=body, headers={**signed, "Authorization": ""})
        assert r.status_code == 202, r.text
        store = QueueStore(state / f"{name}.db")
        try:
            rows = store.claim("keep", float("inf"), 100)
        finally:
            store.close()
        assert [Message.from_json(row[2]).id for row in rows] == [r.json()["id"]]
        # the secret travels in the 0600 registration only: never listed, never in a repr
        listed = c.get("/flownb/api/hooks").json()["hooks"]
        assert [h["signed"] for h in listed if h["flow"] == name] == [True]
        assert secret not in json.dumps(listed) and secret not in repr(hook)
    finally:
        stop_serving(flow.name)


def _signed_flow(name: str) -> flownb.Flow:
    return flownb.Flow.model_validate(
        {
            "name": name,
            "trigger": {
                "name": "incoming",
                "component": "webhook",
                "config": {"token_env": "NB_HOOK_TOKEN", "hmac_secret_env": "NB_HOOK_SECRET_UNSET"},
            },
            "steps": [{"name": "keep", "component": "log", "config": {"level": "debug"}}],
        }
    )


def test_a_kernel_without_the_secret_cannot_register_a_signed_flow(
    tmp_path, monkeypatch, jupyter_flownb_installed
):
    from jupyter_flownb import serve_in_jupyter, served_flows

    from flownb.errors import ConfigError

    monkeypatch.setenv("NB_HOOK_TOKEN", uuid.uuid4().hex)
    monkeypatch.delenv("NB_HOOK_SECRET_UNSET", raising=False)
    with pytest.raises(ConfigError, match="NB_HOOK_SECRET_UNSET"):
        serve_in_jupyter(
            _signed_flow(f"s-{uuid.uuid4().hex[:8]}"), tmp_path / "state", registry=tmp_path / "reg"
        )
    assert served_flows(tmp_path / "reg") == []


def test_a_registration_without_the_secret_is_refused_not_served_unsigned(jupyter, tmp_path):
    """A registration file written before secrets were registered (or by hand): the server does not
    have the secret either, so it answers 500 and queues nothing, rather than accept unsigned requests."""
    from jupyter_flownb import registry as reg_mod

    name = f"old-{uuid.uuid4().hex[:8]}"
    token = uuid.uuid4().hex
    reg = reg_mod.HookRegistration(
        flow=name, spec=_signed_flow(name).to_yaml(), state_dir=str(tmp_path / "state"), token=token
    )
    folder = jupyter.runtime / "flownb-hooks"
    folder.mkdir(exist_ok=True)
    data = {k: v for k, v in dataclasses.asdict(reg).items() if k != "secret"}
    (folder / f"{name}.json").write_text(json.dumps(data))
    try:
        r = jupyter.client.post(f"/flownb/hooks/{name}/{token}", json={"a": 1}, headers={"Authorization": ""})
        assert r.status_code == 500, r.text
        assert "serve_in_jupyter" in r.json()["error"] and r.json()["status"] == 500
        assert not (tmp_path / "state" / f"{name}.db").exists()
    finally:
        (folder / f"{name}.json").unlink()


@pytest.mark.parametrize(
    "body,field",
    [
        ({"parameters": [1]}, "parameters"),
        ({"parameters": "n=1"}, "parameters"),
        ({"parameters": {"n": [1]}}, "n"),
        ({"cron": 5}, "cron"),
        ({"name": ["x"]}, "name"),
        ({"tz": {}}, "tz"),
        ({"timeout": "soon"}, "timeout"),
        ({"timeout": True}, "timeout"),
        ({"keep": 1.5}, "keep"),
        ({"keep": 10**30}, "keep"),
        ({"allow_overlap": "yes"}, "allow_overlap"),
        ({"replace": 1}, "replace"),
        ({"notebook": ["params.ipynb"]}, "notebook"),
    ],
)
def test_schedules_api_wrong_field_type_is_400_naming_it(jupyter, body, field):
    """The bug: a field of the wrong JSON type (``"parameters": [1]``) was a 500."""
    data = {"notebook": "params.ipynb", "cron": "0 3 * * *", "name": f"t-{uuid.uuid4().hex[:8]}", **body}
    r = jupyter.client.post("/flownb/api/schedules", json=data)
    assert r.status_code == 400, r.text
    assert f"'{field}'" in r.json()["error"], r.json()


@pytest.mark.parametrize("limit", ["abc", "-1", "0", "1.5", "99999999999999999999999", "10001", ""])
def test_history_limit_that_is_not_a_count_is_400(jupyter, limit):
    c = jupyter.client
    name = f"h-{uuid.uuid4().hex[:8]}"
    r = c.post("/flownb/api/schedules", json={"notebook": "params.ipynb", "cron": "0 3 * * *", "name": name})
    assert r.status_code == 201, r.text
    try:
        r = c.get(f"/flownb/api/schedules/{name}/history", params={"limit": limit})
        assert r.status_code == 400, r.text
        assert "'limit'" in r.json()["error"]
        assert c.get(f"/flownb/api/schedules/{name}/history", params={"limit": "5"}).status_code == 200
    finally:
        c.delete(f"/flownb/api/schedules/{name}")


def test_a_huge_run_id_is_400_and_an_unknown_one_404(jupyter):
    c = jupyter.client
    r = c.get("/flownb/api/runs/" + "9" * 40)
    assert r.status_code == 400, r.text
    assert "'run id'" in r.json()["error"]
    r = c.get(f"/flownb/api/runs/{2**63}")
    assert r.status_code == 400, r.text
    r = c.get(f"/flownb/api/runs/{2**63 - 1}")
    assert r.status_code == 404, r.text


def test_hook_tokens_never_reach_the_server_log(jupyter, tmp_path, monkeypatch):
    """The bug: the access log of a non-2xx hook request showed the URL with its token."""
    from jupyter_flownb import serve_in_jupyter, stop_serving

    token = _play_kernel(jupyter, monkeypatch)
    flow = _flow(tmp_path)
    hook = serve_in_jupyter(flow, tmp_path / "state", max_body=1000)
    wrong = uuid.uuid4().hex
    c = jupyter.client
    no_auth = {"Authorization": ""}
    try:
        answers = [
            c.post(hook.path, content=b"{not json", headers={**no_auth, "Content-Type": "application/json"}),
            c.post(hook.path, content=b"x" * 2000, headers={**no_auth, "Content-Type": "text/plain"}),
            c.get(hook.path, headers=no_auth),
            c.post(f"/flownb/hooks/{flow.name}/{wrong}", content=b"{}", headers=no_auth),
            c.post(f"/flownb/hooks/no-such-flow/{token}?x=1", content=b"{}", headers=no_auth),
            c.post(f"/flownb/hooks/{flow.name}/{token}/extra", content=b"{}", headers=no_auth),
            c.post(hook.path, json={"order": 1, "total": 2}, headers=no_auth),
        ]
        assert [r.status_code for r in answers] == [400, 413, 405, 403, 404, 404, 202]
    finally:
        stop_serving(flow.name)
    time.sleep(0.5)
    jupyter.log.flush()
    with open(jupyter.log.name) as f:
        text = f.read()
    assert token not in text and wrong not in text
    assert f"/flownb/hooks/{flow.name}/***" in text  # the requests are logged, without their token
