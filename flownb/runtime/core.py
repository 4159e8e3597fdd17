"""The semantics both runtimes share: run a step on messages and say what becomes of each.

:class:`StepRunner` owns delivery. It decodes the wire payloads a runtime hands it
(:meth:`StepRunner.run_payloads`), runs the component, enforces *exactly one result per input*
(a ``process_batch`` that returns too few or too many results dead-letters the whole batch with a
clear error) and returns one :class:`Outcome` per input with its :class:`Route`:

- ``forward``: outputs (already wire-encoded) go to the next step (or the reply, at the last step);
- ``filtered``: processed, no output;
- ``retry``: send the input back after ``retry_after`` seconds (attempt + 1);
- ``dead``: dead-letter the input with the error attached.

The local runtime (SQLite) and the RabbitMQ worker only map routes to storage, so both give the same
outputs and dead letters. Exceptions derived from ``Exception`` become outcomes; anything else (a
``BaseException`` such as a pyo3 panic) propagates, and the runtime's thread guard ends the process
(:mod:`flownb.runtime.health`).
"""

from __future__ import annotations

import copy
import logging
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from types import GeneratorType
from typing import Any

import orjson

from ..components.base import Action, Component, Context, PollingTrigger, classify
from ..components.route import Routed
from ..errors import FatalError, MessageError, MessageTooLarge, PoisonMessage
from ..flow import Flow, RetryPolicy, Step
from ..message import ENCODE_OPTS, Message, encode_body, new_id
from ..registry import get, validate_step
from .health import HEALTH

log = logging.getLogger("flownb.runtime")

__all__ = ["ErrorInfo", "Outcome", "Route", "StageRun", "StageRunner", "StepRunner", "TriggerRunner",
           "build_component", "undecodable"]


class Route(str, Enum):
    """Where an input goes once its step ran (see the module docstring)."""

    FORWARD = "forward"
    FILTERED = "filtered"
    RETRY = "retry"
    DEAD = "dead"


@dataclass
class ErrorInfo:
    """The error attached to a retried or dead-lettered message."""

    type: str
    message: str
    step: str
    attempt: int
    retryable: bool
    traceback: str = ""
    at: float = field(default_factory=time.time)
    spec: str = ""  # Flow.spec_hash(short=True) of the spec the step ran under when it failed ("": older)

    @classmethod
    def from_exception(cls, exc: BaseException, step: str, attempt: int, retryable: bool,
                       redactor: Any = None, spec: str = "") -> ErrorInfo:
        """Message and traceback have the flow's secret values masked (``flownb.secrets.redact``:
        ``redactor`` and the process's active redactors, which ``flownb run``/``worker`` set up)."""
        from ..secrets import redact  # here, not at the top: keeps this module's imports as they are
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        return cls(type=type(exc).__name__, message=redact(str(exc), redactor), step=step, attempt=attempt,
                   retryable=retryable, traceback=redact(tb, redactor), spec=spec)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ErrorInfo:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass
class Outcome:
    """What became of one input message."""

    message: Message
    outputs: list[Message] = field(default_factory=list)
    payloads: list[bytes] = field(default_factory=list)  # wire form of ``outputs``
    retry_after: float | None = None                      # set: send back after this many seconds
    error: ErrorInfo | None = None                        # set with retry_after None: dead letter
    payload: bytes | None = None                          # the input's wire form (run_payloads)
    undecodable: bool = False                             # the payload was not a message: dead as received
    #: a route step's outcome: the branch each output took (``[]``: no branch matched, filtered) and
    #: the step each output goes to (None: the end of the flow); None for any other step, whose
    #: outputs all go to the step after it
    branches: list[str] | None = None
    targets: list[str | None] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def dead(self) -> bool:
        return self.error is not None and self.retry_after is None

    @property
    def route(self) -> Route:
        if self.error is None:  # inside a fused stage the outputs go on unencoded (no payloads)
            return Route.FORWARD if self.payloads or self.outputs else Route.FILTERED
        return Route.DEAD if self.retry_after is None else Route.RETRY

    def dead_payload(self) -> bytes:
        """What to store as the dead letter: the input as received (a step that changed its input
        in place before failing must not leak that change into the dead letter)."""
        if self.payload is not None:
            return self.payload
        return self.message.to_json()

    def retry_payload(self) -> bytes:
        """The input as received, with its attempt counted up (same reason as :meth:`dead_payload`)."""
        m = Message.from_json(self.payload) if self.payload is not None else self.message
        m.attempt = self.message.attempt + 1
        return m.to_json()


