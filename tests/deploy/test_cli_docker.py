"""Every flag of `flownb build`, `deploy`, `status` and `down` on the real Docker engine.

`deploy` without --broker-url starts the flow's own RabbitMQ container (built from Debian packages on
the Debian-built base image: conftest.debian_broker_image) on a network of its own, so it never meets
the machine's shared broker; the flow's data leaves through a --volume; everything is torn down."""

from __future__ import annotations

import csv
import json
import time
import uuid
from pathlib import Path

import pytest

from flownb import Flow, step
from flownb.cli import main
from flownb.deploy import DEBIAN_BASE_IMAGE, ensure_base_image

pytestmark = [pytest.mark.integration, pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(900)]


def _rows(path: Path) -> list[str]:
    if not path.exists():
        return []
    with path.open() as f:
        return [r["scheduled_for"] for r in csv.DictReader(f)]


def _until(what: str, predicate, timeout: float = 240.0):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"not within {timeout:.0f}s: {what}"
        time.sleep(0.5)
    return value


def _export(tmp: Path, flow: Flow) -> Path:
    spec = flow.save(tmp / "flow.yaml")
    out = tmp / "deploy"
    assert main(["export", str(spec), "--target", "compose", "-o", str(out)]) == 0
    return out


@pytest.fixture
def client(docker_engine):
    import docker
    return docker.from_env()


def _ticks(name: str) -> Flow:
    """A schedule firing every second into a CSV under /data: end to end through the broker."""
    return Flow(name=name, trigger=step("src", "schedule", cron="* * * * * *", catchup=False),
                steps=[step("sink", "csv.write", path="/data/out.csv", columns=["scheduled_for"],
                            fsync=False)])


def test_build_with_base_image_and_tag_and_the_default_base_is_named_when_missing(client, tmp_path, capsys):
    base = ensure_base_image(DEBIAN_BASE_IMAGE)
    out = _export(tmp_path, _ticks(f"build-{uuid.uuid4().hex[:8]}"))
    tag = f"flownb-build-test-{uuid.uuid4().hex[:8]}:pytest"
    try:
        assert main(["build", str(out), "--base-image", base, "--tag", tag]) == 0
        image = client.images.get(tag)
        assert image.attrs["Config"]["User"] == "10001:10001"
        assert f"ARG BASE_IMAGE={base}" in (out / "Dockerfile").read_text()
        assert image.attrs["Config"]["Env"].count("PIP_NO_INDEX=1") == 1
        listing = client.containers.run(tag, ["sh", "-c", "grep '^name:' /app/flow.yaml"], remove=True,
                                        network_mode="none").decode()
        assert listing.strip() == f"name: {_name(out)}"  # the image carries this export's flow
    finally:
        client.images.remove(tag, force=True)
    capsys.readouterr()
    # without --base-image the default (python:3.11-slim) is used; with no registry it cannot be
    # pulled, and the error says how to build a local base instead
    import docker
    try:
        client.images.get("python:3.11-slim")
        pytest.fail("python:3.11-slim exists here: the default-base case cannot be checked")
    except docker.errors.ImageNotFound:
        pass
    assert main(["build", str(out), "--tag", tag]) == 1
    err = capsys.readouterr().err
    assert "python:3.11-slim" in err and f"--base-image {DEBIAN_BASE_IMAGE}" in err


def _name(out: Path) -> str:
    import yaml
    return yaml.safe_load((out / "flow.yaml").read_text())["name"]


