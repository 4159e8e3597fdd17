"""Fixtures for the RabbitMQ runtime tests: a throw-away vhost per test, workers in threads, and a
private RabbitMQ node (scripts/rabbit-node) for tests that stop, restart or reconfigure a broker —
the broker on 5672 is shared with other people's test runs and is never stopped here."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pika
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import amqp_components  # noqa: E402,F401  (registers amqptest.*)

from flownb.runtime.amqp.worker import make_worker, run_workers  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq]


def _ctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


def _broker_up() -> bool:
    try:
        pika.BlockingConnection(pika.URLParameters("amqp://guest:guest@127.0.0.1:5672/")).close()
        return True
    except pika.exceptions.AMQPError:
        return False


@pytest.fixture
def broker():
    """URL of a fresh vhost, deleted afterwards."""
    if not _broker_up():
        pytest.skip("RabbitMQ is not running on 127.0.0.1:5672")
    vhost = f"flownb-test-{uuid.uuid4().hex[:10]}"
    _ctl("add_vhost", vhost)
    _ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    yield f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    _ctl("delete_vhost", vhost)


RABBIT_NODE = Path(__file__).resolve().parents[3] / "scripts" / "rabbit-node"
RABBITMQ_SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


class PrivateBroker:
    """A RabbitMQ node of this pytest process alone (``scripts/rabbit-node``): its own name, ports,
    data and Erlang cookie; stopping or restarting it disturbs nobody. ``url`` is its default vhost."""

    def __init__(self, name: str, config: list[str], *, cookie: str | None = None):
        self.name, self.config, self.port = name, config, 0
        self.cookie = cookie  # nodes meant to form a cluster share one (scripts/rabbit-node join)

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def _script(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        env = {**os.environ, "RABBIT_NODE_OWNER": str(os.getpid())}  # a killed pytest leaves no node
        if self.cookie:
            env["RABBIT_NODE_COOKIE"] = self.cookie
        return subprocess.run([str(RABBIT_NODE), *args], check=False, capture_output=True, text=True,
                              timeout=timeout, env=env)

    def start(self) -> PrivateBroker:
        # ports PORT..PORT+4, below the ephemeral range, spread by process id; taken ones are skipped
        slot = os.getpid() % 1200
        for attempt in range(8):
            port = 20000 + ((slot + 97 * attempt) % 1200) * 5
            t0 = time.monotonic()
            p = self._script("start", self.name, str(port), *self.config)
            if p.returncode == 0:
                self.port, self.started_in = port, time.monotonic() - t0
                return self
            if p.returncode != 3 and attempt > 0:  # not a port clash, and not a lost race for one
                break
        raise RuntimeError(f"scripts/rabbit-node start {self.name} failed ({p.returncode}):\n{p.stdout}{p.stderr}")

    def stop(self) -> None:
        self._script("stop", self.name)

    def kill(self) -> None:
        """SIGKILL the node's whole process group (a crash: no graceful leader hand-over); its data
        stays until :meth:`stop`, which the fixture calls at the end."""
        base = Path(os.environ.get("RABBIT_NODE_BASE") or RABBIT_NODE.parents[1] / ".rabbit")
        pid = int((base / self.name / "server.pid").read_text().strip())
        os.killpg(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while _listening(self.port):
            assert time.monotonic() < deadline, f"{self.name} still accepts connections after SIGKILL"
            time.sleep(0.1)

    def join(self, other: PrivateBroker) -> None:
        p = self._script("join", self.name, other.name)
        if p.returncode != 0:
            raise RuntimeError(f"scripts/rabbit-node join {self.name} {other.name}: {p.returncode}\n"
                               f"{p.stdout}{p.stderr}")

    def ctl(self, *args: str, timeout: float = 120) -> str:
        """``rabbitmqctl -n NAME@localhost -q ARGS`` for this node; its output."""
        p = self._script("ctl", self.name, "-q", *args, timeout=timeout)
        if p.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} on {self.name}: {p.returncode}\n{p.stdout}{p.stderr}")
        return p.stdout

    def stop_app(self) -> None:
        self.ctl("stop_app")
        assert not _listening(self.port), "the node still accepts connections after stop_app"

    def start_app(self) -> None:
        self.ctl("start_app")  # returns once the app runs; the listener comes up with it
        deadline = time.monotonic() + 60
        while not _listening(self.port):
            assert time.monotonic() < deadline, f"{self.name} does not accept connections after start_app"
            time.sleep(0.1)

    def restart(self) -> None:
        """Stop and start the RabbitMQ application: every connection to it is dropped."""
        try:
            self.stop_app()
        finally:
            self.start_app()

    def new_vhost(self) -> str:
        """URL of a fresh vhost on this node (guest may do everything in it)."""
        vhost = f"flownb-test-{uuid.uuid4().hex[:10]}"
        self.ctl("add_vhost", vhost)
        self.ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        return self.url + vhost

    def ensure_up(self) -> None:
        """A test that failed between stop_app and start_app must not fail the next one."""
        if not _listening(self.port):
            self.start_app()


@pytest.fixture(scope="session")
def _private_nodes():
    if not RABBITMQ_SERVER.exists() or not RABBIT_NODE.exists():
        pytest.skip("RabbitMQ (the rabbitmq-server package) is not installed")
    nodes: dict[tuple[str, ...], PrivateBroker] = {}

    def get(*lines: str, **settings) -> PrivateBroker:
        config = tuple(lines) + tuple(f"{k} = {v}" for k, v in sorted(settings.items()))
        if config not in nodes:
            suffix = f"-{len(nodes)}" if nodes else ""
            nodes[config] = PrivateBroker(f"flownb-{os.getpid()}{suffix}", list(config)).start()
        node = nodes[config]
        node.ensure_up()
        return node
    yield get
    stopping = [threading.Thread(target=node.stop) for node in nodes.values()]
    for t in stopping:
        t.start()
    for t in stopping:
        t.join()


@pytest.fixture
def private_broker(_private_nodes) -> PrivateBroker:
    """This pytest process's own RabbitMQ node (started once, stopped at the end of the session)."""
    return _private_nodes()


