"""The two places an accepted request can go, behind one small interface for the tests."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from flownb.flow import Flow
from flownb.message import Message
from flownb.runtime.amqp.ingress import AmqpIngest

from .conftest import BROKER, amqp_delete, amqp_drain


class Backend:
    def __init__(self, tmp: Path):
        self.tmp = tmp

    def ingest(self, flow: Flow) -> Any:
        raise NotImplementedError

    def drain(self, flow: Flow) -> list[Message]:
        """Every message queued for the flow's first action since the last drain."""
        raise NotImplementedError

    def cleanup(self, flows: list[Flow]) -> None:
        pass


class AmqpBackend(Backend):
    def ingest(self, flow: Flow) -> AmqpIngest:
        return AmqpIngest(flow, BROKER)

    def drain(self, flow: Flow) -> list[Message]:
        return amqp_drain(flow)

    def cleanup(self, flows: list[Flow]) -> None:
        for f in flows:
            amqp_delete(f)


class LocalBackend(Backend):
    """The embedded runtime (SQLite). Its processing loop is not started, so accepted messages stay
    in the first action's queue, where :meth:`drain` reads and deletes them through the store."""

    def __init__(self, tmp: Path):
        super().__init__(tmp)
        self.runtimes: dict[str, Any] = {}

    def ingest(self, flow: Flow) -> Any:
        from flownb.runtime.local import LocalRuntime
        from flownb.runtime.local.ingress import LocalIngest
        runtime = LocalRuntime(flow, self.tmp / flow.name)
        self.runtimes[flow.name] = runtime
        return LocalIngest(runtime)

    def _store(self, flow: Flow):
        from flownb.runtime.local.store import QueueStore
        store = getattr(self.runtimes[flow.name], "store", None)
        if isinstance(store, QueueStore):
            return store
        dbs = [p for p in (self.tmp / flow.name).rglob("*") if p.suffix in (".db", ".sqlite", ".sqlite3")]
        assert len(dbs) == 1, f"cannot find the queue database among {dbs}"
        return QueueStore(dbs[0])

    def drain(self, flow: Flow) -> list[Message]:
        store = self._store(flow)
        rows = store.claim(flow.steps[0].name, float("inf"), 1_000_000)
        store.commit_batch(next_step=None, now=time.time(), done=[r[0] for r in rows], outputs=[],
                           retries=[], dead=[])
        return [Message.from_json(r[2]) for r in rows]

    def cleanup(self, flows: list[Flow]) -> None:
        for rt in self.runtimes.values():
            close = getattr(rt, "close", None)
            if close:
                close()


class JupyterBackend(Backend):
    """The Jupyter server extension: a real ``jupyter server`` subprocess with ``jupyter_flownb``; the
    flows are registered by this process (the kernel), which does not run them, so accepted messages
    stay in the first action's queue of ``<state>/<flow>.db``. The server is served by :meth:`serve`,
    not through :meth:`ingest` (its ingress lives in the server process)."""

    def __init__(self, tmp: Path):
        super().__init__(tmp)
        self.state = tmp / "state"

    def serve(self, flows: list[Flow]) -> Any:
        from ..extensions.conftest import JupyterServer, ensure_installed
        ensure_installed("jupyter_flownb")
        from jupyter_flownb import serve_in_jupyter
        root, runtime = self.tmp / "root", self.tmp / "runtime"
        root.mkdir(exist_ok=True)
        runtime.mkdir(exist_ok=True)
        server = JupyterServer(root, runtime, [])
        self._saved = {k: os.environ.get(k) for k in ("JUPYTER_RUNTIME_DIR", "FLOWNB_JUPYTER_REGISTRY")}
        os.environ["JUPYTER_RUNTIME_DIR"] = str(runtime)
        os.environ.pop("FLOWNB_JUPYTER_REGISTRY", None)
        for f in flows:
            serve_in_jupyter(f, self.state)
        return server

    def drain(self, flow: Flow) -> list[Message]:
        from flownb.runtime.local.store import QueueStore
        store = QueueStore(self.state / f"{flow.name}.db")
        try:
            rows = store.claim(flow.steps[0].name, float("inf"), 1_000_000)
            store.commit_batch(next_step=None, now=time.time(), done=[r[0] for r in rows], outputs=[],
                               retries=[], dead=[])
        finally:
            store.close()
        return [Message.from_json(r[2]) for r in rows]

    def cleanup(self, flows: list[Flow]) -> None:
        from jupyter_flownb import stop_serving
        for f in flows:
            stop_serving(f.name)
        for k, v in getattr(self, "_saved", {}).items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


BACKENDS: dict[str, type[Backend]] = {"amqp": AmqpBackend, "embedded": LocalBackend,
                                      "jupyter": JupyterBackend}
