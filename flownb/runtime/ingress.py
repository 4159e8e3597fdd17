"""Ingress: accepting a pushed body durably. What every door into a flow (the webhook servers, the
Jupyter extension) needs from a runtime, whichever runtime it is.

An :class:`Ingest` durably queues one body into the flow's first action and only then returns; it
raises :class:`Backpressure` when that queue is full (→ 429) and :class:`Unavailable` when the queue
cannot be reached (→ 503). In sync mode it also hands back a future that resolves with the first
output of the flow's last step for that run (correlated by trace id = the id of the first message).

Implementations: :class:`flownb.runtime.local.ingress.LocalIngest` (SQLite, group commit) and
:class:`flownb.runtime.amqp.ingress.AmqpIngest` (RabbitMQ, persistent publishes with confirms).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ..errors import Backpressure, Unavailable

__all__ = ["Ingest", "Accepted", "Backpressure", "Unavailable", "ReplyBook"]


@dataclass
class Accepted:
    """A durably queued request: its message id, and in sync mode the future of the reply (None when
    the ingest cannot deliver replies)."""

    id: str
    reply: asyncio.Future[dict] | None = None


@runtime_checkable
class Ingest(Protocol):
    """What a door into a flow needs from a runtime."""

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
            fut.add_done_callback(lambda _f: self._waiting.pop(trace, None))
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