#: an Outcome (or a Message) without running ``__init__``: the fields not set keep their class
#: defaults (None, False), as for ``Outcome(message, outputs, payloads)``
_new_outcome = object.__new__


def undecodable(payload: bytes, step: str, attempt: int = 1) -> Message:
    """The message that stands for a payload that is not a flownb message (both runtimes store and
    list it the same way): ``{"_raw": <the payload as text>}``."""
    m = Message(body={"_raw": bytes(payload).decode("utf-8", "replace")}, step=step)
    m.attempt = attempt
    return m


#: more than the envelope (id, meta, no headers) adds to a body's size on the wire
_ENVELOPE = 512


def _too_large(step: str, size: int, limit: int, what: str) -> MessageTooLarge:
    return MessageTooLarge.over(step, size, limit, what)  # one wording, the preview's too


def build_component(flow: Flow, step: Step, *, trigger: bool, logger: logging.Logger | None = None,
                    state_dir: Path | None = None) -> Component:
    """Validate ``step`` (already parameter-resolved) and instantiate its component."""
    config = validate_step(step, trigger=trigger)
    cls = get(step.component, step=step.name)
    ctx = Context(flow=flow.name, step=step.name, config=config, params=dict(flow.parameters),
                  logger=logger or logging.getLogger(f"flownb.{flow.name}.{step.name}"),
                  state_dir=state_dir)
    return cls(config, ctx)


def _bodies(result: Any) -> list:
    if result is None:
        return []
    if isinstance(result, dict):
        return [result]
    if isinstance(result, (list, tuple, GeneratorType)) or hasattr(result, "__next__"):
        return list(result)
    raise MessageError(f"process() returned {type(result).__name__}; return a dict, a list of "
                       f"dicts, or None")


