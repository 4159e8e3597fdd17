"""The flownb exception tree.

Every error flownb raises derives from :class:`FlownbError`::

    FlownbError
    ├── SpecError                  a spec (flow.yaml) or a flow built in Python is invalid; CLI exit 2
    │   ├── SpecSyntaxError        the YAML itself does not parse
    │   ├── UnknownComponentError  a component key is not installed (suggests the nearest)
    │   ├── ConfigError            a step's config does not match its component's model
    │   ├── ParameterError         an unknown or mistyped flow or notebook parameter
    │   ├── ExpressionError        a JSONata expression does not compile (carries the position)
    │   ├── ScheduleInputError     bad input for a schedule (name, cron, time zone, unknown schedule)
    │   └── UpgradeError           a spec change would strand queued messages (flownb plan/upgrade)
    ├── MessageError               a body is not a JSON object / not JSON-serialisable
    │   └── MessageTooLarge        a message over the flow's max_message_bytes
    ├── StepError                  raised by a component while processing a message
    │   ├── RetryableError         a transient failure (refused connection, HTTP 429/5xx, timeout)
    │   │   └── Retry              "try again later" (``flownb.Retry(after=…)``)
    │   └── FatalError             a permanent failure: dead-letter at once
    │       ├── PoisonMessage      the process died N times while processing it
    │       ├── EvaluationError    a JSONata expression failed on one input (e.g. T2001)
    │       └── EvaluationTimeout  a JSONata evaluation ran past its step's ``timeout``
    ├── RuntimeFailure             a runtime (local queue, broker) cannot do its job
    │   ├── QueueFull              the first queue is over its limit (back-pressure, HTTP 429)
    │   ├── Backpressure           an ingress's first queue is full: retry after ``retry_after``
    │   ├── StateError             a state directory's database is missing/empty/damaged (--reset-state)
    │   ├── StorageFull            the disk holding the queue database is full: nothing was written
    │   ├── ErrorFlowFailed        a delivery to the flow's on_error actions failed (sent again later)
    │   └── BrokerError            RabbitMQ unreachable or refused an operation
    │       ├── TopologyError      a queue/exchange exists with other arguments (configuration)
    │       └── Unavailable        an ingress cannot reach its queue: nothing was accepted
    ├── DeployError                export, image build, compose/k8s, Docker
    │   └── ExportError            a flow cannot be exported as it is (carries step and field)
    └── ScheduleError              a schedule cannot be run or stored

Errors carry data (``step``, ``field``, ``position`` …) so callers and widgets can show them without
parsing the message; the message always says what to do next. A located error builds its message
from its data when shown: ``str(e)`` is ``"step 'push', field 'url': <reason>"``, and code that learns
the location later adds it with ``raise exc.at(step=…, field=…)`` (a location already known is kept).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

__all__ = [
    "FlownbError", "SpecError", "SpecSyntaxError", "UnknownComponentError", "ConfigError",
    "ParameterError", "ExpressionError", "MessageError", "MessageTooLarge", "StepError", "Retry", "RetryableError",
    "FatalError", "PoisonMessage", "EvaluationError", "EvaluationTimeout", "RuntimeFailure", "QueueFull",
    "Backpressure", "StateError", "StorageFull", "BrokerError", "TopologyError", "Unavailable", "DeployError",
    "ExportError", "ScheduleError", "ScheduleInputError", "UpgradeError", "ErrorFlowFailed",
    "did_you_mean",
]


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return ``"; did you mean 'x'?"`` for the closest choice, or ``""``."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


class FlownbError(Exception):
    """Base of every flownb error."""

    step: str | None = None
    field: str | None = None

    def at(self, *, step: str | None = None, field: str | None = None) -> FlownbError:
        """Add where the error happened, keeping a location already known; returns the error."""
        if step and not self.step:
            self.step = step
        if field and not self.field:
            self.field = field
        return self

    @property
    def reason(self) -> str:
        """The message without its location."""
        return str(self.args[0]) if self.args else ""

    def _where(self) -> str:
        where = ([f"step '{self.step}'"] if self.step else []) + ([f"field '{self.field}'"] if self.field else [])
        return (", ".join(where) + ": ") if where else ""

    def __str__(self) -> str:
        return self._where() + self.reason if (self.step or self.field) else super().__str__()


class SpecError(FlownbError):
    """A flow spec is invalid. ``step`` and ``field`` locate the problem when known."""

    def __init__(self, message: str, *, step: str | None = None, field: str | None = None):
        super().__init__(message)
        self.step = step
        self.field = field


class SpecSyntaxError(SpecError):
    """The YAML text does not parse."""


class UnknownComponentError(SpecError):
    """A component key is not installed."""

    def __init__(self, key: str, installed: Iterable[str], *, step: str | None = None):
        installed = sorted(installed)
        self.key = key
        self.installed = installed
        super().__init__(
            f"unknown component '{key}'{did_you_mean(key, installed)} installed: {', '.join(installed)}",
            step=step, field="component",
        )


class ConfigError(SpecError):
    """A step's config does not validate against its component's config model."""


class ParameterError(SpecError):
    """An unknown parameter, or a value that does not fit the parameter's type."""