def test_deploy_without_broker_url_starts_its_own_broker_then_no_build_keep_broker_and_volumes(
        client, debian_broker_image, tmp_path, capsys, monkeypatch):
    import docker
    monkeypatch.setenv("COLUMNS", "200")  # rich: one progress line per message
    base = ensure_base_image(DEBIAN_BASE_IMAGE)
    name = f"own-{uuid.uuid4().hex[:8]}"
    out = _export(tmp_path, _ticks(name))
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o777)  # the workers run as uid 10001
    network = client.networks.create(f"flownb-test-{name}", driver="bridge")
    label = {"label": f"flownb.flow={name}"}
    broker_name = f"flownb-{name}-rabbitmq"
    try:
        # deploy: builds the image, starts the flow's own broker (no --broker-url), one worker per step
        assert main(["deploy", str(out), "--network", network.name, "--base-image", base,
                     "-v", f"{data}:/data"]) == 0
        said = capsys.readouterr().out
        assert f"starting RabbitMQ ({broker_name})" in said
        image_id = client.images.get(f"flownb-{name}:latest").id
        [broker] = client.containers.list(filters={**label, "label": "flownb.role=broker"})
        assert broker.name == broker_name and broker.image.id == debian_broker_image.id
        assert broker.attrs["HostConfig"]["NetworkMode"] == network.name
        workers = client.containers.list(filters={"label": [f"flownb.flow={name}", "flownb.role=worker"]})
        assert sorted(c.labels["flownb.step"] for c in workers) == ["sink", "src"]
        for c in workers:
            assert f"FLOWNB_BROKER_URL=amqp://guest:guest@{broker_name}:5672/" in c.attrs["Config"]["Env"]
            assert c.attrs["HostConfig"]["Binds"] == [f"{data}:/data:rw"]
        # end to end through that broker and out through the volume
        _until("3 rows in the mounted CSV", lambda: len(_rows(data / "out.csv")) >= 3)

        # status: containers and the queue depths read from the flow's broker
        broker.reload()
        ip = broker.attrs["NetworkSettings"]["Networks"][network.name]["IPAddress"]
        assert main(["status", str(out), "--broker-url", f"amqp://guest:guest@{ip}:5672/", "--json"]) == 0
        st = json.loads(capsys.readouterr().out)
        assert st["flow"] == name and st["queues_error"] is None and set(st["queues"]) == {"sink"}
        assert sorted((c["step"] or c["role"], c["state"]) for c in st["containers"]) == \
            [("broker", "running"), ("sink", "running"), ("src", "running")]

        # down --keep-broker: the workers go, the broker stays (same container)
        assert main(["down", str(out), "--keep-broker"]) == 0
        left = client.containers.list(all=True, filters=label)
        assert [c.id for c in left] == [broker.id] and left[0].status == "running"
        capsys.readouterr()

        # deploy --no-build: the image built before, the running broker reused; the flow goes on
        before = len(_rows(data / "out.csv"))
        assert main(["deploy", str(out), "--network", network.name, "--no-build", "-v", f"{data}:/data"]) == 0
        said = capsys.readouterr().out
        assert "docker build" not in said and "starting RabbitMQ" not in said
        assert f"broker container {broker_name} is running" in said
        assert client.images.get(f"flownb-{name}:latest").id == image_id
        _until("rows after the redeploy", lambda: len(_rows(data / "out.csv")) >= before + 2)
        rows = _rows(data / "out.csv")
        assert len(rows) == len(set(rows))  # each second once, across the redeploy

        # down --volumes: every container and the broker's data volume are gone
        assert main(["down", str(out), "--volumes"]) == 0
        assert client.containers.list(all=True, filters=label) == []
        with pytest.raises(docker.errors.NotFound):
            client.volumes.get(f"flownb-{name}-rabbitmq")
    finally:
        for c in client.containers.list(all=True, filters=label):
            c.remove(force=True)
        try:
            client.volumes.get(f"flownb-{name}-rabbitmq").remove(force=True)
        except docker.errors.NotFound:
            pass
        network.remove()
        try:
            client.images.remove(f"flownb-{name}:latest", force=True)
        except docker.errors.ImageNotFound:
            pass


def test_deploy_no_build_without_an_image_says_to_build_first(client, tmp_path, capsys):
    out = _export(tmp_path, _ticks(f"nobuild-{uuid.uuid4().hex[:8]}"))
    assert main(["deploy", str(out), "--no-build", "--broker-url", "amqp://guest:guest@127.0.0.1:1/"]) == 1
    assert f"run `flownb build {out}` first" in capsys.readouterr().err