class StepRunner:
    """Runs one action step of a (resolved) flow on messages."""

    def __init__(self, flow: Flow, step_name: str, *, logger: logging.Logger | None = None,
                 state_dir: Path | None = None):
        self.flow = flow
        self.step = flow.step(step_name)
        self.policy: RetryPolicy = self.step.retry_policy
        self.component: Action = build_component(flow, self.step, trigger=False, logger=logger,
                                                 state_dir=state_dir)  # type: ignore[assignment]
        self.ctx = self.component.ctx
        self.max_bytes = flow.max_message_bytes
        self.spec = flow.spec_hash(short=True)  # stamped on every output (meta.spec) and failure (ErrorInfo.spec)
        self._open = False
        self.setup_error: Exception | None = None   # the last setup() failure, while not open
        self.setup_failures = 0
        self._setup_retry_at = 0.0
        self._where = f"flow '{flow.name}' step '{step_name}'"
        #: called with each setup() failure (the runtimes report it to the flow's on_error actions)
        self.on_setup_failure: Callable[[Exception], None] | None = None
        #: the component's outputs are JSON values already and it never changes its input in place
        #: (``json_native`` on the class: mapping, filter, split): inside a fused stage its outputs go
        #: on in memory, and its inputs need no copy as received
        self.native = bool(getattr(type(self.component), "json_native", False))
        #: a route step: branch name → the step a message taking it goes to (None: the end of the flow)
        self.targets: dict[str, str | None] | None = \
            flow.branch_targets(step_name) if self.step.route is not None else None

    def open(self) -> StepRunner:
        if not self._open:
            self.component.setup()
            self._open = True
        return self

    @property
    def is_open(self) -> bool:
        return self._open

    def ensure_open(self, now: float) -> bool:
        """Run the component's ``setup()`` if it has not succeeded yet. On failure (database down,
        bad credentials) remember why, report the step not ready (``/healthz``), and allow the next
        try only after a back-off (1 s doubling to 30 s, on the ``now`` clock): the runtime leaves
        the step's messages queued meanwhile instead of dead-lettering them. True when open."""
        if self._open:
            return True
        if now < self._setup_retry_at:
            return False
        try:
            self.open()
        except Exception as exc:
            self.setup_error = exc
            self.setup_failures += 1
            delay = min(30.0, 2.0 ** (self.setup_failures - 1))
            self._setup_retry_at = now + delay
            from ..secrets import redact  # /healthz is served to anyone who can reach the port
            HEALTH.set_unready(self._where, redact(f"setup() failed: {type(exc).__name__}: {exc}"))
            log.warning("step '%s' (%s): setup() failed (%s: %s); its messages stay queued; next try "
                        "in %.0fs", self.step.name, self.step.component, type(exc).__name__, exc, delay)
            if self.on_setup_failure is not None:
                self.on_setup_failure(exc)
            return False
        if self.setup_failures:
            log.info("step '%s': setup() succeeded after %d failure(s)", self.step.name, self.setup_failures)
        self.setup_error = None
        self.setup_failures = 0
        HEALTH.set_ready(self._where)
        return True

    @property
    def setup_retry_at(self) -> float:
        return self._setup_retry_at

    def close(self) -> None:
        if self._open:
            self._open = False
            self.component.close()

    def run(self, message: Message) -> Outcome:
        return self.run_batch([message])[0]

    def run_batch(self, messages: list[Message], *, encode: bool = True) -> list[Outcome]:
        """One outcome per message, in order. A component error for the whole batch
        (``process_batch`` raised) fails every message (retryable per the error); a wrong number of
        results dead-letters every message. ``BaseException`` propagates (see the module doc), and so
        does a ``setup()`` failure (call :meth:`ensure_open` first)."""
        if not messages:
            return []
        self.open()  # runtimes call ensure_open() first: a setup() failure is not the messages' fault
        try:
            results = self.component.process_batch(messages, self.ctx)
            if not isinstance(results, list):
                results = list(results)
        except Exception as exc:
            return [self.failure(m, exc) for m in messages]
        if len(results) != len(messages):
            wrong = FatalError(f"step '{self.step.name}' ({self.step.component}): process_batch returned "
                               f"{len(results)} results for {len(messages)} messages; return exactly one "
                               f"result (or exception) per input message")
            return [self.failure(m, wrong, retryable=False) for m in messages]
        if encode or not self.native:
            return [self._outcome(m, r, encode) for m, r in zip(messages, results, strict=True)]
        return self._outcomes_in_stage(messages, results)

    def _outcomes_in_stage(self, messages: list[Message], results: list) -> list[Outcome]:
        """:meth:`_outcome` with ``encode=False`` for a ``json_native`` component, the common cases
        in one loop (the same outcomes): ``None`` (filtered), the input body passed on unchanged,
        and a new body well under ``max_message_bytes`` of a message without headers. Anything
        else (a list, an error, a body the codec refuses or near the limit) goes through
        :meth:`_outcome`."""
        name, spec = self.step.name, self.spec
        room = self.max_bytes - _ENVELOPE
        dumps, opts = orjson.dumps, ENCODE_OPTS
        new = _new_outcome
        new_message, next_id = _new_outcome, new_id
        created = time.time()  # the batch's outputs were made now (Message.child, inline)
        out: list[Outcome] = []
        append = out.append
        for m, r in zip(messages, results, strict=True):
            if r is None:
                o = new(Outcome)
                o.message, o.outputs, o.payloads = m, [], []
                append(o)
                continue
            if type(r) is dict and (r is m.body or not m.headers):
                if r is not m.body:
                    try:
                        data = dumps(r, option=opts)
                    except (TypeError, orjson.JSONEncodeError):
                        append(self._outcome(m, r, False))  # its error, as the codec words it
                        continue
                    if len(data) > room or b"null" in data:  # near the limit, or maybe a NaN: exactly
                        append(self._outcome(m, r, False))
                        continue
                c = new_message(Message)  # m.child(r, name, spec)
                h = m.headers
                c.body, c.id, c.headers, c.flow, c.step = r, next_id(), h.copy() if h else {}, m.flow, name
                c.parent, c.trace, c.attempt, c.created, c.spec = m.id, m.trace, 1, created, spec
                o = new(Outcome)
                o.message, o.outputs, o.payloads = m, [c], []
                append(o)
                continue
            append(self._outcome(m, r, False))
        return out

    def run_payloads(self, payloads: list[bytes], attempts: list[int] | None = None, *,
                     deliveries: list[int] | None = None, max_deliveries: int = 3,
                     encode: bool = True) -> list[Outcome]:
        """Decode wire payloads and run them: one outcome per payload, in order. A payload that is
        not a message is dead-lettered as received (``Outcome.payload``), without running the step.
        ``attempts``: the delivery attempt of each payload when the runtime stores it apart.
        ``deliveries``: how many earlier deliveries of each payload ended with the process dying
        while processing it; at ``max_deliveries`` it is dead-lettered as poison without running.
        ``encode=False``: the outputs go on in memory to the next member of a fused stage
        (:class:`StageRunner`)."""
        name = self.step.name
        outcomes: list[Outcome | None] = [None] * len(payloads)
        msgs, where = [], []
        for i, payload in enumerate(payloads):
            try:
                m = Message.from_json(payload)
            except MessageError as exc:
                attempt = attempts[i] if attempts is not None else 1
                info = ErrorInfo.from_exception(exc, name, attempt, False, spec=self.spec)
                outcomes[i] = Outcome(undecodable(payload, name, attempt), error=info, payload=bytes(payload),
                                      undecodable=True)
                continue
            if attempts is not None:
                m.attempt = attempts[i]
            died = deliveries[i] if deliveries is not None else 0
            if died >= max_deliveries:
                poison = PoisonMessage(f"poison: the worker died {died} times while processing it (step "
                                       f"'{name}'); fix the cause, then replay it from the dead letters")
                outcomes[i] = Outcome(m, error=ErrorInfo.from_exception(poison, name, m.attempt, False, spec=self.spec),
                                      payload=payload)
                continue
            msgs.append(m)
            where.append(i)
        for i, out in zip(where, self.run_batch(msgs, encode=encode), strict=True):
            out.payload = payloads[i]
            outcomes[i] = out
        return outcomes  # type: ignore[return-value]

    def _outcome(self, message: Message, result: Any, encode: bool = True) -> Outcome:
        """``encode=False`` (inside a fused stage, the next member runs on the outputs in memory): a
        ``json_native`` component's outputs are not wire-encoded, only checked (JSON, and
        ``max_message_bytes`` when they could be near it); a body passed on unchanged (a filter) is
        not looked at again. Other components' outputs are encoded as always (their wire form is
        what the next step must see: a date becomes a string, a tuple a list)."""
        name = self.step.name
        if isinstance(result, BaseException):
            return self.failure(message, result)
        if self.targets is not None:
            return self._routed(message, result)
        encode = encode or not self.native
        try:
            children = []
            payloads = []
            for body in ((result,) if type(result) is dict else _bodies(result)):
                if not isinstance(body, dict):
                    raise MessageError(f"an output must be a JSON object (dict), got {type(body).__name__}",
                                       step=name)
                child = message.child(body, name, self.spec)
                if encode:
                    payload = child.to_json()
                    if len(payload) > self.max_bytes:
                        raise _too_large(name, len(payload), self.max_bytes, "an output of this step")
                    payloads.append(payload)
                elif body is not message.body:
                    size = len(encode_body(body, step=name))
                    if size + _ENVELOPE > self.max_bytes or message.headers:  # near the limit: exactly
                        payload = child.to_json()
                        if len(payload) > self.max_bytes:
                            raise _too_large(name, len(payload), self.max_bytes, "an output of this step")
                children.append(child)
        except MessageError as exc:
            return self.failure(message, exc.at(step=name), retryable=False)
        except Exception as exc:  # an iterator that raised while being consumed
            return self.failure(message, exc)
        return Outcome(message, children, payloads)

    def _routed(self, message: Message, result: Any) -> Outcome:
        """A route step's outcome: one output per branch taken (the input's body, a new id each),
        always encoded (a route step ends its stage: its outputs go to other steps' queues)."""
        name = self.step.name
        targets = self.targets
        assert targets is not None
        if not isinstance(result, Routed):
            wrong = FatalError(f"step '{name}' is a route step, but its component returned "
                               f"{type(result).__name__}; a route step's component answers with the branches "
                               f"it takes (flownb.components.route.Routed)")
            return self.failure(message, wrong, retryable=False)
        children, payloads = [], []
        try:
            for _branch in result.branches:
                child = message.child(message.body, name, self.spec)
                payload = child.to_json()
                if len(payload) > self.max_bytes:
                    raise _too_large(name, len(payload), self.max_bytes, "an output of this step")
                children.append(child)
                payloads.append(payload)
        except MessageError as exc:
            return self.failure(message, exc.at(step=name), retryable=False)
        return Outcome(message, children, payloads, branches=list(result.branches),
                       targets=[targets[b] for b in result.branches])

    def failure(self, message: Message, exc: BaseException, retryable: bool | None = None) -> Outcome:
        """Retry with back-off while attempts remain and the error is retryable; else dead-letter."""
        if retryable is None:
            retryable = classify(exc, self.component)
        info = ErrorInfo.from_exception(exc, self.step.name, message.attempt, retryable, spec=self.spec)
        if retryable and message.attempt < self.policy.max_attempts:
            after = getattr(exc, "after", None)
            delay = float(after) if after is not None else self.policy.delay(message.attempt)
            return Outcome(message, retry_after=delay, error=info)
        return Outcome(message, error=info)


