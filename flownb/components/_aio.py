"""An asyncio event loop on a thread of its own, for components whose client library is async
(nats-py, aiormq) while a component's ``poll``/``process_batch`` are plain calls: ``call`` runs a
coroutine there and waits for it, with a timeout."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["LoopThread"]

T = TypeVar("T")


class LoopThread:
    """``LoopThread(name)`` starts the loop (a daemon thread, so a process never waits on it);
    ``stop()`` ends it."""

    def __init__(self, name: str):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def submit(self, coro: Coroutine[Any, Any, T]):
        """Start ``coro`` on the loop; its ``concurrent.futures.Future``."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run ``coro`` on the loop and return its result; after ``timeout`` seconds it is cancelled
        and ``TimeoutError`` raised."""
        fut = self.submit(coro)
        try:
            return fut.result(timeout)
        except TimeoutError:
            fut.cancel()
            raise

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        if not self.thread.is_alive():
            self.loop.close()