@pytest.fixture
def private_broker_with(_private_nodes):
    """A private node with extra rabbitmq.conf settings, one node per distinct configuration:
    ``private_broker_with(max_message_size=65536)`` or ``private_broker_with("log.file.level = debug")``."""
    return _private_nodes


@pytest.fixture
def new_private_node():
    """``new_private_node(name, config=(), cookie=None)`` → a PrivateBroker (not started) that is
    stopped and deleted after the test; nodes with one ``cookie`` can form a cluster."""
    made: list[PrivateBroker] = []

    def make(name: str, config=(), *, cookie: str | None = None) -> PrivateBroker:
        node = PrivateBroker(name, list(config), cookie=cookie)
        made.append(node)
        return node
    yield make
    stopping = [threading.Thread(target=node.stop) for node in made]
    for t in stopping:
        t.start()
    for t in stopping:
        t.join()


RABBITMQ_CLUSTER = RABBIT_NODE.parent / "rabbitmq-cluster"


class ClusterNode:
    """Node ``n`` (1..3) of a cluster that ``scripts/rabbitmq-cluster`` runs."""

    def __init__(self, cluster: Cluster, n: int):
        self.cluster, self.n = cluster, n

    @property
    def name(self) -> str:
        return f"{self.cluster.prefix}-{self.n}"

    @property
    def port(self) -> int:
        return self.cluster.first_port + self.n - 1

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def ctl(self, *args: str, timeout: float = 120) -> str:
        """``rabbitmqctl -n <this node> -q ARGS`` (as the rabbitmq user); its output."""
        p = self.cluster.script("ctl", str(self.n), "-q", *args, timeout=timeout)
        if p.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} on {self.name}: {p.returncode}\n{p.stdout}{p.stderr}")
        return p.stdout

    def kill(self) -> None:
        """SIGKILL the node (a crash: no graceful leader hand-over); its data stays."""
        self.cluster.run("kill-node", str(self.n))
        assert not _listening(self.port), f"{self.name} still accepts connections after SIGKILL"

    def stop(self) -> None:
        """Stop the node gracefully; its data stays (:meth:`start` brings it back into the cluster)."""
        self.cluster.run("stop-node", str(self.n))
        assert not _listening(self.port), f"{self.name} still accepts connections after it stopped"

    def start(self) -> None:
        self.cluster.run("start-node", str(self.n))