@dataclass
class StageRun:
    """What one batch did in a fused stage: per member that ran, in order, its step name, the
    outcomes of the messages it processed (the first member's: one per input payload) and its
    time. The last member's forwarded outputs (``payloads``, encoded) go to the step after it;
    earlier members' forwarded outputs went on in memory and are accounted for by the next member."""

    steps: list[tuple[str, list[Outcome], float]]
    #: per member that ran, for each of its outcomes, the index of the input payload it came from
    origins: list[list[int]] = field(default_factory=list)

    @property
    def last(self) -> str:
        return self.steps[-1][0]

    def outputs(self) -> list[bytes]:
        return [p for o in self.steps[-1][1] if o.error is None for p in o.payloads]

    def destinations(self, after: str | None) -> list[tuple[str | None, bytes]]:
        """The last member's outputs with the step each goes to: ``after`` (the step after it), or
        for a route step the first step of the branch each took (None: the end of the flow)."""
        out: list[tuple[str | None, bytes]] = []
        for o in self.steps[-1][1]:
            if o.error is None:
                if o.targets is None:
                    out.extend((after, p) for p in o.payloads)
                else:
                    out.extend(zip(o.targets, o.payloads, strict=True))
        return out


class StageRunner:
    """Consecutive steps that run in one process, as one stage (fusion): a batch goes through all of
    them in memory; each member keeps its own outcomes (retries and dead letters name the member
    where the message failed, and its input as that member received it).

    A message goes from member k to member k+1 without its envelope being encoded and decoded
    when member k's component is ``json_native`` and member k+1's never changes its input in place
    (``json_native`` too); otherwise it goes through its wire form, exactly as between two
    separate steps. Only the last member's outputs are encoded for the queue."""

    def __init__(self, runners: list[StepRunner]):
        self.runners = runners
        self.names = [r.step.name for r in runners]
        #: the member running now (a BaseException names it: the step whose thread died)
        self.current = self.names[0]

    def run_payloads(self, start: int, stop: int, payloads: list[bytes], attempts: list[int] | None = None, *,
                     deliveries: list[int] | None = None, max_deliveries: int = 3,
                     encode_last: bool = True) -> StageRun:
        """Run ``payloads`` (queued for member ``start``) through members ``start`` … ``stop - 1``.
        ``encode_last=False``: the last member's outputs go nowhere on the wire (the flow's last
        step): they are checked as in-stage outputs are, not encoded."""
        t0 = time.perf_counter()
        first = self.runners[start]
        self.current = first.step.name
        outs = first.run_payloads(payloads, attempts, deliveries=deliveries, max_deliveries=max_deliveries,
                                  encode=encode_last and start + 1 >= stop)
        return self._go_on(start, stop, outs, t0, encode_last)

    def run_messages(self, start: int, stop: int, messages: list[Message], *,
                     encode_last: bool = True) -> StageRun:
        """Run ``messages`` (in memory: a poll's records, never queued) through members ``start`` …
        ``stop - 1``, as :meth:`run_payloads` runs queued ones. The first member receives them as a
        later member receives its predecessor's outputs: as they are when its component is
        ``json_native`` (its outcomes carry no ``payload``: a retry or dead letter is encoded from
        the message, which it never changed), else a copy through the wire form (kept as the
        outcome's ``payload``: the input as received)."""
        t0 = time.perf_counter()
        first = self.runners[start]
        self.current = first.step.name
        if first.native:
            msgs, snaps = messages, None
        else:
            snaps = [m.to_json() for m in messages]
            msgs = [Message.from_json(p) for p in snaps]
        outs = first.run_batch(msgs, encode=encode_last and start + 1 >= stop)
        if snaps is not None:
            for o, snap in zip(outs, snaps, strict=True):
                o.payload = snap
        return self._go_on(start, stop, outs, t0, encode_last)

    def _go_on(self, start: int, stop: int, outs: list[Outcome], t0: float, encode_last: bool) -> StageRun:
        """The first member's outcomes ``outs`` (it started at ``t0``) on through the members after it."""
        first = self.runners[start]
        t1 = time.perf_counter()
        steps = [(first.step.name, outs, t1 - t0)]
        origin = list(range(len(outs)))
        origins = [origin]
        for k in range(start + 1, stop):
            runner = self.runners[k]
            msgs: list[Message] = []
            #: per message the wire form it was received as (None: in memory); only when one has one
            snaps: list[bytes | None] | None = None
            came: list[int] = []
            native = runner.native
            for o, i in zip(outs, origin, strict=True):
                if o.error is not None:
                    continue
                outputs = o.outputs
                if native and not o.payloads and len(outputs) == 1:  # the usual case: one in memory
                    msgs.append(outputs[0])
                    came.append(i)
                    continue
                if snaps is None:
                    snaps = [None] * len(msgs)
                if o.payloads:  # encoded by its producer: the next member sees the wire form
                    for p in o.payloads:
                        msgs.append(Message.from_json(p))
                        snaps.append(p)
                elif native:
                    msgs.extend(outputs)
                    snaps.extend([None] * len(outputs))
                else:  # a member that may change its input in place gets a copy as received
                    for c in outputs:
                        p = c.to_json()
                        msgs.append(Message.from_json(p))
                        snaps.append(p)
                came.extend([i] * (len(msgs) - len(came)))
            origin = came
            origins.append(origin)
            self.current = runner.step.name
            outs = runner.run_batch(msgs, encode=encode_last and k + 1 >= stop) if msgs else []
            if snaps is not None:
                snaps.extend([None] * (len(msgs) - len(snaps)))
                for o, snap in zip(outs, snaps, strict=True):
                    o.payload = snap
            t0, t1 = t1, time.perf_counter()
            steps.append((runner.step.name, outs, t1 - t0))
        return StageRun(steps, origins)


