"""Shared fixtures of the deploy tests: test notebooks, an exported directory, the Docker engine."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).resolve().parents[2]


def load_yaml_all(path: Path) -> list[dict]:
    import yaml
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.fixture(scope="session")
def hooks_export(tmp_path_factory) -> Path:
    """hooks.ipynb exported once (papermill runs the real kernel) with parameters and secrets set."""
    import os

    from flownb.deploy import export
    out = tmp_path_factory.mktemp("hooks-export")
    env = {"HOOK_TOKEN_E2E": "hook-token-" + uuid.uuid4().hex, "DB_URL_E2E": "postgresql+psycopg://postgres@127.0.0.1/test"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        export(DATA / "hooks.ipynb", out, params={"replicas": "3", "table": "ev2"})
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    (out / "_secrets.json").write_text(json.dumps(env))
    return out


def docker_errors() -> type[Exception]:
    try:
        import docker
        return docker.errors.DockerException
    except ImportError:
        return ImportError


def docker_reason() -> str | None:
    """None when a Docker engine answers; else why not (the tests print it when they skip)."""
    try:
        import docker
        docker.from_env().ping()
        return None
    except (ImportError, OSError, docker_errors()) as exc:  # no SDK, no socket, engine refused
        hint = "" if shutil.which("dockerd") else " (dockerd is not installed: scripts/ci-deps)"
        return f"Docker engine unavailable: {exc}{hint}; start it with scripts/docker-up"


@pytest.fixture(scope="session")
def docker_engine():
    reason = docker_reason()
    if reason is None:
        return
    # try once to start the local engine, as CI does (not when DOCKER_HOST names another one)
    import os
    script = ROOT / "scripts" / "docker-up"
    if script.exists() and not os.environ.get("DOCKER_HOST") and not Path("/var/run/docker.sock").exists():
        subprocess.run([str(script)], capture_output=True, timeout=120, check=False)
        reason = docker_reason()
    if reason:
        print(f"SKIPPED docker tests: {reason}")
        pytest.skip(reason)


DEBIAN_RABBITMQ = "flownb-test-rabbitmq:bookworm"


@pytest.fixture(scope="session")
def debian_broker_image(docker_engine):
    """The image `flownb deploy` starts its own broker from (``RABBITMQ_IMAGE``), built here from Debian
    packages on the Debian-built base image (data/rabbitmq/Dockerfile): no registry is reachable, so
    the official image cannot be pulled. The tag is added for the session and removed afterwards
    when it was not there before."""
    import docker

    from flownb.deploy import DEBIAN_BASE_IMAGE, ensure_base_image
    from flownb.deploy.plan import RABBITMQ_IMAGE
    client = docker.from_env()
    base = ensure_base_image(DEBIAN_BASE_IMAGE)
    try:
        image = client.images.get(DEBIAN_RABBITMQ)
    except docker.errors.ImageNotFound:  # apt needs the Debian mirror: the build runs on the host network
        image, _logs = client.images.build(path=str(DATA / "rabbitmq"), tag=DEBIAN_RABBITMQ,
                                           buildargs={"BASE_IMAGE": base}, network_mode="host", rm=True)
    try:
        existing = client.images.get(RABBITMQ_IMAGE)
    except docker.errors.ImageNotFound:
        existing = None
    if existing is not None and existing.id != image.id:
        pytest.fail(f"{RABBITMQ_IMAGE} exists and is not {DEBIAN_RABBITMQ}: the deploy would not start "
                    f"the broker this test built")
    repo, tag = RABBITMQ_IMAGE.split(":")
    image.tag(repo, tag)
    yield image
    if existing is None:
        client.images.remove(RABBITMQ_IMAGE)  # the tag only: the Debian-built image stays cached
