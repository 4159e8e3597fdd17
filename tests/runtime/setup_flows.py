"""A flow whose step's setup() needs a TCP service on a given port: refused for real while nothing
listens there, working once :class:`Listener` starts (the setup-failure tests of both runtimes)."""

from __future__ import annotations

import socket
import threading

import flownb
from tests.processes import free_port  # noqa: F401 - the setup tests import it from here

SOURCE = '''
import socket

_conn = socket.create_connection(("127.0.0.1", {port}), timeout=2)  # like a database client in setup()

def step(body, ctx):
    return {{**body, "enriched": True}}
'''


def flow(name: str, port: int, out) -> flownb.Flow:
    return flownb.Flow(
        name=name, trigger=flownb.step("src", "python.poll", source="def none(state, ctx):\n    return []\n",
                                       function="none", interval="1h"),
        steps=[flownb.step("shape", "mapping", fields={"id": "id"}),
               flownb.step("enrich", "python", source=SOURCE.format(port=port), function="step"),
               flownb.step("out", "csv.write", path=str(out))])


class Listener:
    """Accepts (and holds) connections on 127.0.0.1:port until closed."""

    def __init__(self, port: int):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(16)
        self.held: list[socket.socket] = []
        self._t = threading.Thread(target=self._accept, daemon=True)
        self._t.start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(c)

    def close(self) -> None:
        self.sock.close()
        for c in self.held:
            c.close()


POLL_SOURCE = '''
import socket

_conn = socket.create_connection(("127.0.0.1", {port}), timeout=2)  # like a database client in setup()

def poll(state, ctx):
    if state.get("done"):
        return []
    state["done"] = True
    return [{{"id": i}} for i in range(3)]
'''


def trigger_flow(name: str, port: int, out) -> flownb.Flow:
    """A flow whose polling trigger's setup() needs the service on ``port``."""
    return flownb.Flow(
        name=name, trigger=flownb.step("src", "python.poll", source=POLL_SOURCE.format(port=port),
                                       function="poll", interval="1s"),
        steps=[flownb.step("out", "csv.write", path=str(out))])
