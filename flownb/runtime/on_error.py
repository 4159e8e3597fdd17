"""Error flows: a flow's ``on_error`` actions receive its failures, batched and rate-limited.

An **event** is one failure, as a dict::

    {"kind": "dead_letter" | "setup_failed" | "poll_failed" | "schedule_failed", "flow", "step",
     "error_type", "error", "attempt", "trace", "message_id", "body", "at"}

(``at``: ISO 8601 UTC; ``body``: the dead message's body, or ``{"_truncated": true, "bytes": n}``
over 4 KiB, so a delivery stays small; ``trace``/``message_id``/``attempt``/``body`` are ``None`` for
the kinds that have no message). A failed scheduled notebook run (``schedule_failed``,
:mod:`flownb.schedule.on_error`) adds its own fields: ``schedule``, ``run_id``, ``status``,
``notebook``, ``output``, ``error_cell``. The error
flow receives one **delivery** message per window (:func:`delivery`)::

    {"flow", "count", "omitted", "events": [the first ``batch`` events], "by_step": {step: n},
     "by_kind": {kind: n}, "first_at", "last_at", "text": "flow 'shop': 3 failure(s) — …"}

so a chat webhook posts ``text`` once per window, and ``split: events`` in front of a
``sql.upsert`` gives an errors table one row per event.

Rate: a delivery goes out as soon as events are pending and ``every`` has passed since the last
one (the first failure is reported at once; a storm becomes one delivery per ``every``); at the end
of a run (``--until-idle``, SIGTERM) pending events are delivered without waiting. Events beyond
``batch`` in one window are counted in ``count``/``by_step`` and ``omitted``, not listed. A delivery
that fails (a step of the error flow raised, retried, dead-lettered or could not be set up) is logged
as an ERROR and the events stay pending for the next window: on the embedded runtime the
dead-letter cursor does not move, on RabbitMQ the events stay unacked in ``flownb.<flow>.errors``.
The error flow's own failures never become events (no loops).

Both runtimes use :class:`ErrorFlow` to run the actions and :class:`Window` to decide when; they
differ only in where pending events wait (:mod:`flownb.runtime.local.on_error`,
:mod:`flownb.runtime.amqp.on_error`).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import orjson

from ..errors import ErrorFlowFailed
from ..flow import Flow
from ..message import Message
from .core import ErrorInfo, StepRunner

__all__ = ["EVENT_KINDS", "ErrorFlow", "ErrorFlowFailed", "Window", "delivery", "event", "event_from_dead",
           "event_from_exception", "event_payload"]

log = logging.getLogger("flownb.on_error")
EVENT_KINDS = ("dead_letter", "setup_failed", "poll_failed", "schedule_failed")
#: the name the error flow's messages carry as their step (``meta.step`` of a delivery)
SOURCE_STEP = "on_error"


#: a dead message's body larger than this (as JSON) is not copied into its event
BODY_LIMIT = 4096


def event(kind: str, flow: str, step: str, error_type: str, error: str, *, at: float | None = None,
          message: Message | None = None, attempt: int | None = None) -> dict:
    """One failure as the error flow sees it (see the module docstring)."""
    assert kind in EVENT_KINDS, kind
    body = None
    if message is not None:
        size = len(orjson.dumps(message.body, default=str))
        body = message.body if size <= BODY_LIMIT else {"_truncated": True, "bytes": size}
    return {"kind": kind, "flow": flow, "step": step, "error_type": error_type, "error": error,
            "attempt": attempt if attempt is not None else (message.attempt if message is not None else None),
            "trace": message.trace if message is not None else None,
            "message_id": message.id if message is not None else None, "body": body,
            "at": iso(at if at is not None else time.time())}


def iso(t: float) -> str:
    """A UTC timestamp as ISO 8601 with milliseconds (sorts as text)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"


def event_from_dead(flow: str, message: Message, info: ErrorInfo) -> dict:
    """The event of a dead letter (``info``: its error as both runtimes store it)."""
    return event("dead_letter", flow, info.step, info.type, info.message, at=info.at, message=message,
                 attempt=info.attempt)


def event_from_exception(kind: str, flow: str, step: str, exc: BaseException) -> dict:
    from ..secrets import redact  # error texts can hold a connection string
    return event(kind, flow, step, type(exc).__name__, redact(str(exc)))


def event_payload(flow: str, ev: dict) -> bytes:
    """An event as the message RabbitMQ carries to the on_error worker."""
    return Message(body=ev, flow=flow, step=SOURCE_STEP).to_json()


