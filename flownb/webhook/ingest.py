"""Where accepted requests go: the :class:`Ingest` protocol and the embedded-runtime implementation.

An ingest durably queues one body into the flow's first action and only then returns; it raises
:class:`Backpressure` when that queue is full (→ 429) and :class:`Unavailable` when the queue cannot
be reached (→ 503). In sync mode it also hands back a future that resolves with the first output of
the flow's last step for that run (correlated by trace id = the id of the first message).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from ..errors import BrokerError, MessageError, RuntimeFailure

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


def _queue_full_type() -> type[BaseException]:
    from .. import errors
    return getattr(errors, "QueueFull", Backpressure)


class LocalIngest:
    """Queues into a ``flownb.runtime.local.LocalRuntime`` (SQLite): ``runtime.submit`` runs in one
    dedicated thread (SQLite writes are serial anyway); final outputs come back through
    ``runtime.add_final_listener``."""

    def __init__(self, runtime: Any, *, threads: int = 1):
        self.runtime = runtime
        self.flow = runtime.flow.name
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="flownb-webhook-submit")
        self._book = ReplyBook()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue_full = _queue_full_type()
        self._listening = False

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if not self._listening:
            self.runtime.add_final_listener(self._on_final)
            self._listening = True

    async def close(self) -> None:
        self._book.cancel_all()
        self._pool.shutdown(wait=True)

    def healthy(self) -> bool:
        return True

    def _on_final(self, trace_id: str, bodies: list[dict]) -> None:
        # called in a runtime thread after the last step's outputs for this run are committed
        loop = self._loop
        if loop is not None and bodies and not loop.is_closed():
            loop.call_soon_threadsafe(self._book.resolve, trace_id, bodies[0])

    async def submit(self, body: dict, headers: dict[str, str], *, reply: bool) -> Accepted:
        loop = self._loop or asyncio.get_running_loop()
        if reply:
            self._book.in_flight += 1
        try:
            message = await loop.run_in_executor(self._pool, self._submit, body, headers)
            return Accepted(message.id, self._book.register(message.trace) if reply else None)
        finally:
            if reply:
                self._book.in_flight -= 1

    def _submit(self, body: dict, headers: dict[str, str]):
        try:
            return self.runtime.submit(body, headers=headers)
        except self._queue_full as exc:
            raise Backpressure(str(exc)) from exc
        except MessageError:
            raise
        except RuntimeFailure as exc:
            raise Unavailable(f"the local queue refused the message: {exc}") from exc
