"""``flownb deploy`` / ``status`` / ``down`` through the Docker SDK (docker-py).

Each step replica is one container named ``flownb-<flow>-<step>-<n>``, labelled ``flownb.flow``,
``flownb.step`` and ``flownb.replica``, with a restart policy, so a killed worker comes back and
its unacknowledged messages are redelivered by RabbitMQ.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import BrokerError, DeployError, FlownbError
from ..flow import Flow, load
from ..runtime.amqp import names
from ..runtime.amqp.names import DEFAULT_BROKER_URL
from .image import build_image, docker_client, image_exists
from .plan import (
    BROKER_ENV,
    RABBITMQ_IMAGE,
    RECORDER_DIR,
    DataVolume,
    data_volumes,
    image_name,
    secret_envs,
    step_plans,
)

__all__ = ["RESTART_POLICY", "DeployResult", "deploy", "down", "read_env_file", "status"]

log = logging.getLogger("flownb.deploy")
Progress = Callable[[str], None]
RESTART_POLICY = {"Name": "unless-stopped"}
STOP_TIMEOUT = 60  # seconds between SIGTERM (drain) and SIGKILL


@dataclass
class DeployResult:
    flow: str
    image: str
    broker_url: str
    containers: list[str] = field(default_factory=list)


def read_env_file(path: Path) -> dict[str, str]:
    """``NAME=value`` lines (``#`` comments, blank lines and an optional ``export`` are ignored)."""
    out: dict[str, str] = {}
    if not path.exists():
        return out
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").strip()
        if "=" not in line:
            raise DeployError(f"{path}:{n}: expected NAME=value")
        k, _, v = line.partition("=")
        out[k.strip()] = v.strip().strip("'\"")
    return out


def _secrets(flow: Flow, out: Path) -> dict[str, str]:
    file_values = read_env_file(out / "secrets.env")
    env: dict[str, str] = {}
    missing = []
    for name in secret_envs(flow):
        value = os.environ.get(name, file_values.get(name))
        if value is None:
            missing.append(name)
        else:
            env[name] = value
    if missing:
        raise DeployError(f"secret environment variable(s) {', '.join(missing)} are not set; export them "
                          f"or write them to {out / 'secrets.env'} (see secrets.env.example)")
    return env


def _containers(client, flow_name: str, *, role: str | None = None) -> list:
    filters = {"label": [f"flownb.flow={flow_name}"]}
    if role:
        filters["label"].append(f"flownb.role={role}")
    return client.containers.list(all=True, filters=filters)


def _wait_port(url: str, timeout: float = 90.0) -> None:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 5672
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=2):
                return
        except OSError:
            time.sleep(1)
    raise DeployError(f"the broker at {host}:{port} did not open within {timeout:.0f}s")


def _start_broker(client, flow: Flow, network: str, say: Progress) -> str:
    name = f"flownb-{flow.name}-rabbitmq"
    existing = _containers(client, flow.name, role="broker")
    if existing:
        c = existing[0]
        if c.status != "running":
            c.start()
        say(f"broker container {c.name} is {c.status}")
    else:
        if not image_exists(client, RABBITMQ_IMAGE):
            say(f"pulling {RABBITMQ_IMAGE}")
            try:
                client.images.pull(RABBITMQ_IMAGE)
            except Exception as exc:  # docker.errors.APIError: no registry reachable
                raise DeployError(f"cannot pull {RABBITMQ_IMAGE} ({exc}); pass --broker-url to use a running "
                                  f"RabbitMQ instead") from exc
        say(f"starting RabbitMQ ({name})")
        client.containers.run(RABBITMQ_IMAGE, name=name, detach=True, network_mode=network,
                              hostname="rabbitmq", restart_policy=RESTART_POLICY,
                              labels={"flownb.flow": flow.name, "flownb.role": "broker"},
                              volumes={f"flownb-{flow.name}-rabbitmq": {"bind": "/var/lib/rabbitmq",
                                                                        "mode": "rw"}})
    url = DEFAULT_BROKER_URL if network == "host" else f"amqp://guest:guest@{name}:5672/"
    if network == "host":
        _wait_port(url)
    return url


