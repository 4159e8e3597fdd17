"""Base classes for components, and decorator shortcuts for plain functions.

Lifecycle (nameko style): ``__init__(config, ctx)`` → ``setup()`` → many ``process``/``poll`` calls →
``close()``. ``config`` is the validated instance of the component's ``Config`` model.

Action contract: ``process(message, ctx)`` returns a dict (one message), a list/iterator of dicts
(one message each), or ``None`` (filtered out). Raise :class:`flownb.Retry` or a
:class:`~flownb.errors.RetryableError` (or let a retryable exception through, see
:func:`classify`) to be retried with back-off; anything else dead-letters the message at once.

Polling-trigger contract: ``poll(state, ctx)`` yields bodies and updates ``state`` (a small JSON
dict) in place; the runtime commits the emitted messages and the new state atomically.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, cast

from pydantic import BaseModel, ConfigDict, Field
from typing_extensions import TypeVar

from .._duration import Duration
from ..errors import ConfigError, StepError

if TYPE_CHECKING:
    from ..flow import Step
    from ..message import Message

__all__ = ["Component", "Action", "PollingTrigger", "WebhookTrigger", "Context", "NoConfig",
           "PollConfig", "action", "polling_trigger", "classify", "Result"]

Result = dict | list | Iterator[dict] | None

#: the config model of a component: ``class SqlPoll(PollingTrigger[SqlPollConfig])`` types ``self.config``
ConfigT = TypeVar("ConfigT", bound=BaseModel, default=BaseModel)


class NoConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PollConfig(BaseModel):
    """Base config of polling triggers: every one has an ``interval``."""

    model_config = ConfigDict(extra="forbid")
    interval: Duration = Field(60.0, description="time between polls, e.g. 30s, 5m")


@dataclass
class Context:
    """What a component sees of its surroundings."""

    flow: str
    step: str
    config: BaseModel
    params: dict[str, Any] = field(default_factory=dict)
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("flownb"))
    state_dir: Path | None = None

    def secret(self, env_name: str) -> str:
        """The value of environment variable ``env_name``; a clear error when it is unset."""
        value = os.environ.get(env_name)
        if value is None:
            raise ConfigError(f"environment variable '{env_name}' is not set; export it (or add it to "
                              f"the deployment's env file) before running", step=self.step)
        return value


class Component(Generic[ConfigT]):
    """Base of triggers and actions. Subclasses set ``kind`` and ``Config``, and name the config
    model as the type parameter (``class Push(Action[PushConfig])``) so ``self.config`` is typed."""

    key: ClassVar[str] = ""
    kind: ClassVar[str] = "action"  # "action" | "poll" | "webhook"
    Config: ClassVar[type[BaseModel]] = NoConfig
    #: exception types that mean "try again later" for this component
    retryable_exceptions: ClassVar[tuple[type[BaseException], ...]] = ()
    #: the component changes something outside the flow (sends a request, writes a table or a
    #: file): ``flow.test`` runs it dry unless ``live=True`` (:meth:`Action.dry_run`)
    effects: ClassVar[bool] = False
    #: the component's outputs are plain JSON values (dict/list/str/int/float/bool/None) and it never
    #: changes its input message in place: inside a fused stage (docs/local.md) messages reach it
    #: and leave it without being encoded. Leave it False when unsure: nothing changes but speed
    json_native: ClassVar[bool] = False

    def __init__(self, config: ConfigT, ctx: Context):
        self.config = config
        self.ctx = ctx

    @classmethod
    def check_config(cls, config: Any, step: Step) -> None:
        """Extra validation beyond the model (e.g. compile expressions); raise SpecError subclasses."""

    def setup(self) -> None:
        """Open connections, compile expressions. Called once before the first message."""

    def close(self) -> None:
        """Release what ``setup`` opened."""


class Action(Component[ConfigT]):
    kind: ClassVar[str] = "action"

    def warn_dropped(self, fields: list[str], columns: list[str], target: str) -> None:
        """Say once per field name (a WARNING) that a writer with ``on_extra: ignore`` drops
        ``fields`` because they are not among ``columns`` of ``target``: data left out is never
        silent, and the log does not repeat itself for every batch."""
        seen: set[str] = self.__dict__.setdefault("_dropped_fields", set())
        new = [f for f in fields if f not in seen]
        if new:
            seen.update(new)
            self.ctx.logger.warning(
                "step '%s': field(s) %s are not columns of %s (%s) and are left out (on_extra: ignore); "
                "add them to 'columns' or write to a new file to keep them, or set on_extra: error to "
                "dead-letter such messages", self.ctx.step, new, target, ", ".join(columns))

    def process(self, message: Message, ctx: Context) -> Result:  # pragma: no cover - abstract
        raise NotImplementedError

    def dry_run(self, message: Message, ctx: Context) -> dict:
        """What processing ``message`` would send outside the flow, without sending it or opening a
        connection (``setup()`` has not run): ``flow.test`` records this for actions with
        ``effects`` and passes the message on unchanged, unless ``live=True``. Override it to show
        the request, statement or line your component would write."""
        return {"body": message.body}

    def dry_output(self, message: Message) -> Result:
        """What a dry run passes on (default: the message unchanged)."""
        return message.body

    def process_batch(self, messages: list[Message], ctx: Context) -> list[Result | BaseException]:
        """Process several messages; the default calls ``process`` per message and returns, per
        message, either its result or the exception it raised. Override for bulk work (a database
        write of the whole batch), keeping one entry per input message."""
        out: list[Result | BaseException] = []
        for m in messages:
            try:
                out.append(self.process(m, ctx))
            except Exception as exc:  # handed back to the runtime, which classifies it
                out.append(exc)
        return out


class PollingTrigger(Component[ConfigT]):
    kind: ClassVar[str] = "poll"
    Config: ClassVar[type[BaseModel]] = PollConfig
    #: its ``poll`` only reads (nothing acknowledged, taken off a queue or written; only the state
    #: it is given changes), so ``flow.sample()`` may run it on a scratch cursor to give a notebook
    #: the records production receives (flownb.cursor.sample)
    samples: ClassVar[bool] = False
    #: how the pandas reader a notebook would use instead reads the source differently (the warning
    #: of ``Mapping.preview(flow=…)`` for a DataFrame that did not come from ``flow.sample()``)
    raw_sample_differences: ClassVar[str] = ""

    @property
    def interval(self) -> float:
        return float(getattr(self.config, "interval", 60.0))

    def next_delay(self, state: dict) -> float:
        """Seconds until the next poll; schedules override it to follow their cron expression."""
        return self.interval

    def poll(self, state: dict, ctx: Context) -> Iterable[dict]:  # pragma: no cover - abstract
        raise NotImplementedError


class WebhookTrigger(Component[ConfigT]):
    """Requests become messages; served by flownb.webhook."""

    kind: ClassVar[str] = "webhook"


_TRANSIENT = (ConnectionError, TimeoutError, socket.timeout, socket.gaierror)


def classify(exc: BaseException, component: Component | None = None) -> bool:
    """True when ``exc`` is retryable: a retryable StepError, a refused/reset connection, a timeout,
    or one of the component's ``retryable_exceptions``."""
    if isinstance(exc, StepError):
        return exc.retryable
    if isinstance(exc, _TRANSIENT):
        return True
    return bool(component and isinstance(exc, component.retryable_exceptions))


