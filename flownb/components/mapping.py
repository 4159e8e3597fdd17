"""``mapping``, ``filter`` and ``split``: JSONata rules as flow steps.

- ``mapping``: ``fields: {out: expr}`` or ``expression: expr`` (exactly one) → one message.
- ``filter``: ``condition: expr``; the message passes on when the result is truthy (JSONata
  ``$boolean``), otherwise it is dropped.
- ``split``: ``path: expr`` giving an array → one message per item; an item that is not an object
  becomes ``{"value": item}`` (the key is set by ``into``); undefined or an empty array → nothing.

Expressions are compiled once: in ``check_config`` (validation, ExpressionError with the position and
the field) and in ``setup``. An evaluation error (T2001 …) is a FatalError: dead-lettered at once.

``timeout`` (a duration, default ``10s``) bounds the evaluation of one message (all fields of a
mapping together): past it the message is dead-lettered with
:class:`~flownb.errors.EvaluationTimeout` ("evaluation exceeded 10 s (step 'x', field 'y'); …"). An
expression that never ends (a recursive lambda) cannot hold the step, nor the process: see
docs/rules.md, "Deadlines".
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .._duration import Duration
from ..errors import EvaluationTimeout, ExpressionError
from ..rules import _deadline
from ..rules._runtime import U, boolean
from ..rules.expression import compile
from ..rules.functions_check import check_functions
from ..rules.mapping import DEFAULT_TIMEOUT, Mapping
from .base import Action

__all__ = ["MappingAction", "FilterAction", "SplitAction", "MappingConfig", "FilterConfig", "SplitConfig"]


class MappingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    fields: dict[str, str] | None = Field(None, description="output field → JSONata expression")
    expression: str | None = Field(None, description="one JSONata expression that builds the object")
    timeout: Duration = Field(DEFAULT_TIMEOUT, gt=0, description="longest evaluation of one message "
                              "(e.g. 10s, 500ms); past it the message is dead-lettered")

    @model_validator(mode="after")
    def _exactly_one(self) -> MappingConfig:
        if (self.fields is None) == (self.expression is None):
            raise ValueError("set exactly one of 'fields' (output field → expression) or 'expression'")
        if self.fields is not None and not self.fields:
            raise ValueError("'fields' is empty; add at least one 'output: expression' pair")
        return self


class FilterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    condition: str = Field(description="JSONata; the message passes when the result is truthy")
    timeout: Duration = Field(DEFAULT_TIMEOUT, gt=0, description="longest evaluation of one message "
                              "(e.g. 10s, 500ms); past it the message is dead-lettered")


class SplitConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(description="JSONata giving an array; one message per item")
    into: str = Field("value", description="key that wraps an item that is not an object")
    timeout: Duration = Field(DEFAULT_TIMEOUT, gt=0, description="longest evaluation of one message "
                              "(e.g. 10s, 500ms); past it the message is dead-lettered")


def compile_expression(src: str, step: Any, field: str):
    """``src`` compiled, its functions checked; an error names the step and the field (the mapping
    components and the route step's conditions share it)."""
    try:
        check_functions(src)
        return compile(src)
    except ExpressionError as exc:
        exc.expression = exc.expression or src
        raise exc.at(step=getattr(step, "name", None), field=field) from None


def _fields(config: MappingConfig) -> dict[str, str]:
    return config.fields if config.fields is not None else {}


def guarded(action: Any, fn: Any, body: Any) -> Any:
    """``fn(body)`` within the step's ``timeout``; past it ``action._timed_out()`` (an
    EvaluationTimeout naming the step and field) is raised."""
    try:
        return _deadline.run(action.config.timeout, fn, body)
    except _deadline.Expired:
        raise action._timed_out() from None


class MappingAction(Action[MappingConfig]):
    """Build a new body from JSONata expressions (one per output field, or one object)."""

    Config = MappingConfig
    json_native = True

    @classmethod
    def check_config(cls, config: MappingConfig, step) -> None:
        if config.expression is not None:
            compile_expression(config.expression, step, "config.expression")
        for name, src in _fields(config).items():
            compile_expression(src, step, f"config.fields.{name}")

    def setup(self) -> None:
        c = self.config
        # the very code Mapping.apply and Mapping.preview run: a row fails (or times out) with the
        # same error in the notebook and in a flow
        self._mapping = Mapping(fields=c.fields, expression=c.expression)

    def process(self, message, ctx):
        return self._mapping.apply(message.body, self.config.timeout, self.ctx.step)

    def _timed_out(self) -> EvaluationTimeout:
        return self._mapping._timed_out(self.config.timeout, self.ctx.step)

    def process_batch(self, messages, ctx):
        # one deadline region for the batch, renewed per message (_deadline.each); exceptions are
        # handed back to the runtime, which classifies them
        fn = self._mapping._apply
        return _deadline.each(self.config.timeout, lambda m: fn(m.body), messages, self._timed_out)


class FilterAction(Action[FilterConfig]):
    """Pass a message on only when ``condition`` is truthy."""

    Config = FilterConfig
    json_native = True

    @classmethod
    def check_config(cls, config: FilterConfig, step) -> None:
        compile_expression(config.condition, step, "config.condition")

    def setup(self) -> None:
        self._cond = compile_expression(self.config.condition, None, "config.condition").raw

    def _passes(self, body: dict) -> bool:
        return boolean(self._cond(body))

    def process(self, message, ctx):
        body = message.body
        return body if guarded(self, self._passes, body) else None

    def process_batch(self, messages, ctx):
        cond = self._cond

        def one(m):
            body = m.body
            return body if boolean(cond(body)) else None
        return _deadline.each(self.config.timeout, one, messages, self._timed_out)

    def _timed_out(self) -> EvaluationTimeout:
        return EvaluationTimeout(self.config.timeout, step=self.ctx.step, field="condition",
                                 expression=self.config.condition)


class SplitAction(Action[SplitConfig]):
    """One message per item of the array that ``path`` gives."""

    Config = SplitConfig
    json_native = True

    @classmethod
    def check_config(cls, config: SplitConfig, step) -> None:
        compile_expression(config.path, step, "config.path")

    def setup(self) -> None:
        self._path = compile_expression(self.config.path, None, "config.path").raw
        self._into = self.config.into

    def process(self, message, ctx):
        v = guarded(self, self._path, message.body)
        if v is U:
            return []
        items = v if isinstance(v, list) else [v]
        into = self._into
        return [x if type(x) is dict else {into: x} for x in items]

    def process_batch(self, messages, ctx):
        path, into = self._path, self._into

        def one(m):
            v = path(m.body)
            if v is U:
                return []
            return [x if type(x) is dict else {into: x} for x in (v if isinstance(v, list) else [v])]
        return _deadline.each(self.config.timeout, one, messages, self._timed_out)

    def _timed_out(self) -> EvaluationTimeout:
        return EvaluationTimeout(self.config.timeout, step=self.ctx.step, field="path",
                                 expression=self.config.path)