def deploy(out: str | Path, *, broker_url: str | None = None, network: str = "host",
           base_image: str | None = None, build: bool = True, image: str | None = None,
           volumes: dict[str, str] | None = None, progress: Progress | None = None) -> DeployResult:
    """Build the image (unless ``build=False``), start RabbitMQ unless ``broker_url`` is given, then
    one container per step replica. Re-deploying replaces the flow's worker containers. The folders of
    local files the steps name are named volumes ``flownb-<flow>-files-…`` mounted on the same path in
    the containers of those steps, as in docker-compose.yml; ``volumes`` (HOST: CONTAINER, every
    container) replaces the named volume of a folder it covers."""
    out = Path(out)
    say = progress or (lambda m: log.info("%s", m))
    flow = load(out / "flow.yaml")
    env_secrets = _secrets(flow, out)
    client = docker_client()
    tag = image or image_name(flow)
    if build:
        tag = build_image(out, base_image=base_image, tag=tag, progress=say)
    elif not image_exists(client, tag):
        raise DeployError(f"image '{tag}' does not exist; run `flownb build {out}` first")
    if broker_url is None:
        broker_url = _start_broker(client, flow, network, say)
    _remove(client, flow.name, workers_only=True, say=say)
    env = {BROKER_ENV: broker_url}
    binds = {host: {"bind": target, "mode": "rw"} for host, target in (volumes or {}).items()}
    # each folder of local files the steps name: a named volume in the containers of those steps,
    # unless a --volume already brings that folder (or one holding it) in from the host
    files = [v for v in data_volumes(flow) if not _bound(v, (volumes or {}).values())]
    result = DeployResult(flow=flow.name, image=tag, broker_url=broker_url)
    for p in step_plans(flow):
        replicas = p.replicas
        if p.port is not None and network == "host" and replicas > 1:
            say(f"step '{p.name}': {replicas} replicas cannot share port {p.port} on the host network; "
                f"starting 1")
            replicas = 1
        for i in range(replicas):
            name = f"flownb-{flow.name}-{p.name}-{i}"
            labels = {"flownb.flow": flow.name, "flownb.step": p.name, "flownb.replica": str(i),
                      "flownb.role": "worker"}
            own = {**env, **{k: env_secrets[k] for k in p.secrets if k in env_secrets}}  # its secrets only
            mounts = {**binds, **{_files_volume(flow.name, v): {"bind": v.path, "mode": "rw"}
                                  for v in files if p.name in v.services}}
            if p.kind == "recorder":  # its SQLite file on a named volume that outlives the container
                mounts = {**binds, _recorder_volume(flow.name): {"bind": RECORDER_DIR, "mode": "rw"}}
            c = _run_worker(client, tag, p.command(), name, network, own, labels, mounts)
            result.containers.append(c.name)
            say(f"started {c.name}")
    return result


def _recorder_volume(flow: str) -> str:
    return f"flownb-{flow}-recorder"


def _files_volume(flow: str, v: DataVolume) -> str:
    return f"flownb-{flow}-{v.name}"


def _bound(v: DataVolume, targets) -> bool:
    """A --volume HOST:CONTAINER mounts ``v``'s folder, or a folder holding it."""
    return any((v.path + "/").startswith(t.rstrip("/") + "/") for t in targets)


def _run_worker(client, image: str, command: list[str], name: str, network: str, env: dict, labels: dict,
                binds: dict) -> Any:
    """Create and start one worker container (the low-level API: it takes a stop timeout)."""
    api = client.api
    try:
        # init: a tiny init as PID 1 forwards SIGTERM to the worker (drain) and reaps children
        host = api.create_host_config(network_mode=network, restart_policy=RESTART_POLICY,
                                      binds=binds or None, init=True)
        created = api.create_container(image, command, name=name, environment=env, labels=labels,
                                       host_config=host, stop_signal="SIGTERM", stop_timeout=STOP_TIMEOUT)
        api.start(created["Id"])
        return client.containers.get(created["Id"])
    except Exception as exc:  # docker.errors.APIError / ImageNotFound
        raise DeployError(f"starting container '{name}' failed: {exc}") from exc


