"""LocalRuntime: a whole flow in one process, steps joined by the durable SQLite queue.

Each action step repeatedly claims a batch of due messages, runs
:meth:`flownb.runtime.core.StepRunner.run_payloads` (which decodes, runs and routes each input),
then maps the routes to storage in ONE transaction: inputs deleted,
outputs queued for the next step, retries rescheduled (``available_at = now + delay``,
``attempt + 1``) and dead letters stored with their error and traceback. A poll's messages and the
trigger's new cursor are one transaction too. A crash repeats at most one uncommitted batch:
delivery is at-least-once, and an idempotent sink sees each row exactly once.

One thread runs the steps (:meth:`run` / :meth:`drain`); :meth:`submit` may be called from any
thread (the webhook server). Final listeners are called from the runtime's thread.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import operator
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ...components.route import UNMATCHED
from ...errors import FlownbError, MessageError, QueueFull, RuntimeFailure, StateError, StorageFull
from ...flow import Flow
from ...message import Message
from ...recorder import Recorder
from ...records import no_gc, to_records
from ..core import DeadLetter, ErrorInfo, Outcome, Route, StageRun, StageRunner, StepRunner, TriggerRunner, undecodable
from ..health import HEALTH
from ..on_error import event_from_exception
from .on_error import LocalErrorNotifier
from .store import QueueStore, open_state

__all__ = ["LocalRuntime", "RunSummary", "stages", "StepStats", "VirtualClock", "Progress", "FinalListener",
           "dead_letter_from_row", "wrap_pushed", "within_limit", "cached_depth"]

log = logging.getLogger("flownb.runtime.local")


class _NotebookLog(logging.StreamHandler):
    """flownb's log in a Jupyter kernel whose logging nobody configured: errors only, on stderr.
    Without it Python's last-resort handler prints every WARNING — the first dead letter of each
    kind, one per run — as a raw stderr box in the notebook, where the run's summary and
    :func:`flownb.dead_letters` already say what died. It steps aside (emits nothing) once the
    notebook configures logging itself (``logging.basicConfig()``: flownb's records reach it)."""

    def __init__(self) -> None:
        super().__init__()
        self.setLevel(logging.ERROR)
        self.addFilter(lambda _record: not logging.getLogger().handlers)


def _notebook_logging() -> None:
    """Install :class:`_NotebookLog` on the ``flownb`` logger once, in a Jupyter kernel only."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is None or not hasattr(shell, "kernel"):
        return
    logger = logging.getLogger("flownb")
    if not any(isinstance(h, _NotebookLog) for h in logger.handlers):
        logger.addHandler(_NotebookLog())

#: progress(step_name, messages_just_processed)
Progress = Callable[[str, int], None]
#: listener(trace_id, bodies of the last step for that trace; [] when filtered out or dead)
FinalListener = Callable[[str, list], None]


class VirtualClock:
    """A clock that jumps instead of sleeping (``flow.test`` retries without real waiting)."""

    def __init__(self, start: float | None = None):
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += max(seconds, 0.0)


_ERROR = operator.attrgetter("error")      # an Outcome's error: truthy when it failed
_OUTPUTS = operator.attrgetter("outputs")  # an Outcome's outputs ([] when it failed or filtered)

#: the column that names the branch(es) a route step sent a row down (flow.test, the route preview)
BRANCH_COLUMN = "_branch"


@dataclass
class StepStats:
    inputs: int = 0
    outputs: int = 0
    retried: int = 0
    dead: int = 0
    seconds: float = 0.0
    errors: int = 0  # trigger: failed polls
    #: error type -> [dead letters of that type in this run, the first one's message]
    dead_kinds: dict[str, list] = field(default_factory=dict)
    #: a route step: messages per branch taken, and the unmatched ones (filtered)
    branches: dict[str, int] | None = None
    unmatched: int = 0

    def count_dead(self, error: ErrorInfo) -> bool:
        """Count one dead letter (``dead`` and its kind); True for the first of its kind."""
        self.dead += 1
        kind = self.dead_kinds.setdefault(error.type, [0, error.message])
        kind[0] += 1
        return kind[0] == 1

    def count_route(self, branches: list[str]) -> None:
        """A route step's message: the branches it took (none: unmatched, filtered)."""
        if self.branches is None:
            self.branches = {}
        if not branches:
            self.unmatched += 1
        for b in branches:
            self.branches[b] = self.branches.get(b, 0) + 1

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"in": self.inputs, "out": self.outputs, "retried": self.retried, "dead": self.dead,
             "seconds": round(self.seconds, 6), "errors": self.errors}
        if self.branches is not None:  # a route step that routed something
            d["branches"] = dict(self.branches)
            d["unmatched"] = self.unmatched
        return d


@dataclass
class RunSummary:
    """What a run did: per step in/out/retried/dead and time; what is still queued."""

    flow: str
    steps: dict[str, StepStats]
    elapsed: float
    pending: dict[str, int] = field(default_factory=dict)
    next_retry_in: float | None = None
    dead_letters: int = 0
    poll_errors: list[str] = field(default_factory=list)

    @property
    def messages(self) -> int:
        return sum(s.inputs for s in list(self.steps.values())[1:])

    @property
    def msg_per_s(self) -> float:
        return self.messages / self.elapsed if self.elapsed > 0 else 0.0

    def to_dict(self) -> dict:
        return {"flow": self.flow, "elapsed": self.elapsed, "msg_per_s": self.msg_per_s,
                "steps": {k: v.to_dict() for k, v in self.steps.items()}, "pending": self.pending,
                "next_retry_in": self.next_retry_in, "dead_letters": self.dead_letters,
                "poll_errors": self.poll_errors}


