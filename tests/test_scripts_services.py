"""scripts/services names each service it cannot start and exits 1 (CI must not turn a dead service
into skipped tests). Mosquitto and Redis are looked for on free ports with their programs off PATH,
so nothing of the machine's own services is touched."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

from tests.processes import free_port as _free_port

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "services"




def test_services_exits_1_naming_mosquitto_and_redis_when_it_cannot_start_them(tmp_path):
    bin_dir = tmp_path / "bin"  # a PATH without mosquitto and redis-server (nor the other servers' tools)
    bin_dir.mkdir()
    for tool in ("seq", "sleep", "mktemp", "printf"):
        if shutil.which(tool):
            (bin_dir / tool).symlink_to(shutil.which(tool))
    p = subprocess.run([shutil.which("bash"), str(SCRIPT)], check=False, capture_output=True, text=True, timeout=120,
                       env={"PATH": str(bin_dir), "MQTT_PORT": str(_free_port()), "REDIS_PORT": str(_free_port())})
    assert p.returncode == 1, p.stdout + p.stderr
    assert "Mosquitto (MQTT) on 127.0.0.1:" in p.stderr and "mosquitto is not installed" in p.stderr
    assert "Redis on 127.0.0.1:" in p.stderr and "redis-server is not installed" in p.stderr


def _path_without_servers(tmp_path) -> Path:
    bin_dir = tmp_path / "bin"  # no rabbitmq-plugins, mosquitto, redis-server … (the machine's broker is not touched)
    bin_dir.mkdir()
    for tool in ("seq", "sleep", "mktemp", "printf"):
        if shutil.which(tool):
            (bin_dir / tool).symlink_to(shutil.which(tool))
    return bin_dir


def _broker_up() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=1).close()
        return True
    except OSError:
        return False


def test_services_waits_for_rabbitmq_management_and_names_the_plugin_when_it_does_not_answer(tmp_path):
    assert _broker_up(), "RabbitMQ is not running on 127.0.0.1:5672 (scripts/services starts it)"
    port = _free_port()  # nothing answers there, and rabbitmq-plugins is not on PATH
    p = subprocess.run([shutil.which("bash"), str(SCRIPT)], check=False, capture_output=True, text=True, timeout=120,
                       env={"PATH": str(_path_without_servers(tmp_path)), "MGMT_PORT": str(port), "MGMT_WAIT": "2",
                            "MQTT_PORT": str(_free_port()), "REDIS_PORT": str(_free_port())})
    assert p.returncode == 1, p.stdout + p.stderr
    assert (f"RabbitMQ's management plugin: nothing answers on 127.0.0.1:{port} "
            f"(rabbitmq-plugins enable rabbitmq_management") in p.stderr, p.stderr


def test_services_accepts_rabbitmq_management_once_its_port_answers(tmp_path):
    assert _broker_up(), "RabbitMQ is not running on 127.0.0.1:5672 (scripts/services starts it)"
    with socket.socket() as listener:  # a port that answers: no plugin to enable, nothing to wait for
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        p = subprocess.run([shutil.which("bash"), str(SCRIPT)], check=False, capture_output=True, text=True,
                           timeout=120, env={"PATH": str(_path_without_servers(tmp_path)), "MGMT_PORT": str(port),
                                             "MGMT_WAIT": "2", "MQTT_PORT": str(_free_port()),
                                             "REDIS_PORT": str(_free_port())})
    assert "management plugin" not in p.stderr, p.stderr
    assert "Mosquitto (MQTT) on 127.0.0.1:" in p.stderr  # the run went on to the other services
