"""Ingress of the embedded runtime: webhook requests (and any other pushed body) committed durably
into a flow's SQLite queue before they are answered.

- :class:`LocalIngest` — group commit: one writer thread takes every request that arrived while the
  previous transaction was committing and queues them together, so concurrent requests share one
  commit; each request is answered only after the transaction holding it has committed.
- its target is a :class:`~flownb.runtime.local.LocalRuntime` (``flownb run SPEC --port P``: the
  process runs the flow too; sync replies come from its final-output listener), or a
  :class:`FirstQueue` when another process runs the flow (the Jupyter server extension, next to
  a kernel's runtime that holds the flow's lock): the same rows in the same database, no replies.

The protocol (:class:`~flownb.runtime.ingress.Ingest`, :class:`~flownb.runtime.ingress.Backpressure`
→ 429, :class:`~flownb.runtime.ingress.Unavailable` → 503) is in :mod:`flownb.runtime.ingress`.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ...errors import ConfigError, FlownbError, MessageError, QueueFull, RuntimeFailure, StorageFull
from ...flow import Flow
from ...message import Message
from ..core import TriggerRunner
from ..health import HEALTH
from ..ingress import Accepted, Backpressure, ReplyBook, Unavailable
from .runtime import cached_depth, within_limit, wrap_pushed
from .store import open_state

__all__ = ["LocalIngest", "FirstQueue"]

log = logging.getLogger("flownb.webhook")


class LocalIngest:
    """Queues into ``runtime`` with group commit: one writer thread takes every request that arrived
    while the previous transaction was committing and queues them together (``runtime.submit_many``),
    so concurrent requests share one commit; each request is answered only after the transaction
    holding it has committed. ``runtime`` is a ``LocalRuntime`` or a :class:`FirstQueue`; final
    outputs (sync replies) come back through ``runtime.add_final_listener`` when it has one."""

    def __init__(self, runtime: Any, *, max_batch: int = 256):
        self.runtime = runtime
        self.flow = runtime.flow.name
        self.max_batch = max_batch
        self._pending: queue.SimpleQueue = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._book = ReplyBook()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listening = False
        self._closed = False
        #: why the last commit failed on a full disk (None: the queue can be written)
        self._full: str | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        listen = getattr(self.runtime, "add_final_listener", None)
        if not self._listening and listen is not None:
            listen(self._on_final)
            self._listening = True
        if self._writer is None:
            self._closed = False
            self._writer = threading.Thread(target=self._write_loop, name="flownb-webhook-commit", daemon=True)
            self._writer.start()

    async def close(self) -> None:
        self._book.cancel_all()
        self._closed = True
        if self._writer is not None:
            self._pending.put(None)
            await asyncio.get_running_loop().run_in_executor(None, self._writer.join, 30)
            self._writer = None

    def healthy(self) -> bool:
        """The writer thread is alive and the queue can be written (not while the disk is full)."""
        return (self._writer is None or self._writer.is_alive()) and self._full is None

    @property
    def _where(self) -> str:
        return f"webhook '{self.flow}' queue"

    def _set_full(self, why: str | None) -> None:
        if why is not None and self._full is None:
            log.error("webhook '%s': %s; answering 503 until space returns", self.flow, why)
            HEALTH.set_unready(self._where, why)
        elif why is None and self._full is not None:
            log.warning("webhook '%s': the queue can be written again", self.flow)
            HEALTH.set_ready(self._where)
        self._full = why

    def _on_final(self, trace_id: str, bodies: list[dict]) -> None:
        # called in a runtime thread after the last step's outputs for this run are committed
        loop = self._loop
        if loop is not None and bodies and not loop.is_closed():
            loop.call_soon_threadsafe(self._book.resolve, trace_id, bodies[0])

    async def submit(self, body: dict, headers: dict[str, str], *, reply: bool) -> Accepted:
        loop = self._loop or asyncio.get_running_loop()
        if self._closed or self._writer is None:
            raise Unavailable("the webhook is shutting down; retry later")
        fut = loop.create_future()
        reply = reply and self._listening  # no listener (FirstQueue): nothing will ever answer
        if reply:
            self._book.in_flight += 1
        try:
            self._pending.put((body, headers, fut))
            message = await fut
            return Accepted(message.id, self._book.register(message.trace) if reply else None)
        finally:
            if reply:
                self._book.in_flight -= 1

    # -- the writer thread ---------------------------------------------------------------------

    def _write_loop(self) -> None:
        while True:
            if self._full is None:
                first = self._pending.get()
            else:  # the disk was full: find out when it is not, even if no request comes
                try:
                    first = self._pending.get(timeout=1.0)
                except queue.Empty:
                    self._probe()
                    continue
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < self.max_batch:
                try:
                    item = self._pending.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            self._commit(batch)
            if stop:
                return

    def _probe(self) -> None:
        store = getattr(self.runtime, "store", None)
        if store is None:
            return
        try:
            store.probe_write()
        except StorageFull:
            return
        except Exception:  # noqa: BLE001 - another failure: the next request will tell
            return
        self._set_full(None)

    def _commit(self, batch: list) -> None:
        try:
            results = self.runtime.submit_many([(b, h) for b, h, _f in batch])
            self._set_full(None)
        except StorageFull as exc:  # nothing of the batch is queued: 503, and /healthz says why
            self._set_full(str(exc))
            results = [exc] * len(batch)
        except RuntimeFailure as exc:
            results = [exc] * len(batch)
        except Exception as exc:  # sqlite3 errors, a disk that is full: nothing of the batch is queued
            log.exception("webhook: queueing %d request(s) failed", len(batch))
            results = [Unavailable(f"the local queue cannot be written: {type(exc).__name__}: {exc}")] * len(batch)
        settled = [(fut, _translate(r) if isinstance(r, BaseException) else r)
                   for (_b, _h, fut), r in zip(batch, results, strict=True)]
        if settled:  # one wake-up of the event loop for the whole batch
            settled[0][0].get_loop().call_soon_threadsafe(_settle, settled)


def _translate(exc: BaseException) -> BaseException:
    if isinstance(exc, QueueFull):
        return Backpressure(str(exc))
    if isinstance(exc, (MessageError, Backpressure, Unavailable)):
        return exc
    if isinstance(exc, StorageFull):
        return Unavailable(f"the local queue cannot be written: {exc}")
    if isinstance(exc, RuntimeFailure):
        return Unavailable(f"the local queue refused the message: {exc}")
    return exc


def _settle(settled: list[tuple[asyncio.Future, Any]]) -> None:
    for fut, result in settled:
        if fut.done():
            continue
        if isinstance(result, BaseException):
            fut.set_exception(result)
        else:
            fut.set_result(result)


class FirstQueue:
    """The first action's queue in ``<state_dir>/<flow>.db``, for a process that accepts pushed bodies
    while another process runs the flow (the Jupyter server, next to a kernel's ``LocalRuntime``).

    :meth:`submit_many` has ``LocalRuntime.submit_many``'s contract and writes the same rows (the
    same helpers: each body wrapped by the trigger's ``emit``, one transaction per batch, ``QueueFull``
    for the items beyond ``max_queue``). The database is opened as ``LocalRuntime`` opens it
    (:func:`open_state`). It does not take the flow's lock (``<flow>.lock``): the runtime holding it
    processes what is appended (SQLite WAL, ``BEGIN IMMEDIATE``: safe alongside it). It reports no
    final outputs, so a sync request is answered 202 like an async one."""

    def __init__(self, flow: Flow, state_dir: Path | str, *, max_queue: int = 10_000,
                 clock: Callable[[], float] = time.time):
        if not flow.steps:
            raise ConfigError(f"flow '{flow.name}' has no action after its trigger to queue requests for; "
                              f"add a step", step=flow.trigger.name)
        self.flow = flow.resolved()  # as LocalRuntime: its max_message_bytes, its trigger's config
        self.first = flow.steps[0].name
        self.max_queue = max_queue
        self.clock = clock
        self.trigger = TriggerRunner(self.flow)  # wraps bodies as LocalRuntime's does (never set up)
        # as LocalRuntime opens it: a database that its state marker vouches for but that is missing
        # or damaged is a StateError, never silently started afresh
        self.store = open_state(Path(state_dir), flow.name)
        self._lock = threading.Lock()
        self._depth_cache: tuple[float, int] = (0.0, 0)

    def close(self) -> None:
        self.store.close()

    def submit_many(self, items: Sequence[tuple[dict, dict | None]]) -> list[Message | FlownbError]:
        """Durably queue several bodies in ONE transaction; per item its Message or the error that
        refused it (MessageError: not a JSON object / not encodable / too large; QueueFull: no room)."""
        results, accepted = wrap_pushed(items, self.trigger.emit, self.flow.trigger.name)
        if not accepted:
            return results
        with self._lock:
            depth = cached_depth(self, self.first)
            accepted = within_limit(results, accepted, depth, self.max_queue, self.first)
            if accepted:
                self.store.enqueue(self.first, [p for _i, _m, p in accepted], self.clock())
                self._depth_cache = (self._depth_cache[0], depth + len(accepted))
        return results