# -- decorator shortcuts -------------------------------------------------------------------------

def action(key: str, *, config: type[BaseModel] = NoConfig, register: bool = True):
    """Turn ``def f(body, ctx) -> dict | list | None`` into a registered Action."""
    def deco(func: Callable[[dict, Context], Result]) -> type[Action]:
        cls = cast("type[Action]", type(func.__name__, (Action,), {  # a subclass of Action
            "Config": config, "__doc__": func.__doc__, "__module__": func.__module__,
            "process": lambda self, message, ctx: func(message.body, ctx), "func": staticmethod(func),
        }))
        if register:
            from ..registry import register as reg
            reg(key, cls)
        cls.key = key
        return cls
    return deco


def polling_trigger(key: str, *, config: type[BaseModel] = PollConfig, register: bool = True):
    """Turn ``def f(state, ctx) -> Iterable[dict]`` (updating ``state``) into a PollingTrigger."""
    def deco(func: Callable[[dict, Context], Iterable[dict]]) -> type[PollingTrigger]:
        cls = cast("type[PollingTrigger]", type(func.__name__, (PollingTrigger,), {  # a subclass
            "Config": config, "__doc__": func.__doc__, "__module__": func.__module__,
            "poll": lambda self, state, ctx: func(state, ctx), "func": staticmethod(func),
        }))
        if register:
            from ..registry import register as reg
            reg(key, cls)
        cls.key = key
        return cls
    return deco