def dead_letter_from_row(row: tuple) -> DeadLetter:
    """A :class:`DeadLetter` from a ``dead`` table row (id, step, attempt, payload, error)."""
    rid, step, attempt, payload, error = row
    try:
        message = Message.from_json(payload)
    except MessageError:
        message = undecodable(payload, step)
    message.attempt = attempt
    return DeadLetter(id=str(rid), step=step, message=message, error=ErrorInfo.from_dict(orjson.loads(error)))


#: (index in the submitted items, message, wire form) of a pushed body that may be queued
Pushed = tuple[int, Message, bytes]


def wrap_pushed(items: Sequence[tuple[dict, dict | None]], emit: Callable[[dict, dict], tuple[Message, bytes]],
                trigger: str) -> tuple[list[Message | FlownbError], list[Pushed]]:
    """Pushed ``(body, headers)`` pairs as the trigger's messages (``emit``: ``TriggerRunner.emit``):
    per item its Message or the MessageError that refuses it (not a JSON object; a body the codec
    refuses — NaN, infinity … — or over ``max_message_bytes``), and the items that may be queued.
    Shared by ``LocalRuntime.submit_many`` and ``flownb.runtime.local.ingress.FirstQueue``."""
    results: list[Message | FlownbError] = []
    accepted: list[Pushed] = []
    for body, headers in items:
        if not isinstance(body, dict):
            results.append(MessageError(f"a message body must be a JSON object, got {type(body).__name__}",
                                        step=trigger))
            continue
        try:  # a body the codec refuses is refused alone
            message, payload = emit(body, {str(k): str(v) for k, v in (headers or {}).items()})
        except MessageError as exc:
            results.append(exc)
            continue
        results.append(message)
        accepted.append((len(results) - 1, message, payload))
    return results, accepted


def within_limit(results: list[Message | FlownbError], accepted: list[Pushed], depth: int, limit: int,
                 step: str) -> list[Pushed]:
    """The ``accepted`` items that fit into ``step``'s queue holding ``depth`` of at most ``limit``
    messages; each one beyond is refused in ``results`` (QueueFull)."""
    room = max(0, limit - depth)
    for i, _m, _p in accepted[room:]:
        results[i] = QueueFull(f"queue of step '{step}' holds {depth} messages (limit {limit}); retry later",
                               depth=depth, limit=limit)
    return accepted[:room]


def cached_depth(owner: Any, step: str) -> int:
    """``owner.store.depth(step)``, read again at most every 0.1 s (``owner._depth_cache``: (read at,
    depth), which the caller bumps by what it queues). The runtime drains the queue meanwhile: the
    cached depth can only over-estimate it, never let the queue grow past its limit."""
    at, depth = owner._depth_cache
    now = time.monotonic()
    if now - at > 0.1:
        depth = owner.store.depth(step)
        owner._depth_cache = (now, depth)
    return depth