class Cluster:
    """Three clustered RabbitMQ nodes beside the machine's broker (``scripts/rabbitmq-cluster``): on
    5673-5675 as ``flownb-cluster-N`` when those are free, else (another test run has them) on ports
    and names of this pytest process."""

    def __init__(self, prefix: str, first_port: int):
        self.prefix, self.first_port = prefix, first_port
        self.nodes = [ClusterNode(self, n) for n in (1, 2, 3)]

    def script(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        env = {**os.environ, "RABBITMQ_CLUSTER_NAME": self.prefix, "RABBITMQ_CLUSTER_PORT": str(self.first_port),
               "RABBITMQ_CLUSTER_OWNER": str(os.getpid())}  # a killed pytest leaves no cluster
        return subprocess.run([str(RABBITMQ_CLUSTER), *args], check=False, capture_output=True, text=True,
                              timeout=timeout, env=env)

    def run(self, *args: str) -> str:
        p = self.script(*args)
        if p.returncode != 0:
            raise RuntimeError(f"scripts/rabbitmq-cluster {' '.join(args)}: {p.returncode}\n{p.stdout}{p.stderr}")
        return p.stdout

    def running(self) -> list[str]:
        """The running members of the cluster, as the first node that answers sees them."""
        for node in self.nodes:
            if _listening(node.port):
                out = node.ctl("eval", "lists:sort(rabbit_nodes:all_running()).")
                return re.findall(r"'([^']+)'", out)  # ['flownb-cluster-1@localhost', ...]
        return []

    @property
    def url(self) -> str:
        """The short form: one URL, the hosts of the three nodes (docs/rabbitmq.md, "A cluster")."""
        return self.script("urls").stdout.strip()


@pytest.fixture
def rabbitmq_cluster():
    """A three-node cluster (``scripts/rabbitmq-cluster start``), stopped and deleted after the test."""
    if not RABBITMQ_SERVER.exists():
        pytest.skip("RabbitMQ (the rabbitmq-server package) is not installed")
    slot = os.getpid() % 1000
    for prefix, first in (("flownb-cluster", 5673), (f"flownb-cluster{os.getpid()}", 26100 + slot * 3),
                          (f"flownb-cluster{os.getpid()}b", 29100 + slot * 3)):
        cluster = Cluster(prefix, first)
        p = cluster.script("start")
        if p.returncode == 0:
            break
        if p.returncode != 3:  # not a port or name in use: starting elsewhere will not help
            raise RuntimeError(f"scripts/rabbitmq-cluster start: {p.returncode}\n{p.stdout}{p.stderr}")
    else:
        raise RuntimeError(f"scripts/rabbitmq-cluster start: ports in use\n{p.stdout}{p.stderr}")
    try:
        yield cluster
    finally:
        cluster.script("stop")


class Running:
    """Workers of some steps running in threads of this process."""

    def __init__(self, flow, steps, broker, prefetch=None):
        self.workers = [make_worker(flow, s, broker, prefetch=prefetch) for s in steps]
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=run_workers, args=(self.workers, self.stop_event), daemon=True)

    def __enter__(self):
        self.thread.start()
        for w in self.workers:
            assert w.consuming.wait(15), "worker did not start consuming"
        return self

    def stop(self):
        self.stop_event.set()
        self.thread.join(60)
        assert not self.thread.is_alive(), "workers did not stop"

    def __exit__(self, *exc):
        self.stop()


@pytest.fixture
def running():
    started = []

    def start(flow, steps, broker, prefetch=None):
        r = Running(flow.resolved(), steps, broker, prefetch).__enter__()
        started.append(r)
        return r
    yield start
    for r in started:
        if r.thread.is_alive():
            r.stop()