class ExpressionError(SpecError):
    """A JSONata expression does not compile. ``position`` is the 0-based character offset."""

    def __init__(self, message: str, *, expression: str = "", position: int | None = None,
                 step: str | None = None, field: str | None = None):
        self.expression = expression
        self.position = position
        super().__init__(message, step=step, field=field)

    def __str__(self) -> str:
        at = pointer = ""
        if self.position is not None:
            at = f" at position {self.position}"
            if self.expression:
                pointer = f"\n    {self.expression}\n    {' ' * max(self.position, 0)}^"
        return f"{self._where()}{self.reason}{at}{pointer}"


class MessageError(FlownbError):
    """A message body is not a JSON object, or is not JSON-serialisable."""

    def __init__(self, message: str, *, step: str | None = None):
        super().__init__(message)
        self.step = step


class MessageTooLarge(MessageError):
    """A message a step or the trigger produced is larger than the flow's ``max_message_bytes``:
    it is never published (a broker would refuse it, or choke); its input is dead-lettered."""

    def __init__(self, message: str, *, step: str | None = None, size: int = 0, limit: int = 0):
        super().__init__(message, step=step)
        self.size = size
        self.limit = limit

    @classmethod
    def over(cls, step: str, size: int, limit: int, what: str) -> MessageTooLarge:
        """The error a runtime gives for ``what`` (``"an output of this step"``) of ``size`` bytes
        over ``limit``, worded as the runtimes word it (``Mapping.preview(flow=…)`` uses it). The
        size is in KiB with one decimal, cut (not rounded): the envelope (flow name, ids, meta.spec)
        changes the exact byte count by tens of bytes, and a cut figure moves only every 102.4 bytes."""
        kib = (size * 10 // 1024) / 10
        return cls(f"{what} is {kib:,.1f} KiB, over the flow's max_message_bytes ({limit:,} bytes); "
                   f"emit smaller messages (split the record, drop large fields) or raise "
                   f"max_message_bytes in the spec (keep it under the broker's limit)",
                   step=step, size=size, limit=limit)


class StepError(FlownbError):
    """Raised while a component processes a message."""

    retryable: bool = False

    def __init__(self, message: str = "", *, data: Any = None):
        super().__init__(message)
        self.data = data


class RetryableError(StepError):
    """A transient failure: the runtime retries with back-off up to ``retry.max_attempts``."""

    retryable = True

    def __init__(self, message: str = "", *, after: float | None = None, data: Any = None):
        super().__init__(message, data=data)
        self.after = after


class Retry(RetryableError):
    """Raise ``flownb.Retry(after=seconds)`` from a component to be called again later."""

    def __init__(self, message: str = "retry requested", *, after: float | None = None):
        super().__init__(message, after=after)


class FatalError(StepError):
    """A permanent failure: the message goes to the dead-letter queue at once."""


class PoisonMessage(FatalError):
    """The process died (crash, out of memory, killed past its grace period) while processing this
    message, ``max_deliveries`` times: it is dead-lettered instead of crashing every restart."""


class EvaluationError(FatalError):
    """An expression failed on one input (e.g. T2001: arithmetic on a string). Not retryable: the
    same input fails the same way, so the message is dead-lettered at once."""

    def __init__(self, message: str, *, code: str | None = None, expression: str = "",
                 field: str | None = None, position: int | None = None):
        super().__init__(f"{message} (expression: {expression}); fix the expression or the input record")
        self.code = code
        self.expression = expression
        self.field = field
        self.position = position
        self.detail = message


class EvaluationTimeout(FatalError):
    """A JSONata evaluation (a ``mapping``, ``filter`` or ``split`` step, ``Mapping.preview``,
    ``Expression.raw(timeout=…)``) ran longer than its ``timeout``: an expression that never ends
    (a recursive lambda), or too much work for one message. The same input would run as long again,
    so it is not retried. ``seconds``, ``step``, ``field``, ``expression`` and ``code`` (``D1012``,
    jsonatapy's code for its own timeout) say which."""

    code = "D1012"

    def __init__(self, seconds: float, *, step: str | None = None, field: str | None = None,
                 expression: str = ""):
        self.seconds = seconds
        self.step = step
        self.field = field
        self.expression = expression
        #: the message without the step and field (a preview cell names its field itself)
        self.detail = f"evaluation exceeded {seconds:g} s; simplify the expression or raise the timeout"
        super().__init__(self.detail)

    def __str__(self) -> str:
        where = ([f"step '{self.step}'"] if self.step else []) + ([f"field '{self.field}'"] if self.field else [])
        if not where and self.expression:
            e = self.expression
            where.append(f"expression {e[:60]!r}" + ("…" if len(e) > 60 else ""))
        at = f" ({', '.join(where)})" if where else ""
        return (f"evaluation exceeded {self.seconds:g} s{at}; simplify the expression or raise "
                f"the {'step' if self.step else 'evaluation'}'s timeout")


class RuntimeFailure(FlownbError):
    """A runtime cannot do its job (state directory, queue database, broker)."""


class Backpressure(RuntimeFailure):
    """The flow's first queue is full; the client should retry after ``retry_after`` seconds."""


class StateError(RuntimeFailure):
    """A state directory's database is missing, empty or damaged although its marker says it existed;
    the message names the file and the choices (restore it, or ``--reset-state``)."""


class StorageFull(RuntimeFailure):
    """The disk (or quota) holding a queue database is full: the transaction was rolled back and
    nothing of it was written (SQLITE_FULL / ENOSPC). Transient: free space and it goes on."""


class ErrorFlowFailed(RuntimeFailure):
    """A delivery to the flow's ``on_error`` actions failed; its events stay pending and are sent
    again in the next window (flownb.runtime.on_error)."""


class QueueFull(RuntimeFailure):
    """The first queue holds more than ``max_queue`` messages: slow down and try again later."""

    def __init__(self, message: str, *, depth: int = 0, limit: int = 0):
        super().__init__(message)
        self.depth = depth
        self.limit = limit


class BrokerError(RuntimeFailure):
    """RabbitMQ is unreachable or refused an operation."""


class DeployError(FlownbError):
    """Export, image build, compose/Kubernetes generation or a Docker operation failed."""


class ExportError(DeployError):
    """A flow cannot be exported as it is: e.g. a local file its container could not be given
    (``step`` and ``field`` say which config field; the message says what to change)."""

    def __init__(self, message: str, *, step: str | None = None, field: str | None = None):
        super().__init__(message)
        self.step = step
        self.field = field


class TopologyError(BrokerError):
    """A configuration problem on the broker's side, not an outage: a queue or exchange that exists
    with other arguments, a broker URL or a ``FLOWNB_*`` broker setting that cannot be read. Retrying
    cannot fix it: a worker exits with it instead of reconnecting."""


class Unavailable(BrokerError):
    """The queue (broker) cannot be reached; nothing was accepted; retry later."""


class ScheduleError(FlownbError):
    """A schedule cannot be run or stored (state directory, notebook missing at run time …)."""


class ScheduleInputError(SpecError):
    """Bad input for a schedule (name, cron, time zone, parameters, unknown schedule); CLI exit 2."""


class UpgradeError(SpecError):
    """A spec change would strand queued messages (a step removed or renamed while its queues hold
    some), or an upgrade's renames are unconfirmed: nothing was moved; the message says what to do."""