class LocalRuntime:
    """Run ``flow`` on SQLite queues in ``state_dir`` (``<state_dir>/<flow>.db``), or in memory."""

    def __init__(self, flow: Flow, state_dir: Path | str | None = Path(".flownb"), *, memory: bool = False,
                 batch_size: int = 1000, max_queue: int = 10_000, retry_wait: float = 60.0,
                 clock: Callable[[], float] | None = None, record: bool = False,
                 logger: logging.Logger | None = None, reset_state: bool = False,
                 max_deliveries: int | None = None, fuse: bool = True, on_error: bool = True):
        """``reset_state``: move the state directory's files for this flow aside and start over.
        ``max_deliveries``: a message whose processing the process did not survive this many times
        is dead-lettered as poison (default ``FLOWNB_MAX_DELIVERIES`` or 3).
        ``fuse``: run consecutive steps as fused stages (:func:`stages`; ``flownb run --no-fuse``
        turns it off): a batch goes through a stage in memory, committed in one transaction."""
        self.flow = flow.resolved()
        self.state_dir = Path(state_dir) if state_dir is not None else None
        if not memory and self.state_dir is None:
            raise ValueError("state_dir is required unless memory=True")
        self.batch_size = batch_size
        self.max_deliveries = max_deliveries or int(os.environ.get("FLOWNB_MAX_DELIVERIES", "3"))
        self.max_queue = max_queue
        self.retry_wait = retry_wait
        self.clock = clock or time.time
        self.log = logger or log
        _notebook_logging()
        self.steps = [s.name for s in self.flow.actions]  # route branches' steps included, each its own queue
        self._first = self.flow.steps[0].name if self.flow.steps else None
        links = self.flow.links()
        self._next = {s: links[s] for s in self.steps}
        self.trigger = TriggerRunner(self.flow, state_dir=self.state_dir)
        self.runners: dict[str, StepRunner] = {}
        for name in self.steps:
            self.runners[name] = StepRunner(self.flow, name, state_dir=self.state_dir)
        self.fuse = fuse
        #: step -> (its stage, its index in it); a step's queue is claimed by its own name, and what
        #: it emits goes on through the rest of its stage in memory
        self._stage: dict[str, tuple[StageRunner, int]] = {}
        for group in stages([self.runners[n] for n in self.steps], fuse=fuse):
            stage = StageRunner(group)
            for i, r in enumerate(group):
                self._stage[r.step.name] = (stage, i)
        #: the queues a poll feeds (back-pressure, :meth:`_has_room`): the first step's, and with
        #: fused stages those of the first stage's members and of the steps its outputs go to
        self._fed: list[str] = []
        if self._first is not None:
            members = self._stage[self._first][0].names if fuse else [self._first]
            last = self.runners[members[-1]]
            after = [t for t in (last.targets or {}).values() if t is not None] if last.targets is not None \
                else [n for n in [self._next[members[-1]]] if n is not None]
            self._fed = list(dict.fromkeys([*members, *after])) if fuse else [self._first]
        if not memory and self.state_dir is None:
            raise StateError("a state directory is needed (or memory=True for an in-memory run)")
        self._lock_file = None if self.state_dir is None or memory else lock_state_dir(self.state_dir, self.flow.name)
        try:
            self.store = QueueStore(None) if memory or self.state_dir is None else \
                open_state(self.state_dir, self.flow.name, reset=reset_state)
        except BaseException:
            self._unlock()
            raise
        try:
            if self.store.ensure_incremental_vacuum():
                self.log.info("flow '%s': the state database now gives space back as its queues drain "
                              "(a one-time VACUUM)", self.flow.name)
        except BaseException:
            self.store.close()
            self._unlock()
            raise
        names = [self.flow.trigger.name, *self.steps]
        self.stats = {n: StepStats() for n in names}
        self.recorded: dict[str, list[dict]] | None = {n: [] for n in names} if record else None
        #: (``record``) the bodies that left the flow: the last step's outputs, and when the flow ends
        #: with a route step, the outputs of each branch's last step (and of a route's empty branch)
        self.final: list[dict] = []
        self.routes_end = {s for s in self.steps if self.flow.step(s).route is not None and None in
                           self.flow.branch_targets(s).values()}
        #: (``record``) per route step, each message it routed: its body and the branches it took
        self.routes: dict[str, list[dict]] | None = \
            {s.name: [] for s in self.flow.actions if s.route is not None} if record else None
        #: the flight recorder (the spec's ``record:``; not for in-memory runs): flownb/recorder.py
        self.recorder = Recorder.of(self.flow) if not memory and self.state_dir is not None else None
        self.poll_errors: list[str] = []
        self._listeners: list[FinalListener] = []
        self._traces: dict[str, list] = {}      # trace -> [outstanding messages, final bodies]
        #: trace -> messages of it that left the last step without error (set by :meth:`inject`)
        self.delivered: dict[str, int] | None = None
        self._trace_lock = threading.Lock()
        self._submit_lock = threading.Lock()
        self._depth_cache: tuple[float, int] = (0.0, 0)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._started = time.perf_counter()
        #: rows whose batch ran but whose commit failed on a full disk: their claim is undone first
        self._unclaim: list[int] = []
        #: likewise a poll run through the first stage (its claim names no message)
        self._unclaim_poll = False
        #: a poll's records are running through the first stage (:meth:`poll_once`): a crash now
        #: leaves them at their source (the cursor did not move), not in a queue
        self.running_poll = False
        #: (``time.monotonic()`` when it began, what) of the poll or batch the runtime's thread is
        #: running now, None between them: ``flownb run``'s FLOWNB_STEP_TIMEOUT watchdog reads it
        self.busy: tuple[float, str] | None = None
        #: the flow's on_error actions (flownb.runtime.on_error); off for test runs unless asked
        self.errors: LocalErrorNotifier | None = None
        if self.flow.on_error is not None and on_error:
            self.errors = LocalErrorNotifier(self)
            for runner in self.runners.values():
                runner.on_setup_failure = functools.partial(self._setup_failed, runner.step.name)

    # -- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> LocalRuntime:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for r in self.runners.values():
            r.close()
        if self.errors is not None:
            self.errors.close()
        self.trigger.close()
        self.store.close()
        self._unlock()

    def _unlock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()  # closing releases the flock (the OS also does on kill -9)
            self._lock_file = None

    def stop(self) -> None:
        """Ask :meth:`run` to return after the current batch."""
        self._stop.set()
        self._wake.set()

    def add_final_listener(self, cb: FinalListener) -> None:
        """Call ``cb(trace_id, bodies)`` once every message of a submitted trace has left the flow
        (``bodies``: the last step's outputs for it; ``[]`` if filtered out or dead-lettered)."""
        self._listeners.append(cb)

    # -- input -----------------------------------------------------------------------------------
    def submit(self, body: dict, headers: dict | None = None) -> Message:
        """Durably queue one trigger output for the first action; thread-safe. Raises QueueFull
        when the first queue holds ``max_queue`` messages or more, MessageError for a body that is
        not a JSON object."""
        result = self.submit_many([(body, headers)])[0]
        if isinstance(result, FlownbError):
            raise result
        return result

    def submit_many(self, items: Sequence[tuple[dict, dict | None]]) -> list[Message | FlownbError]:
        """Durably queue several trigger outputs in ONE transaction (group commit); thread-safe.

        Returns, per item in order, its Message or the error that refused it: a MessageError for a
        body that is not a JSON object, QueueFull for the items beyond the first queue's limit.
        Nothing is queued for a refused item; everything else is committed together."""
        results, accepted = wrap_pushed(items, self.trigger.emit, self.flow.trigger.name)
        if not accepted:
            return results
        if self._first is None:  # a trigger-only flow: each body is the flow's output
            self.stats[self.flow.trigger.name].outputs += len(accepted)
            self._finish([(m.trace, [items[i][0]]) for i, m, _ in accepted])
            return results
        with self._submit_lock:
            depth = cached_depth(self, self._first)
            accepted = within_limit(results, accepted, depth, self.max_queue, self._first)
            if accepted:
                if self._listeners:
                    with self._trace_lock:
                        for _i, m, _p in accepted:
                            self._traces[m.trace] = [1, []]
                try:
                    self.store.enqueue(self._first, [p for _i, _m, p in accepted], self.clock())
                except BaseException:  # nothing was queued (e.g. StorageFull): no reply will come
                    if self._listeners:
                        with self._trace_lock:
                            for _i, m, _p in accepted:
                                self._traces.pop(m.trace, None)
                    raise
                self._depth_cache = (self._depth_cache[0], depth + len(accepted))
                self.stats[self.flow.trigger.name].outputs += len(accepted)
        if accepted:
            self._wake.set()
        return results

    def feed(self, sample: Any) -> int:
        """Queue the records of ``sample`` as if the trigger had emitted them (one transaction).
        ``sample``: a DataFrame, an iterable of dicts or one dict, read by
        :func:`flownb.records.to_records`, the conversion ``Mapping.preview`` and ``flow.test`` use
        (so a fed DataFrame's dotted columns, NaN and timestamps become what the preview showed)."""
        msgs = [self.trigger.emit(b) for b in to_records(sample)]
        if self._first is not None:
            self.store.enqueue(self._first, [p for _, p in msgs], self.clock())
        self._count_trigger([m for m, _ in msgs])
        return len(msgs)

    def inject(self, step: str, messages: Sequence[Message]) -> None:
        """Queue ``messages`` for action step ``step`` as if the step before had emitted them (one
        transaction), each followed to its end by the final listeners and counted in
        :attr:`delivered` when it leaves the last step (``flow.retest`` of dead letters, which start
        where they died)."""
        if step not in self._next:
            raise FlownbError(f"flow '{self.flow.name}' has no action step '{step}'; steps: "
                              f"{', '.join(self.steps)}")
        payloads = [m.to_json() for m in messages]
        if self.delivered is None:
            self.delivered = {}
        if self._listeners:
            with self._trace_lock:
                for m in messages:
                    self._traces[m.trace] = [1, []]
        self.store.enqueue(step, payloads, self.clock())

    def _count_trigger(self, msgs: list[Message]) -> None:
        name = self.flow.trigger.name
        self.stats[name].outputs += len(msgs)
        if self.recorded is not None:
            self.recorded[name].extend(m.body for m in msgs)

    def poll_once(self, *, raise_errors: bool = False, progress: Progress | None = None,
                  queue: bool = False) -> int:
        """Poll the trigger once (polling triggers only); commit messages + cursor atomically.

        With fused stages, a poll's records run through the first stage in memory and the new
        cursor is committed with the stage's outcomes, in one transaction (never queued for the
        first step: no encoding, no queue rows, no decoding), when the first step's queue holds
        nothing due (what is queued goes first) and its component is set up. A crash before that
        commit leaves the cursor where it was: the poll is redone (at-least-once, as a stage's
        batch). The poll's claim (:meth:`QueueStore.claim_poll`) tells the next process that one
        died with a poll in hand: that poll is then queued for the first step, so that the claims
        of its batches find a record that kills the process (poison). ``queue``: queue the records
        for the first step all the same (tests that look at the queue)."""
        if self.trigger.kind != "poll":
            return 0
        name = self.flow.trigger.name
        state, _ = self.store.get_state(name)
        t0 = time.perf_counter()
        through = None if queue else self._through()
        self.busy = (time.monotonic(), f"trigger '{name}' ({self.flow.trigger.component}): a poll")
        try:
            return self._poll(name, state, through, t0, raise_errors, progress)
        finally:
            self.busy = None

    def _poll(self, name: str, state: dict, through: int | None, t0: float, raise_errors: bool,
              progress: Progress | None) -> int:
        try:
            msgs, payloads, new_state = self.trigger.poll(state, encode=through is None)
        except Exception as exc:  # logged; the trigger polls again next interval
            self.stats[name].errors += 1
            self.poll_errors.append(f"{type(exc).__name__}: {exc}")
            delay = max(self.trigger.next_delay(state), 1.0)  # never a tight loop of failing polls
            self.store.set_next_poll(name, self.clock() + delay)
            if self.errors is not None:
                self.errors.add(event_from_exception("poll_failed", self.flow.name, name, exc))
            if raise_errors:
                raise
            self.log.exception("trigger '%s' failed to poll; next try in %.1fs", name, delay)
            return 0
        now = self.clock()
        dead = [(name, 1, p, orjson.dumps(info.to_dict())) for _m, info, p in self.trigger.last_dead]
        next_at = now + self.trigger.next_delay(new_state)
        deliveries = 0  # the first records of the poll the process died with in hand
        if through is not None and msgs and self.store.claim_poll():
            t1 = time.perf_counter()
            self._run_through(through, msgs[:self.batch_size], (name, new_state, next_at), dead, progress,
                              rest=msgs[self.batch_size:])
            t0 += time.perf_counter() - t1  # the stage's time is its members'
        else:
            if through is not None and msgs:  # the process died running this poll through: queued, the
                payloads = [m.to_json() for m in msgs]  # death counted for the batch it had in hand
                deliveries = self.batch_size
            self.store.commit_poll(name, self._first, payloads, new_state, next_at, now, dead=dead,
                                   died=deliveries)
        for _m, info, _p in self.trigger.last_dead:
            self.stats[name].count_dead(info)
            self.log.warning("trigger '%s': a record was dead-lettered: %s", name, info.message)
        self.stats[name].seconds += time.perf_counter() - t0
        self._count_trigger(msgs)
        return len(msgs)

    def _through(self) -> int | None:
        """How many members of the first stage a poll's records may run through in memory now (see
        :meth:`poll_once`), or None: queue them for the first step."""
        first = self._first
        if not self.fuse or first is None:
            return None
        now = self.clock()
        stage, _ = self._stage[first]
        if not self.runners[first].ensure_open(now) or self.store.has_due(first, now):
            return None
        stop = 1
        while stop < len(stage.runners) and stage.runners[stop].ensure_open(now):
            stop += 1
        return stop

    def _run_through(self, stop: int, msgs: list[Message], cursor: tuple[str, dict, float], dead: list,
                     progress: Progress | None, rest: list[Message]) -> None:
        """Run a poll's records (``msgs``, claimed by :meth:`QueueStore.claim_poll`) through the
        first ``stop`` members of the first stage; commit the outcomes and ``cursor`` together, and
        queue the ``rest`` of a poll larger than a batch for the first step in the same transaction
        (a crash repeats at most one batch's effects, as for queued messages)."""
        assert self._first is not None
        stage, _ = self._stage[self._first]
        self.running_poll = True
        self.busy = (time.monotonic(), f"step '{self._first}': a poll's batch of {len(msgs)} record(s)")
        try:
            run = stage.run_messages(0, stop, msgs, encode_last=self._next[stage.names[stop - 1]] is not None
                                     or stage.runners[stop - 1].targets is not None)
        except BaseException as exc:  # as in process_step: the process must end; the poll is redone
            if not isinstance(exc, KeyboardInterrupt):
                HEALTH.fail(f"step '{stage.current}'", exc)
            raise
        try:
            self._commit(None, run, cursor=cursor, poll_dead=dead, rest=[m.to_json() for m in rest])
        except StorageFull:  # the cursor did not move: the poll is redone; its claim is no death
            self.running_poll = False  # the process goes on (no crash to explain)
            self._unclaim_poll = True
            with contextlib.suppress(StorageFull):
                self._undo_claims()
            raise
        self.running_poll = False
        if progress is not None:
            for step, outcomes, _t in run.steps:
                progress(step, len(outcomes))

    def poll_backlog(self, *, raise_errors: bool = False, limit: int | None = None,
                     progress: Progress | None = None) -> int:
        """Poll once, then again while the trigger says more is ready now (``next_delay`` 0 after a
        poll that emitted messages: a full batch of ``csv.poll``/``sql.poll``/``http.poll``), at most
        ``limit`` polls (default: until the source is read). Back-pressure, not buffering: before
        each further poll the queued messages are processed while the queues a poll feeds (the
        first step's; with fused stages also those after the first stage) hold ``max_queue`` or
        more, so a source of any size holds at most ``max_queue`` plus one poll's outputs there;
        when nothing can be processed (a step not ready, only retries waiting) polling stops here
        and :meth:`drain` reports why."""
        total = polls = 0
        while not self._stop.is_set():
            with no_gc():  # as in drain_pass
                n = self.poll_once(raise_errors=raise_errors, progress=progress)
            total += n
            polls += 1
            due = self.next_poll_at()
            if not n or due is None or due > self.clock() or (limit is not None and polls >= limit):
                break
            if not self._make_room(progress):
                break
        return total

    def _has_room(self) -> bool:
        """Whether the queues a poll feeds hold fewer than ``max_queue`` messages: the first step's,
        and with fused stages those of the first stage's other members and of the steps after it
        (a poll's records run through that stage in memory, :meth:`poll_once`)."""
        return self._first is None or self.store.depth_of(self._fed) < self.max_queue

    def _make_room(self, progress: Progress | None = None) -> bool:
        """Process queued messages until the first queue holds fewer than ``max_queue``; False when
        that cannot happen now (nothing processable, or a stop was asked for)."""
        while not self._has_room():
            if self._stop.is_set():
                return False
            self._undo_claims()
            if not self.drain_pass(progress):
                return False
        return True

    def next_poll_at(self) -> float | None:
        """When the polling trigger is due (None: not polled yet, so now)."""
        return self.store.get_state(self.flow.trigger.name)[1]

    # -- steps -----------------------------------------------------------------------------------
    def process_step(self, name: str, progress: Progress | None = None) -> int:
        """Claim one batch for step ``name``, run it through the rest of its fused stage (the
        members whose component is set up), commit all outcomes in one transaction; return the
        batch size. A step whose component cannot be set up claims nothing (see
        :meth:`StepRunner.ensure_open`); a suspect (a message the process died on) runs through
        ``name`` alone, so that poison is counted at the step that kills the process."""
        now = self.clock()
        if not self.runners[name].ensure_open(now):
            return 0
        rows = self.store.claim(name, now, self.batch_size)
        if not rows:
            return 0
        stage, start = self._stage[name]
        stop = start + 1
        if rows[0][3] == 0:  # not a suspect: on through the members that are ready
            while stop < len(stage.runners) and stage.runners[stop].ensure_open(now):
                stop += 1
        self.busy = (time.monotonic(), f"step '{name}': a batch of {len(rows)} message(s)")
        try:
            return self._process(name, rows, stage, start, stop, progress)
        finally:
            self.busy = None

    def _process(self, name: str, rows: list, stage: StageRunner, start: int, stop: int,
                 progress: Progress | None) -> int:
        try:
            run = stage.run_payloads(start, stop, [r[2] for r in rows], [r[1] for r in rows],
                                     deliveries=[r[3] for r in rows], max_deliveries=self.max_deliveries,
                                     encode_last=self._next[stage.names[stop - 1]] is not None
                                     or stage.runners[stop - 1].targets is not None)
        except BaseException as exc:  # not an Exception (those are outcomes): the process must end
            if not isinstance(exc, KeyboardInterrupt):
                HEALTH.fail(f"step '{stage.current}'", exc)  # the batch stays claimed: redone after restart
            raise
        try:
            self._commit(rows, run)
        except StorageFull:  # the batch stays queued and is redone; its claim must not count as a death
            self._unclaim.extend(r[0] for r in rows)
            raise
        if progress is not None:
            for step, outcomes, _t in run.steps:
                progress(step, len(rows) if step == name else len(outcomes))
        return len(rows)

    def _commit(self, rows: list | None, run: StageRun, *, cursor: tuple[str, dict, float] | None = None,
                poll_dead: list | None = None, rest: list[bytes] | None = None) -> None:
        """Map each outcome's route to storage, all in one transaction: the claimed rows (the first
        member's inputs) are deleted, retried in place or dead-lettered; a later member's message
        that fails is queued for that member (retry) or dead-lettered there; the last member's
        outputs are queued for the step after it. ``rows`` None: the first member's inputs were a
        poll's records in memory (:meth:`_run_through`), which fail as a later member's do, and the
        trigger's ``cursor`` (and the poll's own dead letters, ``poll_dead``, and the ``rest`` of its
        records, queued for the first step) are committed too."""
        done: list[int] = []
        retries: list[tuple[float, int, int]] = []
        now = self.clock()
        first_step = self._first or ""  # rest: only when there is a first step
        queued: list[tuple[str, float, int, bytes]] = [(first_step, now, 1, p) for p in rest or ()]
        dead: list[tuple] = list(poll_dead or ())
        died: list[tuple[str, Outcome, int]] = []
        retried: dict[str, int] = {}  # step -> messages it retried in this batch
        first, outcomes, _t = run.steps[0]
        for (rid, attempt, payload, _deliveries), o in zip(rows or (), outcomes if rows is not None else (),
                                                            strict=True):
            err = o.error
            if err is None:  # forwarded or filtered (Outcome.route): the input is done
                done.append(rid)
                continue
            route = o.route  # a retry or a dead letter: it carries its error
            if route is Route.RETRY:
                after = o.retry_after or 0.0
                retries.append((now + after, attempt + 1, rid))
                retried[first] = retried.get(first, 0) + 1
                self.log.info("step '%s': attempt %d failed (%s: %s); retry in %.2fs", first,
                              attempt, err.type, err.message, after)
            else:
                done.append(rid)
                dead.append((first, attempt, payload, orjson.dumps(err.to_dict())))
                died.append((first, o, attempt))
        for name, outs, _t in (run.steps[1:] if rows is not None else run.steps):
            for o in filter(_ERROR, outs):  # those that failed
                err = o.error
                assert err is not None
                attempt = o.message.attempt
                if o.retry_after is not None:
                    queued.append((name, now + o.retry_after, attempt + 1, o.retry_payload()))
                    retried[name] = retried.get(name, 0) + 1
                    self.log.info("step '%s': attempt %d failed (%s: %s); retry in %.2fs", name,
                                  attempt, err.type, err.message, o.retry_after)
                else:
                    dead.append((name, attempt, o.dead_payload(), orjson.dumps(err.to_dict())))
                    died.append((name, o, attempt))
        routed: list[tuple[str, bytes]] = []  # a route step's outputs: each to its branch's step
        outputs = run.outputs()
        if self.runners[run.last].targets is not None:
            routed = [(t, p) for t, p in run.destinations(None) if t is not None]
            outputs = []
        # a poison suspect ran through its step alone: its outputs carry the deaths so far on, so
        # the later member that kills the process dead-letters it after max_deliveries in all
        stage, start = self._stage[run.steps[0][0]]
        deaths = rows[0][3] if rows is not None and start + 1 < len(stage.runners) else 0  # 0 unless a suspect
        record = None
        if self.recorder:  # the flight recorder's rows of every member, in the same transaction
            record = self.recorder.batch(run.steps[0][0], run.steps[0][1], now)
            for name, outs, _t in run.steps[1:]:
                record.rows.extend(self.recorder.rows(name, outs, now))
        self.store.commit_batch(next_step=self._next[run.last], now=now, done=done, outputs=outputs,
                                retries=retries, dead=dead, queued=queued, deaths=deaths, record=record,
                                routed=routed, cursor=cursor)
        for name, o, attempt in died:  # the first of each kind per step is a WARNING; the summary counts the rest
            err = o.error
            assert err is not None
            (self.log.warning if self.stats[name].count_dead(err) else self.log.debug)(
                "step '%s': message %s dead-lettered after attempt %d: %s: %s", name,
                o.message.id, attempt, err.type, err.message)
        for name, outs, seconds in run.steps:
            st = self.stats[name]
            st.seconds += seconds
            st.inputs += len(outs)
            st.outputs += sum(map(len, map(_OUTPUTS, outs)))  # a failed message has no outputs
            st.retried += retried.get(name, 0)
            if self.runners[name].targets is not None:  # a route step: the branches taken
                for o in outs:
                    if o.error is None and o.branches is not None:
                        st.count_route(o.branches)
            if self.routes is not None and name in self.routes:
                self.routes[name].extend({**o.message.body, BRANCH_COLUMN: ", ".join(o.branches) or UNMATCHED}
                                         for o in outs if o.error is None and o.branches is not None)
            if self.recorded is not None:  # what went on the wire (a date is a string there, a tuple a list)
                rec = self.recorded[name]
                ends = self.final if self._next[name] is None or name in self.routes_end else None
                for o in outs:
                    if o.error is None:
                        if o.payloads:
                            bodies = [orjson.loads(p)["body"] for p in o.payloads]
                        else:
                            bodies = [c.body for c in o.outputs]
                        rec.extend(bodies)
                        if ends is not None:  # left the flow (a route's copies: those that took no step)
                            ends.extend(bodies if o.targets is None else
                                        [b for b, to in zip(bodies, o.targets, strict=True) if to is None])
            if self._traces:
                self._settle(name, [o for o in outs if not o.undecodable])

    def _settle(self, name: str, outcomes: list[Outcome]) -> None:
        last = self._next[name] is None
        finished = []
        with self._trace_lock:
            for o in outcomes:
                t = self._traces.get(o.message.trace)
                if t is None or (o.error is not None and o.retry_after is not None):
                    continue
                if o.error is None and o.targets is not None and None in o.targets:  # a route: some end here
                    ends = [c.body for c, to in zip(o.outputs, o.targets, strict=True) if to is None]
                    t[1].extend(ends)
                    t[0] += len(o.outputs) - len(ends) - 1
                    if self.delivered is not None:
                        self.delivered[o.message.trace] = self.delivered.get(o.message.trace, 0) + len(ends)
                elif o.error is None and last and o.targets is None:
                    t[1].extend(c.body for c in o.outputs)
                    t[0] -= 1
                    if self.delivered is not None:
                        self.delivered[o.message.trace] = self.delivered.get(o.message.trace, 0) + 1
                elif o.error is None:
                    t[0] += len(o.outputs) - 1
                else:
                    t[0] -= 1
                if t[0] <= 0:
                    finished.append((o.message.trace, self._traces.pop(o.message.trace)[1]))
        self._finish(finished)

    def _finish(self, finished: list[tuple[str, list]]) -> None:
        for trace, bodies in finished:
            for cb in self._listeners:
                try:
                    cb(trace, bodies)
                except Exception:  # a listener must not stop the flow
                    self.log.exception("final listener %r failed", cb)

    def drain_pass(self, progress: Progress | None = None, max_batches: int = 20) -> int:
        """Process the steps round-robin, one batch of each per round, until a round moves nothing
        or ``max_batches`` rounds are done: a backlog flows through the whole flow batch by batch,
        so later steps are not starved and the queues between steps stay at about one batch (a
        step drained to the end first would hold the whole backlog for the next one). Returns
        the messages processed."""
        total = 0
        for _ in range(max_batches):
            moved = 0
            for name in self.steps:
                if self._stop.is_set():
                    return total + moved
                with no_gc():  # collected after the batch is committed and gone, not while it lives
                    moved += self.process_step(name, progress)
            total += moved
            if moved == 0:
                break
        return total

    def drain(self, progress: Progress | None = None, retry_wait: float | None = None) -> RunSummary:
        """Process until every queue is empty. Retries due within ``retry_wait`` seconds (total
        waiting, default the runtime's ``retry_wait``) are waited for; later ones stay queued and are
        reported as ``pending``. With a :class:`VirtualClock` the clock jumps instead of waiting."""
        budget = self.retry_wait if retry_wait is None else retry_wait
        while not self._stop.is_set():
            try:
                self._undo_claims()
                if self.drain_pass(progress):
                    continue
            except StorageFull:  # a run to idle cannot wait for space: say so (exit 1), nothing is lost
                try:
                    self._undo_claims()
                except StorageFull:
                    pass
                raise
            blocked = self._blocked()
            if blocked:  # a step's setup() fails: wait for its next try within the budget, or give up
                wait = max(min(self.runners[n].setup_retry_at for n in blocked) - self.clock(), 0.0)
                if wait > budget:
                    raise self._not_ready_error(blocked[0])
                budget -= wait
                if isinstance(self.clock, VirtualClock):
                    self.clock.advance(wait)
                else:
                    self._stop.wait(wait)
                continue
            nxt = self.store.next_due(self.steps)
            if nxt is None:
                break
            wait = max(nxt - self.clock(), 0.0)
            if isinstance(self.clock, VirtualClock):
                self.clock.advance(wait)
                continue
            if wait > budget:
                break
            budget -= wait
            self._stop.wait(wait)
        self._reclaim()
        return self.summary()

    def _reclaim(self) -> None:
        """Give the space of drained queues back to the disk (a full disk: next time)."""
        try:
            self.store.reclaim()
        except StorageFull:
            pass

    def run(self, until_idle: bool = False, stop_event: threading.Event | None = None,
            progress: Progress | None = None) -> RunSummary:
        """Poll when due and process queues until ``stop_event`` (or :meth:`stop`); with
        ``until_idle``: poll the source until it is read (:meth:`poll_backlog`, processing as it goes),
        :meth:`drain`, return."""
        if until_idle:
            try:
                self.poll_backlog(progress=progress)
                return self.drain(progress)
            finally:
                self.notify_errors(force=True)

        def stopped() -> bool:
            return self._stop.is_set() or (stop_event is not None and stop_event.is_set())

        backoff = 0.0
        idle_reclaimed = False
        while not stopped():
            self._wake.clear()
            try:
                self._undo_claims()
                if self.trigger.kind == "poll":
                    due = self.next_poll_at()
                    # back-pressure: a source with a backlog is polled again only once its first
                    # queue holds fewer than max_queue messages
                    if (due is None or self.clock() >= due) and self._has_room():
                        self.poll_once()
                busy = self.drain_pass(progress)
            except StorageFull as exc:
                # a full disk: what failed was rolled back (a batch stays queued and is redone, a
                # poll is polled again); not ready until a write succeeds, retried with a back-off
                if not backoff:
                    HEALTH.set_unready(self._storage_where, str(exc))
                    self.log.error("%s; processing paused, retrying until space returns", exc)
                backoff = min(max(backoff * 2, 0.5), 5.0)
                until = time.monotonic() + backoff
                while not stopped() and time.monotonic() < until:
                    self._stop.wait(min(0.2, until - time.monotonic()))
                continue
            if backoff:
                backoff = 0.0
                HEALTH.set_ready(self._storage_where)
                self.log.warning("flow '%s': the queue database is writable again; processing resumed",
                                 self.flow.name)
            self.notify_errors()
            if busy:
                idle_reclaimed = False
                continue
            if not idle_reclaimed:  # once each time the queues go idle
                self._reclaim()
                idle_reclaimed = True
            self._wake.wait(self._idle_wait())
        self.notify_errors(force=True)
        return self.summary()

    def notify_errors(self, *, force: bool = False) -> None:
        """Deliver pending failures to the flow's on_error actions when their window allows
        (``force``: now). A delivery that fails is logged and tried again next window."""
        if self.errors is None:
            return
        try:
            self.errors.tick(self.clock(), force=force)
        except StorageFull:  # the cursor could not move: delivered again next window
            self.log.error("flow '%s': the on_error cursor could not be saved (disk full)", self.flow.name)

    def _setup_failed(self, step: str, exc: Exception) -> None:
        if self.errors is not None:
            self.errors.add(event_from_exception("setup_failed", self.flow.name, step, exc))

    @property
    def _storage_where(self) -> str:
        return f"flow '{self.flow.name}' queue database"

    def _undo_claims(self) -> None:
        """Undo the claims of batches whose commit failed on a full disk (StorageFull while it is)."""
        if self._unclaim or self._unclaim_poll:
            self.store.unclaim(self._unclaim)
            self._unclaim, self._unclaim_poll = [], False

    def _idle_wait(self) -> float:
        now = self.clock()
        blocked = self._blocked()
        ready = [n for n in self.steps if n not in blocked]
        poll = self.trigger.kind == "poll" and self._has_room()  # a full first queue: no poll is due
        times = [t for t in (self.store.next_due(ready), self.next_poll_at() if poll else None)
                 if t is not None]
        times += [self.runners[n].setup_retry_at for n in blocked]
        return min([0.2, *(max(t - now, 0.001) for t in times)])

    def _blocked(self) -> list[str]:
        """Steps whose component's setup() failed and that have messages waiting."""
        return [n for n in self.steps if not self.runners[n].is_open and self.runners[n].setup_error is not None
                and self.store.depth(n)]

    def _not_ready_error(self, name: str) -> RuntimeFailure:
        r = self.runners[name]
        exc = r.setup_error
        return RuntimeFailure(
            f"step '{name}' ({r.step.component}) is not ready: setup() failed {r.setup_failures} time(s), "
            f"last with {type(exc).__name__}: {exc}; its {self.store.depth(name)} message(s) stay queued "
            f"(nothing was dead-lettered): fix the cause (is the service up? the credentials right?) "
            f"and run again")

    # -- reporting -------------------------------------------------------------------------------
    def summary(self) -> RunSummary:
        depths = self.store.depths()
        nxt = self.store.next_due(self.steps) if depths else None
        return RunSummary(flow=self.flow.name, steps=self.stats,
                          elapsed=time.perf_counter() - self._started,
                          pending={k: v for k, v in depths.items() if v},
                          next_retry_in=None if nxt is None else max(nxt - self.clock(), 0.0),
                          dead_letters=self.store.dead_count(), poll_errors=list(self.poll_errors))

    def dead_letters(self, step: str | None = None) -> list[DeadLetter]:
        return [dead_letter_from_row(r) for r in self.store.dead_rows(step)]