def _container_info(c) -> dict[str, Any]:
    labels = c.labels or {}
    state = c.attrs.get("State", {})
    return {"name": c.name, "step": labels.get("flownb.step", ""), "role": labels.get("flownb.role", "worker"),
            "replica": labels.get("flownb.replica", ""), "state": c.status,
            "restarts": int(c.attrs.get("RestartCount", 0)), "exit_code": state.get("ExitCode"),
            "started_at": state.get("StartedAt", "")}


def _broker_from_containers(containers: list) -> str | None:
    for c in containers:
        for item in c.attrs.get("Config", {}).get("Env") or []:
            if item.startswith(BROKER_ENV + "="):
                return item.split("=", 1)[1]
    return None


def queue_depths(flow: Flow, broker_url: str) -> dict[str, dict[str, int]]:
    """Depth of each action step's queues, from the AMQP runtime (passive declares)."""
    try:
        from ..runtime.amqp import topology
        return topology.queue_depths(flow, broker_url)
    except (ImportError, AttributeError):
        return _passive_depths(flow, broker_url)


def _passive_depths(flow: Flow, broker_url: str) -> dict[str, dict[str, int]]:
    import pika
    try:
        conn = pika.BlockingConnection(pika.URLParameters(broker_url))
    except Exception as exc:  # pika.exceptions.AMQPError, OSError
        raise BrokerError(f"cannot reach RabbitMQ for queue depths: {exc}") from exc
    out = {}
    try:
        for s in flow.actions:
            row = {}
            for key, q in (("ready", names.step_queue(flow.name, s.name)),
                           ("dead", names.dead_letter_queue(flow.name, s.name))):
                ch = conn.channel()
                try:
                    row[key] = ch.queue_declare(q, passive=True).method.message_count
                except pika.exceptions.ChannelClosedByBroker:
                    row[key] = 0
                finally:
                    if ch.is_open:
                        ch.close()
            out[s.name] = row
    finally:
        conn.close()
    return out


def status(out: str | Path, *, broker_url: str | None = None) -> dict[str, Any]:
    """Containers of the flow (state, restart count) and its queue depths."""
    flow = load(Path(out) / "flow.yaml")
    client = docker_client()
    containers = _containers(client, flow.name)
    info = sorted((_container_info(c) for c in containers), key=lambda d: (d["role"], d["step"], d["replica"]))
    url = broker_url or _broker_from_containers([c for c in containers if c.status == "running"])
    queues: dict | None = None
    error = None
    if url:
        import pika
        try:
            queues = queue_depths(flow, url)
        except (FlownbError, pika.exceptions.AMQPError, OSError) as exc:  # show it, don't fail the status
            error = str(exc)
    else:
        error = "no running container names a broker; pass --broker-url"
    return {"flow": flow.name, "containers": info, "queues": queues, "queues_error": error}


def _remove(client, flow_name: str, *, workers_only: bool, say: Progress) -> list[str]:
    removed = []
    for c in _containers(client, flow_name):
        if workers_only and (c.labels or {}).get("flownb.role") == "broker":
            continue
        import docker
        try:
            c.stop(timeout=STOP_TIMEOUT)
            c.remove(force=True)
        except docker.errors.NotFound as exc:  # it vanished meanwhile
            log.debug("removing %s: %s", c.name, exc)
        removed.append(c.name)
        say(f"removed {c.name}")
    return removed


def down(out: str | Path, *, keep_broker: bool = False, volumes: bool = False,
         progress: Progress | None = None) -> list[str]:
    """Stop (SIGTERM, drain) and remove the flow's containers; the broker too unless ``keep_broker``;
    its data volume (and the flight recorder's, and those of the steps' local files) only with
    ``volumes=True``."""
    say = progress or (lambda m: log.info("%s", m))
    flow = load(Path(out) / "flow.yaml")
    client = docker_client()
    removed = _remove(client, flow.name, workers_only=keep_broker, say=say)
    if volumes:
        import docker
        names = [_recorder_volume(flow.name), *(_files_volume(flow.name, v) for v in data_volumes(flow))] + (
            [] if keep_broker else [f"flownb-{flow.name}-rabbitmq"])
        for volume in names:
            try:
                client.volumes.get(volume).remove(force=True)
            except docker.errors.NotFound as exc:
                log.debug("volume: %s", exc)
    return removed