class TriggerRunner:
    """Runs a polling trigger: ``poll(state)`` → (bodies, new state), the state never half-updated."""

    def __init__(self, flow: Flow, *, logger: logging.Logger | None = None, state_dir: Path | None = None):
        self.flow = flow
        self.step = flow.trigger
        self.component: Component = build_component(flow, self.step, trigger=True, logger=logger,
                                                    state_dir=state_dir)
        self.ctx = self.component.ctx
        self.max_bytes = flow.max_message_bytes
        self.spec = flow.spec_hash(short=True)  # meta.spec of every message the trigger emits
        #: records of the last poll that could not become messages (too large): (message, error,
        #: payload) — the runtime stores them as the trigger's dead letters with the new cursor
        self.last_dead: list[tuple[Message, ErrorInfo, bytes]] = []
        # a trigger whose records are plain JSON values (json_native: csv.poll) hands them on as they
        # are; any other's go on in their wire form (a datetime becomes a string, a tuple a list),
        # exactly as the first step receives them from its queue
        self.native = bool(getattr(type(self.component), "json_native", False))
        self._open = False
        self._delay_error = ""  # the last next_delay failure logged (said once, not every interval)

    @property
    def kind(self) -> str:
        return self.component.kind

    def open(self) -> TriggerRunner:
        if not self._open:
            self.component.setup()
            self._open = True
        return self

    def close(self) -> None:
        if self._open:
            self._open = False
            self.component.close()

    def next_delay(self, state: dict) -> float:
        """Seconds until the next poll. A component's ``next_delay`` may read what ``setup()``
        prepared (sql.poll's backlog), so it is set up first; while ``setup()`` fails (its source is
        down) the answer is the interval: ``poll`` raises that failure, the runtime logs it and polls
        again then — the trigger never dies of it. Likewise when ``next_delay`` itself fails (a saved
        cursor it cannot read, e.g. a schedule's ``until`` set by hand to a non-date): the poll,
        which reads the same cursor, then fails loudly every interval (logged, a ``poll_failed``
        event, ``--until-idle`` exits 1) instead of the trigger's thread dying of it."""
        assert isinstance(self.component, PollingTrigger)
        if not self._open:
            try:
                self.open()
            except Exception:
                return self.component.interval
        try:
            delay = self.component.next_delay(state)
        except Exception as exc:
            said = f"{type(exc).__name__}: {exc}"
            if said != self._delay_error:  # once per error: callers ask again every second or so
                self._delay_error = said
                log.warning("trigger '%s': cannot tell when to poll next from its cursor (%s); polling "
                            "every %.0fs until the cursor is fixed ('flownb state show|set')", self.step.name,
                            said, self.component.interval)
            return self.component.interval
        self._delay_error = ""
        return delay

    def poll(self, state: dict, *, encode: bool = True) -> tuple[list[Message], list[bytes], dict]:
        """Poll once on a copy of ``state``; return messages, their wire form, and the new state.
        Raises what the component raised (the caller logs it and polls again next interval).
        ``encode=False`` (the records go on in memory: the embedded runtime runs a poll through its
        first stage): no wire form is returned, and a record is only checked (JSON, and
        ``max_message_bytes`` exactly when it could be near it), as a fused stage checks its
        in-memory outputs."""
        self.open()
        assert isinstance(self.component, PollingTrigger), "only polling triggers poll"
        new_state = copy.deepcopy(state)
        msgs, payloads = [], []
        self.last_dead = []
        flow, name, spec = self.flow.name, self.step.name, self.spec
        room = self.max_bytes - _ENVELOPE
        dumps, opts = orjson.dumps, ENCODE_OPTS
        new_message, next_id = _new_outcome, new_id
        native = self.native
        records = self.component.poll(new_state, self.ctx)
        created = time.time()  # the poll's messages were made now (Message.first, inline)
        for body in records:
            if not isinstance(body, dict):
                raise MessageError(f"poll() yielded {type(body).__name__}; yield dicts", step=name)
            m = new_message(Message)  # Message.first(body, flow, name, spec)
            m.body, m.id, m.headers, m.flow, m.step, m.parent = body, next_id(), {}, flow, name, None
            m.trace, m.attempt, m.created, m.spec = m.id, 1, created, spec
            if not encode and native:
                try:
                    data = dumps(body, option=opts)
                except (TypeError, orjson.JSONEncodeError):
                    data = None  # to_json() below raises it as the codec words it
                if data is not None and len(data) <= room and b"null" not in data:
                    msgs.append(m)
                    continue
            payload = m.to_json()
            if len(payload) > self.max_bytes:  # never published; the cursor moves past it
                exc = _too_large(self.step.name, len(payload), self.max_bytes, "a record of this trigger")
                info = ErrorInfo.from_exception(exc, self.step.name, 1, False, spec=self.spec)
                self.last_dead.append((m, info, _truncated(m)))
                continue
            if encode:
                payloads.append(payload)
            elif not native:
                m = Message.from_json(payload)
            msgs.append(m)
        return msgs, payloads, new_state

    def emit(self, body: dict, headers: dict[str, str] | None = None) -> tuple[Message, bytes]:
        """Wrap a body received by a push trigger (webhook) as the first message of a run."""
        m = Message(body=body, headers=headers or {}, flow=self.flow.name, step=self.step.name, spec=self.spec)
        payload = m.to_json()
        if len(payload) > self.max_bytes:
            raise _too_large(self.step.name, len(payload), self.max_bytes, "the message")
        return m, payload


