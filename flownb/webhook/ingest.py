"""Where accepted requests go: the :class:`Ingest` protocol and the embedded-runtime implementation.

An ingest durably queues one body into the flow's first action and only then returns; it raises
:class:`Backpressure` when that queue is full (→ 429) and :class:`Unavailable` when the queue cannot
be reached (→ 503). In sync mode it also hands back a future that resolves with the first output of
the flow's last step for that run (correlated by trace id = the id of the first message).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from ..errors import BrokerError, MessageError, QueueFull, RuntimeFailure

__all__ = ["Ingest", "Accepted", "Backpressure", "Unavailable", "ReplyBook", "LocalIngest"]

log = logging.getLogger("flownb.webhook")


class Backpressure(RuntimeFailure):
    """The flow's first queue is full; the client should retry after ``retry_after`` seconds."""


class Unavailable(BrokerError):
    """The queue (broker) cannot be reached; nothing was accepted; retry later."""


@dataclass
class Accepted:
    """A durably queued request: its message id, and in sync mode the future of the reply."""

    id: str
    reply: "asyncio.Future[dict] | None" = None


@runtime_checkable
class Ingest(Protocol):
    """What the webhook app needs from a runtime."""

    flow: str

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def submit(self, body: dict, headers: dict[str, str], *, reply: bool) -> Accepted: ...

    def healthy(self) -> bool: ...


class ReplyBook:
    """Futures of sync requests by trace id. A reply that comes before its waiter registered (the
    runtime can finish a run before ``submit`` returns) is kept briefly so it is not lost."""

    def __init__(self, early_limit: int = 10_000):
        self._waiting: dict[str, asyncio.Future] = {}
        self._early: OrderedDict[str, dict] = OrderedDict()
        self._early_limit = early_limit
        self.in_flight = 0  # sync submissions whose id is not known yet

    def register(self, trace: str) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        if trace in self._early:
            fut.set_result(self._early.pop(trace))
        else:
            self._waiting[trace] = fut
            fut.add_done_callback(lambda _f, t=trace: self._waiting.pop(t, None))
        return fut

    def resolve(self, trace: str, body: dict) -> None:
        fut = self._waiting.pop(trace, None)
        if fut is not None:
            if not fut.done():
                fut.set_result(body)
        elif self.in_flight > 0:
            self._early[trace] = body
            while len(self._early) > self._early_limit:
                self._early.popitem(last=False)

    def cancel_all(self) -> None:
        for fut in list(self._waiting.values()):
            fut.cancel()
        self._waiting.clear()


class LocalIngest:
    """Queues into a ``flownb.runtime.local.LocalRuntime`` (SQLite) with group commit: one writer
    thread takes every request that arrived while the previous transaction was committing and
    queues them together (``runtime.submit_many``), so concurrent requests share one commit; each
    request is answered only after the transaction holding it has committed. Final outputs come back
    through ``runtime.add_final_listener``."""

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

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if not self._listening:
            self.runtime.add_final_listener(self._on_final)
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
        return self._writer is None or self._writer.is_alive()

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
            first = self._pending.get()
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

    def _commit(self, batch: list) -> None:
        try:
            results = self.runtime.submit_many([(b, h) for b, h, _f in batch])
        except RuntimeFailure as exc:
            results = [exc] * len(batch)
        except Exception as exc:  # sqlite3 errors, a disk that is full: nothing of the batch is queued
            log.exception("webhook: queueing %d request(s) failed", len(batch))
            results = [Unavailable(f"the local queue cannot be written: {type(exc).__name__}: {exc}")] * len(batch)
        settled = [(fut, _translate(r) if isinstance(r, BaseException) else r)
                   for (_b, _h, fut), r in zip(batch, results)]
        if settled:  # one wake-up of the event loop for the whole batch
            settled[0][0].get_loop().call_soon_threadsafe(_settle, settled)


def _translate(exc: BaseException) -> BaseException:
    if isinstance(exc, QueueFull):
        return Backpressure(str(exc))
    if isinstance(exc, (MessageError, Backpressure, Unavailable)):
        return exc
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