def delivery(flow: str, events: Sequence[dict], total: int | None = None,
             counts: dict[tuple[str, str], int] | None = None, *, source: str = "flow") -> dict:
    """The body the error flow receives for one window: the listed ``events`` (at most ``batch``)
    of ``total`` failures; ``counts``: (kind, step) → n over all of them (default: the listed).
    ``source`` names what failed in ``text`` (a ``flow``, or a notebook ``schedule``)."""
    total = len(events) if total is None else total
    if counts is None:
        counts = dict(Counter((e["kind"], e["step"]) for e in events))
    by_step: Counter[str] = Counter()
    by_kind: Counter[str] = Counter()
    for (kind, step), n in counts.items():
        by_step[step] += n
        by_kind[kind] += n
    ats = [e["at"] for e in events if e.get("at") is not None]
    parts = []
    for (kind, step), n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        sample = next((e for e in events if e["kind"] == kind and e["step"] == step), None)
        what = {"dead_letter": "dead letter(s)", "setup_failed": "setup() failure(s)",
                "poll_failed": "failed poll(s)", "schedule_failed": "failed scheduled run(s)"}[kind]
        err = f" ({sample['error_type']}: {_short(sample['error'])})" if sample else ""
        parts.append(f"{step}: {n} {what}{err}")
    text = f"{source} '{flow}': {total} failure(s) — " + "; ".join(parts)
    return {"flow": flow, "count": total, "omitted": max(total - len(events), 0), "events": list(events),
            "by_step": dict(by_step), "by_kind": dict(by_kind),
            "first_at": min(ats) if ats else None, "last_at": max(ats) if ats else None, "text": text}


def _short(text: str, limit: int = 160) -> str:
    line = str(text).strip().splitlines()[0] if str(text).strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


class Window:
    """When a delivery is due: events pending and ``every`` seconds since the last delivery (the
    first one at once)."""

    def __init__(self, every: float):
        self.every = every
        self.last: float | None = None

    def due(self, now: float) -> bool:
        return self.last is None or now - self.last >= self.every

    def sent(self, now: float) -> None:
        self.last = now

    def wait(self, now: float) -> float:
        """Seconds until a delivery may go out."""
        return 0.0 if self.last is None else max(self.last + self.every - now, 0.0)


class ErrorFlow:
    """Runs a flow's ``on_error`` actions, in order, on one delivery message (in this process, like
    the embedded runtime runs a step): each action's outputs go to the next; an action that fails
    fails the delivery (:class:`ErrorFlowFailed`)."""

    def __init__(self, flow: Flow, *, state_dir: Any = None, logger: logging.Logger | None = None):
        if flow.on_error is None:
            raise ValueError(f"flow '{flow.name}' has no on_error")
        self.flow = flow.resolved()
        assert self.flow.on_error is not None
        self.config = self.flow.on_error
        # the actions run as the steps of a flow of their own (same name: same logs, same secrets)
        sub = self.flow.model_copy(update={"steps": list(self.config.steps), "on_error": None})
        self.runners = [StepRunner(sub, s.name, logger=logger, state_dir=state_dir) for s in self.config.steps]
        self.window = Window(float(self.config.every))

    @property
    def batch(self) -> int:
        return self.config.batch

    def send(self, body: dict) -> None:
        """Run the actions on one delivery; raise :class:`ErrorFlowFailed` naming the action that
        failed (nothing is retried here: the caller keeps the events for the next window)."""
        msgs = [Message(body=body, flow=self.flow.name, step=SOURCE_STEP)]
        for runner in self.runners:
            if not msgs:
                return
            try:
                runner.open()
            except Exception as exc:
                raise ErrorFlowFailed(f"flow '{self.flow.name}' on_error step '{runner.step.name}' "
                                      f"({runner.step.component}): setup() failed: {type(exc).__name__}: "
                                      f"{exc}; the failures stay pending and are sent again in "
                                      f"{self.window.every:g}s") from exc
            outs: list[Message] = []
            for out in runner.run_batch(msgs):
                if out.error is not None:
                    raise ErrorFlowFailed(f"flow '{self.flow.name}' on_error step '{runner.step.name}' "
                                          f"({runner.step.component}) failed: {out.error.type}: "
                                          f"{out.error.message}; the failures stay pending and are sent "
                                          f"again in {self.window.every:g}s")
                outs.extend(out.outputs)
            msgs = outs

    def close(self) -> None:
        for r in self.runners:
            try:
                r.close()
            except Exception:  # closing an error flow must not hide the run's own result
                log.exception("on_error step '%s': close() failed", r.step.name)