def _truncated(m: Message) -> bytes:
    """A stand-in small enough to store as a dead letter for a record over ``limit``: its top-level
    fields with long values cut (the record itself is still at its source)."""
    body = {}
    for k, v in m.body.items():
        text = orjson.dumps(v, default=str)
        body[k] = v if len(text) <= 256 else f"<{len(text):,} bytes, cut: the record is over max_message_bytes>"
    stand_in = Message(body={"_truncated": True, **body}, flow=m.flow, step=m.step, spec=m.spec)
    return stand_in.to_json()


@dataclass
class DeadLetter:
    """A message that a step gave up on, with the error attached. Both runtimes list these."""

    id: str            # the dead letter's own id within its store (row id / delivery tag)
    step: str
    message: Message
    error: ErrorInfo

    @property
    def spec(self) -> str:
        """The spec hash it died under: its error's ``spec`` (the step's spec when it gave up), else
        its message's ``meta.spec`` (the spec that produced it), else ``""`` (an older flownb's)."""
        return self.error.spec or self.message.spec

    def _repr_html_(self) -> str:  # a table in notebooks (lazy import: workers never load it)
        from ..display import dead_letters_html
        return dead_letters_html([self])

    def to_dict(self) -> dict:
        return {"id": self.id, "step": self.step, "message": self.message.to_dict(),
                "error": self.error.to_dict()}


class DeadLetterStore:
    """Interface of ``flownb dlq``: local (SQLite) and RabbitMQ implement it."""

    def list(self, step: str | None = None) -> list[DeadLetter]:  # pragma: no cover - interface
        raise NotImplementedError

    def show(self, dead_id: str) -> DeadLetter:  # pragma: no cover - interface
        raise NotImplementedError

    def replay(self, step: str | None = None, ids: Iterable[str] | None = None) -> int:  # pragma: no cover
        """Send dead letters back to their step's queue with attempt reset to 1; return the count."""
        raise NotImplementedError
