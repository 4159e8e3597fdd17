"""End to end on the real Docker engine: export a notebook with parameters, deploy one container per
step against the machine's RabbitMQ (a throw-away vhost) and PostgreSQL, push 2,000 orders through
the polling trigger, SIGKILL the mapping step's container mid-run: its restart policy brings it back
and all 2,000 rows reach the sink, none lost; `flownb status` shows the restart and the queues."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid

import pytest

from flownb.cli import main
from flownb.deploy import DEBIAN_BASE_IMAGE, down, ensure_base_image, status

from .conftest import DATA

PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
TOTAL = 2000


def _ctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture
def vhost_url():
    import pika
    try:
        pika.BlockingConnection(pika.URLParameters("amqp://guest:guest@127.0.0.1:5672/")).close()
    except pika.exceptions.AMQPError as exc:
        pytest.skip(f"RabbitMQ is not running on 127.0.0.1:5672: {exc}")
    vhost = f"flownb-deploy-{uuid.uuid4().hex[:10]}"
    _ctl("add_vhost", vhost)
    _ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    yield f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    _ctl("delete_vhost", vhost)


@pytest.fixture
def tables():
    import sqlalchemy as sa
    try:
        engine = sa.create_engine(PG)
        engine.connect().close()
    except sa.exc.OperationalError as exc:
        pytest.skip(f"PostgreSQL is not running on 127.0.0.1:5432: {exc}")
    uid = uuid.uuid4().hex[:8]
    src, dst = f"e2e_src_{uid}", f"e2e_dst_{uid}"
    with engine.begin() as c:
        c.execute(sa.text(f"CREATE TABLE {src} (id integer PRIMARY KEY, customer text, qty integer, "
                          f"price_cents integer)"))
        c.execute(sa.text(f"CREATE TABLE {dst} (id integer PRIMARY KEY, total integer, label text)"))
    yield engine, src, dst
    with engine.begin() as c:
        c.execute(sa.text(f"DROP TABLE IF EXISTS {src}"))
        c.execute(sa.text(f"DROP TABLE IF EXISTS {dst}"))
    engine.dispose()


def _insert(engine, table: str, lo: int, hi: int) -> None:
    import sqlalchemy as sa
    with engine.begin() as c:
        c.execute(sa.text(f"INSERT INTO {table} (id, customer, qty, price_cents) VALUES (:i, :c, :q, :p)"),
                  [{"i": i, "c": f"cust{i % 7}", "q": i % 5 + 1, "p": 100 + i} for i in range(lo, hi)])


def _count(engine, table: str) -> int:
    import sqlalchemy as sa
    with engine.connect() as c:
        return c.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()


def _wait(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def _crash(container) -> None:
    """SIGKILL the container's processes from the host, as the kernel's OOM killer or a crash would.
    (`docker kill` itself marks the container as stopped by hand on this engine (20.10), and a restart
    policy never restarts a container stopped by hand.)"""
    container.reload()
    pid = container.attrs["State"]["Pid"]
    assert pid > 0, "the container is not running"
    os.kill(pid, signal.SIGKILL)


def _teardown(client, name: str, out, **down_kw) -> list[str]:
    """``flownb down`` the deployment of flow ``name`` (printing its containers' last log lines, for
    a failure's report) and remove its image; the names of the removed containers."""
    import docker
    logs = {c.name: c.logs(tail=30).decode(errors="replace")
            for c in client.containers.list(all=True, filters={"label": f"flownb.flow={name}"})}
    removed = down(out, **down_kw)
    for n, text in logs.items():
        print(f"--- {n}\n{text}")
    try:
        client.images.remove(f"flownb-{name}:latest", force=True)
    except docker.errors.ImageNotFound:
        pass
    return removed


def _restarts(container) -> int:
    container.reload()
    return container.attrs["RestartCount"] if container.status == "running" else 0


@pytest.mark.integration
@pytest.mark.docker
@pytest.mark.rabbitmq
@pytest.mark.postgres
@pytest.mark.slow
def test_deploy_survives_a_killed_worker_and_loses_nothing(docker_engine, vhost_url, tables, tmp_path,
                                                           monkeypatch, capsys):
    import docker
    engine, src, dst = tables
    ensure_base_image(DEBIAN_BASE_IMAGE)
    monkeypatch.setenv("FLOWNB_E2E_DB", PG)
    monkeypatch.setenv("COLUMNS", "200")  # rich tables: whole container names on one line
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    out = tmp_path / "deploy"
    assert main(["export", str(DATA / "orders.ipynb"), "-p", "flow_name", name, "-p", "src_table", src,
                 "-p", "dst_table", dst, "-p", "db_env", "FLOWNB_E2E_DB", "-p", "interval", "0.5",
                 "-p", "batch_size", "100", "--target", "compose", "-o", str(out)]) == 0
    assert PG not in (out / "orders.executed.ipynb").read_text()
    client = docker.from_env()
    try:
        assert main(["deploy", str(out), "--broker-url", vhost_url,
                     "--base-image", DEBIAN_BASE_IMAGE]) == 0
        workers = client.containers.list(filters={"label": f"flownb.flow={name}"})
        assert sorted(c.labels["flownb.step"] for c in workers) == ["new-orders", "store", "to-row"]
        assert all(c.attrs["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped" for c in workers)

        _insert(engine, src, 1, 501)
        _wait(lambda: _count(engine, dst) > 0, 120, "the first rows to reach the sink")
        victim = client.containers.get(f"flownb-{name}-to-row-0")
        _crash(victim)  # SIGKILL mid-run: its unacked messages go back to the queue
        _insert(engine, src, 501, TOTAL + 1)  # the trigger keeps feeding while the step is down
        _wait(lambda: _restarts(victim) >= 1, 60, "the restart policy to bring the worker back")
        _wait(lambda: _count(engine, dst) == TOTAL, 240, f"all {TOTAL} rows in the sink")

        import sqlalchemy as sa
        with engine.connect() as c:
            rows = c.execute(sa.text(f"SELECT id, total, label FROM {dst} ORDER BY id")).all()
        assert [r.id for r in rows] == list(range(1, TOTAL + 1))
        assert all(r.total == (r.id % 5 + 1) * (100 + r.id) and r.label == f"CUST{r.id % 7}" for r in rows)

        victim.reload()
        assert victim.status == "running" and victim.attrs["RestartCount"] >= 1
        st = status(out)
        row = next(c for c in st["containers"] if c["step"] == "to-row")
        assert row["restarts"] >= 1 and row["state"] == "running"
        assert st["queues_error"] is None
        _wait(lambda: all(q["ready"] == 0 for q in status(out)["queues"].values()), 60, "empty queues")
        assert all(q["dead"] == 0 for q in status(out)["queues"].values())
        capsys.readouterr()
        assert main(["status", str(out), "--json"]) == 0
        shown = json.loads(capsys.readouterr().out)
        assert {c["step"] for c in shown["containers"]} == {"new-orders", "to-row", "store"}
        assert set(shown["queues"]) == {"to-row", "store"}
        assert main(["status", str(out)]) == 0
        table = capsys.readouterr().out
        assert f"flownb-{name}-to-row-0" in table and "running" in table
    finally:
        removed = _teardown(client, name, out)
    assert len(removed) == 3
    assert client.containers.list(all=True, filters={"label": f"flownb.flow={name}"}) == []


def test_a_missing_secret_stops_the_deploy_before_anything_starts(tmp_path, monkeypatch):
    from flownb import Flow, step
    from flownb.deploy import deploy
    from flownb.errors import DeployError
    monkeypatch.delenv("NOPE_TOKEN_X", raising=False)
    Flow(name="sec", trigger=step("hook", "webhook", token_env="NOPE_TOKEN_X"),
         steps=[step("out", "log")]).save(tmp_path / "flow.yaml")
    with pytest.raises(DeployError, match=r"NOPE_TOKEN_X are not set; export them or write them to .*secrets.env"):
        deploy(tmp_path, broker_url="amqp://guest:guest@127.0.0.1:5672/", build=False)


def test_secrets_env_file_is_read(tmp_path):
    from flownb.deploy.docker import read_env_file
    from flownb.errors import DeployError
    f = tmp_path / "secrets.env"
    f.write_text("# comment\n\nexport A=1\nB = 'two words'\nC=\"x=y\"\n")
    assert read_env_file(f) == {"A": "1", "B": "two words", "C": "x=y"}
    f.write_text("JUSTANAME\n")
    with pytest.raises(DeployError, match="secrets.env:1: expected NAME=value"):
        read_env_file(f)


@pytest.mark.integration
@pytest.mark.docker
@pytest.mark.rabbitmq
@pytest.mark.slow
def test_a_recording_flow_deploys_its_recorder_which_fills_a_file_on_its_own_volume(docker_engine, vhost_url,
                                                                                    tmp_path):
    """A flow with ``record:`` deployed with the Docker SDK: the ``recorder`` container drains the tap
    into /data/recorder.db on the named volume flownb-<flow>-recorder (the image's user can write
    it); ``down --volumes`` removes that volume too."""
    import docker

    from flownb import Flow, step
    from flownb.deploy import export
    ensure_base_image(DEBIAN_BASE_IMAGE)
    name = f"rec-{uuid.uuid4().hex[:8]}"
    out = tmp_path / "deploy"
    Flow(name=name, trigger=step("tick", "schedule", cron="* * * * * */2"), steps=[step("say", "log")],
         record={"sample": 1.0}).save(tmp_path / "flow.yaml")
    export(tmp_path / "flow.yaml", out, target="compose")
    client = docker.from_env()
    count = ("import sqlite3; print(sqlite3.connect('/data/recorder.db')"
             ".execute('select count(*) from recorder').fetchone()[0])")

    def recorded() -> int:
        rc, output = client.containers.get(f"flownb-{name}-recorder-0").exec_run(["python3", "-c", count])
        return int(output) if rc == 0 and output.strip().isdigit() else 0
    try:
        assert main(["deploy", str(out), "--broker-url", vhost_url, "--base-image", DEBIAN_BASE_IMAGE]) == 0
        workers = client.containers.list(filters={"label": f"flownb.flow={name}"})
        assert sorted(c.labels["flownb.step"] for c in workers) == ["recorder", "say", "tick"]
        _wait(lambda: recorded() >= 2, 120, "the recorder to write the path of a record")
        mounts = client.containers.get(f"flownb-{name}-recorder-0").attrs["Mounts"]
        assert [(m["Type"], m["Name"], m["Destination"]) for m in mounts] == [
            ("volume", f"flownb-{name}-recorder", "/data")]
    finally:
        _teardown(client, name, out, keep_broker=True, volumes=True)
    with pytest.raises(docker.errors.NotFound):
        client.volumes.get(f"flownb-{name}-recorder")


@pytest.mark.integration
@pytest.mark.docker
@pytest.mark.rabbitmq
@pytest.mark.slow
def test_a_step_writing_a_local_file_gets_a_named_volume_in_its_container_only(docker_engine, vhost_url, tmp_path):
    """docs/deploy.md, "Local files": ``flownb deploy`` mounts the folder of a step's local file (a
    relative path: under /app, where the spec lies) as the named volume flownb-<flow>-files-<folder>
    in that step's container only; the image's user can write it (the Dockerfile made the folder
    its own); ``down --volumes`` removes it."""
    import docker

    from flownb import Flow, step
    from flownb.deploy import export
    ensure_base_image(DEBIAN_BASE_IMAGE)
    name = f"files-{uuid.uuid4().hex[:8]}"
    out = tmp_path / "deploy"
    Flow(name=name, trigger=step("tick", "schedule", cron="* * * * * */2", catchup=False),
         steps=[step("sink", "csv.write", path="data/out.csv", columns=["scheduled_for"], fsync=False),
                step("say", "log")]).save(tmp_path / "flow.yaml")
    export(tmp_path / "flow.yaml", out, target="compose")
    client = docker.from_env()
    volume = f"flownb-{name}-files-data"

    def rows() -> int:
        rc, output = client.containers.get(f"flownb-{name}-sink-0").exec_run(["sh", "-c", "cat /app/data/out.csv"])
        return len(output.decode().splitlines()) - 1 if rc == 0 else 0  # the header is not a row
    try:
        assert main(["deploy", str(out), "--broker-url", vhost_url, "--base-image", DEBIAN_BASE_IMAGE]) == 0
        _wait(lambda: rows() >= 2, 120, "two rows in the step's file on its volume")
        mounts = {c.labels["flownb.step"]: [(m["Type"], m.get("Name"), m["Destination"]) for m in c.attrs["Mounts"]]
                  for c in client.containers.list(filters={"label": f"flownb.flow={name}"})}
        assert mounts == {"tick": [], "sink": [("volume", volume, "/app/data")], "say": []}
    finally:
        _teardown(client, name, out, keep_broker=True, volumes=True)
    with pytest.raises(docker.errors.NotFound):
        client.volumes.get(volume)
