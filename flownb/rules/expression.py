"""``flownb.rules.compile``: a JSONata expression compiled once, evaluated many times.

Every expression is parsed by flownb's own parser (so a syntax error carries a 0-based position).
Expressions inside the supported subset (docs/rules.md) are compiled to a Python function
(``engine == "compiled"``); anything else is evaluated by jsonatapy (``engine == "jsonatapy"``).

``Expression.evaluate(data)`` returns JSONata *undefined* as ``None`` (like jsonatapy);
``Expression.evaluate(data, undefined=UNDEFINED)`` — or :meth:`Expression.raw` — returns the
:data:`UNDEFINED` sentinel instead, to tell "no value" from JSON ``null``.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import orjson

from ..errors import ExpressionError, FatalError
from . import _runtime
from ._compiler import Unsupported, compile_tree
from ._parser import ParseError, parse

__all__ = ["compile", "Expression", "EvaluationError", "UNDEFINED"]

#: JSONata's *undefined* (no value); distinct from ``None`` (JSON null).
UNDEFINED = _runtime.U
_U = _runtime.U
_clean = _runtime.clean


class EvaluationError(FatalError):
    """An expression failed on one input (e.g. T2001: arithmetic on a string). Not retryable: the
    same input fails the same way, so the message is dead-lettered at once."""

    def __init__(self, message: str, *, code: str | None = None, expression: str = "",
                 field: str | None = None, position: int | None = None):
        where = f"field '{field}': " if field else ""
        super().__init__(f"{where}{message} (expression: {expression}); fix the expression or "
                         f"the input record")
        self.code = code
        self.expression = expression
        self.field = field
        self.position = position
        self.detail = message


_CODE = re.compile(r"\b([STDU]\d{4})\b")


def _jsonatapy():
    import jsonatapy
    return jsonatapy


class Expression:
    """A compiled JSONata expression. ``engine`` is ``"compiled"`` or ``"jsonatapy"``."""

    __slots__ = ("source", "engine", "python_source", "_fn", "_fallback", "unsupported")

    def __init__(self, source: str, fn: Any, engine: str, python_source: str = "",
                 fallback: Any = None, unsupported: str = ""):
        self.source = source
        self.engine = engine
        self.python_source = python_source
        self._fn = fn
        self._fallback = fallback
        self.unsupported = unsupported

    def __repr__(self) -> str:
        return f"Expression({self.source!r}, engine={self.engine!r})"

    @property
    def function(self) -> Any:
        """The compiled ``fn(context, root)`` (None with the fallback engine). It returns
        :data:`UNDEFINED` for undefined and may raise internal errors: callers that are not hot
        loops should use :meth:`raw` or :meth:`evaluate`."""
        return self._fn

    def raw(self, data: Any) -> Any:
        """Evaluate; JSONata undefined is :data:`UNDEFINED`. Raises :class:`EvaluationError`."""
        if self._fn is not None:
            try:
                return _clean(self._fn(data, data))
            except _runtime.EvalError as exc:
                raise EvaluationError(str(exc), code=exc.code, expression=self.source) from None
            except _runtime.Fallback:
                pass
            except RecursionError as exc:
                raise EvaluationError("the input is nested too deeply", expression=self.source) from exc
        return self._evaluate_fallback(data)

    def evaluate(self, data: Any, undefined: Any = None) -> Any:
        """Evaluate on ``data``; JSONata undefined becomes ``undefined`` (default ``None``)."""
        v = self.raw(data)
        return undefined if v is _U else v

    __call__ = evaluate

    def _evaluate_fallback(self, data: Any) -> Any:
        fb = self._fallback
        if fb is None:
            fb = self._fallback = _jsonatapy().compile(self.source)
        try:
            payload = orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)
        except TypeError as exc:
            raise EvaluationError(f"the input is not JSON ({exc})", expression=self.source) from exc
        try:
            out = fb.evaluate_json_or_none(payload.decode())
        except ValueError as exc:
            m = _CODE.search(str(exc))
            raise EvaluationError(str(exc), code=m.group(1) if m else None,
                                  expression=self.source) from None
        return _U if out is None else orjson.loads(out)


def _syntax_error(source: str, exc: ParseError) -> ExpressionError:
    err = ExpressionError(f"invalid JSONata ({exc.code}): {exc.message}", expression=source,
                          position=exc.position)
    err.code = exc.code  # type: ignore[attr-defined]
    return err


@functools.lru_cache(maxsize=1024)
def compile(source: str) -> Expression:  # noqa: A001 - the public name the API promises
    """Compile ``source``; raise :class:`~flownb.errors.ExpressionError` (with ``position``)."""
    if not isinstance(source, str) or not source.strip():
        raise ExpressionError("an expression must be a non-empty string of JSONata, e.g. "
                              "'customer.email'", expression=str(source), position=0)
    try:
        tree = parse(source)
    except ParseError as exc:
        # our parser follows jsonata-js; if the fallback engine accepts the text anyway, use it
        try:
            fb = _jsonatapy().compile(source)
        except ValueError:
            raise _syntax_error(source, exc) from None
        return Expression(source, None, "jsonatapy", fallback=fb, unsupported=f"parser: {exc}")
    try:
        fn, py = compile_tree(tree, source)
    except Unsupported as exc:
        try:
            fb = _jsonatapy().compile(source)
        except ValueError as fexc:
            raise ExpressionError(f"invalid JSONata: {fexc}", expression=source) from None
        return Expression(source, None, "jsonatapy", fallback=fb, unsupported=str(exc))
    except RecursionError:
        raise ExpressionError("the expression is nested too deeply", expression=source) from None
    return Expression(source, fn, "compiled", python_source=py)
