"""The error flow on the embedded runtime (flownb.runtime.on_error says what it delivers and when).

Dead letters are the ``dead`` table's rows: the notifier keeps a cursor (the last row id it
delivered, in the ``on_error`` table of the same database) and delivers the rows after it, so a
dead letter written by any transaction is reported once its delivery went through, also after a
restart; the cursor starts at the rows already there when ``on_error`` is first configured.
``setup()`` failures and failed polls are not stored: they wait in memory (listed up to ``batch``,
counted beyond) and a crash before their delivery loses them — the runtime logs each of them too.
A dead letter replayed (removed) before its window is not reported.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import TYPE_CHECKING, Any

from ...errors import ErrorFlowFailed
from ..on_error import ErrorFlow, delivery, event_from_dead

if TYPE_CHECKING:
    from .runtime import LocalRuntime

__all__ = ["LocalErrorNotifier"]

log = logging.getLogger("flownb.on_error")

_TABLE = """
CREATE TABLE IF NOT EXISTS on_error (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    dead_cursor INTEGER NOT NULL
)
"""


class LocalErrorNotifier:
    """Delivers a :class:`~flownb.runtime.local.runtime.LocalRuntime`'s failures to its error flow."""

    def __init__(self, rt: LocalRuntime, error_flow: ErrorFlow | None = None):
        self.rt = rt
        self.flow = error_flow or ErrorFlow(rt.flow, state_dir=rt.state_dir)
        self.extra: list[dict] = []                       # setup()/poll failures, up to ``batch``
        self.extra_counts: Counter[tuple[str, str]] = Counter()
        self.delivered = 0                                 # failures delivered by this process
        self.failed_deliveries = 0
        with rt.store.transaction() as c:
            c.execute(_TABLE)
            c.execute("INSERT OR IGNORE INTO on_error (id, dead_cursor) "
                      "SELECT 1, coalesce(max(id), 0) FROM dead")
            # only this notifier moves it, and one process holds a state directory (its lock file)
            self._dead_cursor: int = c.execute("SELECT dead_cursor FROM on_error WHERE id=1").fetchone()[0]

    def add(self, ev: dict) -> None:
        """A failure that is not a dead letter (``setup_failed``, ``poll_failed``)."""
        self.extra_counts[(ev["kind"], ev["step"])] += 1
        if len(self.extra) < self.flow.batch:
            self.extra.append(ev)

    def pending(self) -> int:
        """Failures not delivered yet."""
        with self.rt.store.lock:
            n = self.rt.store.conn.execute("SELECT count(*) FROM dead WHERE id > ?",
                                           (self._dead_cursor,)).fetchone()[0]
        return n + sum(self.extra_counts.values())

    def tick(self, now: float, *, force: bool = False) -> bool:
        """Deliver what is pending when the window allows (``force``: now, at the end of a run).
        True when a delivery went through."""
        if not force and not self.flow.window.due(now):
            return False
        store = self.rt.store
        cursor = self._dead_cursor
        with store.lock:  # called on every round of the run loop: one indexed look when nothing is new
            if not self.extra_counts and store.conn.execute("SELECT 1 FROM dead WHERE id > ? LIMIT 1",
                                                            (cursor,)).fetchone() is None:
                return False
            rows = store.conn.execute("SELECT id, step, attempt, payload, error FROM dead WHERE id > ? "
                                      "ORDER BY id LIMIT ?", (cursor, self.flow.batch)).fetchall()
            grouped = store.conn.execute("SELECT step, count(*), max(id) FROM dead WHERE id > ? GROUP BY step",
                                         (cursor,)).fetchall()
        if not grouped and not self.extra_counts:
            return False
        from .runtime import dead_letter_from_row
        events = []
        for row in rows:
            d = dead_letter_from_row(row)
            events.append(event_from_dead(self.rt.flow.name, d.message, d.error))
        counts: Counter[tuple[str, str]] = Counter({("dead_letter", step): n for step, n, _ in grouped})
        counts.update(self.extra_counts)
        listed = (events + self.extra)[: self.flow.batch]
        body = delivery(self.rt.flow.name, sorted(listed, key=_at), sum(counts.values()), dict(counts))
        self.flow.window.sent(now)  # a failed delivery waits a window too: no tight loop
        try:
            self.flow.send(body)
        except ErrorFlowFailed as exc:
            self.failed_deliveries += 1
            log.error("%s", exc)
            return False
        new_cursor = max((top for _s, _n, top in grouped), default=cursor)
        with store.transaction("the on_error cursor did not move: those failures are delivered again") as c:
            c.execute("UPDATE on_error SET dead_cursor=? WHERE id=1", (new_cursor,))
        self._dead_cursor = new_cursor
        self.delivered += body["count"]
        self.extra, self.extra_counts = [], Counter()
        return True

    def close(self) -> None:
        self.flow.close()


def _at(ev: dict) -> Any:
    return ev.get("at") or 0.0
