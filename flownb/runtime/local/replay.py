"""Replay of (edited) dead letters on the embedded runtime (``flownb.replay``, ``flownb dlq replay
--edit``): the new messages are queued and the dead letters deleted in ONE SQLite transaction, so a
crash leaves either both (the dead letters stay, nothing is queued) or neither — no loss, and no
duplicate either."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ...errors import MessageError, SpecError
from ...flow import Flow
from ...message import Message
from ..core import undecodable
from .dlq import LocalDeadLetters

__all__ = ["replay_edited"]

#: rebuild(step, dead letter id, stored message) -> (payload to queue, edited?)
Rebuild = Callable[[str, str, Message], tuple[bytes, bool]]


def replay_edited(flow: Flow, state_dir: Path, wanted: Mapping[str, Any], rebuild: Rebuild, *,
                  step: str | None = None) -> list[dict]:
    """Queue ``rebuild(...)`` of each dead letter whose id is in ``wanted`` for its step (attempt 1)
    and delete it, in one transaction. Every id must exist (and be at ``wanted[id]['_step']`` when
    given), else nothing is replayed."""
    store = LocalDeadLetters(flow, state_dir)
    try:
        ids = store.parse_ids(wanted)  # SpecError for an id that is not a number
        rows = {str(r[0]): r for r in store.store.dead_rows(step, ids)}
        missing = [i for i in wanted if i not in rows]
        wrong = [i for i in wanted if i in rows and wanted[i].get("_step") not in (None, rows[i][1])]
        if missing or wrong:
            what = [f"{i} (no such dead letter{f' at step {step!r}' if step else ''})" for i in missing]
            what += [f"{i} (at step '{rows[i][1]}', not '{wanted[i].get('_step')}')" for i in wrong]
            raise SpecError(f"cannot replay dead letter(s) {', '.join(what)}; nothing was replayed — list "
                            f"them again (flownb.dead_letters / 'flownb dlq list')", field="id")
        known = {s.name for s in flow.actions}
        gone = sorted({rows[i][1] for i in wanted} - known)
        if gone:
            raise SpecError(f"dead letters of step(s) {', '.join(gone)} cannot be replayed: the flow has no "
                            f"such action step (steps: {', '.join(sorted(known))})", field="step")
        items, done = [], []
        for i in wanted:
            rid, dstep, _attempt, payload, _error = rows[i]
            try:
                stored = Message.from_json(payload)
            except MessageError:
                stored = undecodable(payload, dstep)
            new, edited = rebuild(dstep, i, stored)
            items.append((rid, dstep, new))
            done.append({"_id": i, "_step": dstep, "edited": edited,
                         "message_id": Message.from_json(new).id})
        now = time.time()
        with store.store.transaction("nothing was replayed; the dead letters are unchanged") as c:
            for rid, dstep, new in items:
                if c.execute("DELETE FROM dead WHERE id=?", (rid,)).rowcount != 1:
                    raise SpecError(f"dead letter {rid} was replayed or removed meanwhile; nothing was "
                                    f"replayed — list the dead letters again")
                c.execute("INSERT INTO queue (step, available_at, attempt, payload) VALUES (?, ?, 1, ?)",
                          (dstep, now, new))
        return done
    finally:
        store.close()