def lock_state_dir(state_dir: Path, flow: str):
    """Hold ``<state_dir>/<flow>.lock`` (flock) while a runtime uses the flow's queues: two runtimes
    on one database would process the same messages twice."""
    import fcntl
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        fh = open(state_dir / f"{flow}.lock", "a+")
    except OSError as exc:
        raise RuntimeFailure(f"cannot use state directory '{state_dir}': {exc}; pass a writable "
                             f"--state-dir") from exc
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        raise RuntimeFailure(f"flow '{flow}' is already running with state directory '{state_dir}' "
                             f"(another process or runtime holds {flow}.lock); stop it first, or pass "
                             f"another --state-dir") from None
    return fh



def stages(runners: list[StepRunner], *, fuse: bool = True) -> list[list[StepRunner]]:
    """The fused stages of the embedded runtime: runs of consecutive steps in which every step but
    the last has no outside effects (its component's ``effects`` is False: mapping, filter, split,
    python, …). A step with effects (``csv.write``, ``http.request``, ``sql.upsert``) ends its stage:
    it runs on the stage's outputs in the same batch, and the stage goes on from a new one after
    it, so an outside effect is never repeated because a later step's batch was redone.
    ``fuse=False``: one stage per step (every step's outputs committed to the next one's queue)."""
    groups: list[list[StepRunner]] = []
    links = runners[0].flow.links() if runners else {}
    for r in runners:
        prev = groups[-1][-1] if groups else None
        # a route step ends its stage; a step joins the stage of the step whose outputs it alone receives
        if fuse and prev is not None and not getattr(type(prev.component), "effects", False) \
                and prev.targets is None and links.get(prev.step.name) == r.step.name:
            groups[-1].append(r)
        else:
            groups.append([r])
    return groups
