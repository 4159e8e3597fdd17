"""``flownb.rules.compile``: a JSONata expression compiled once, evaluated many times.

Every expression is parsed by flownb's own parser (so a syntax error carries a 0-based position).
Expressions inside the supported subset (docs/rules.md) are compiled to a Python function
(``engine == "compiled"``); anything else is evaluated by jsonatapy (``engine == "jsonatapy"``).

``Expression.evaluate(data)`` returns JSONata *undefined* as ``None`` (like jsonatapy);
``Expression.evaluate(data, undefined=UNDEFINED)`` — or :meth:`Expression.raw` — returns the
:data:`UNDEFINED` sentinel instead, to tell "no value" from JSON ``null``. ``bindings`` (a dict of
variable name → JSON value, without ``$``) binds ``$name`` for one evaluation; passing
:data:`UNDEFINED` as ``data`` evaluates with no input at all.

``timeout=`` (seconds) bounds one evaluation in either engine (:mod:`._deadline`):
:class:`~flownb.errors.EvaluationTimeout` when it passes; ``max_depth=`` bounds jsonatapy's nesting
of function calls (``D1011``).

An :class:`Expression` may be evaluated from any thread, and from several at once. jsonatapy's
compiled objects are bound to the thread that created them (evaluating one elsewhere panics), so
they are never stored on the :class:`Expression`: each thread compiles its own, lazily, into a
per-thread cache keyed by the source text (dropped with the thread, on that thread).
"""

from __future__ import annotations

import functools
import re
import sys
import threading
from typing import Any

import orjson

from ..errors import EvaluationError, EvaluationTimeout, ExpressionError
from . import _deadline, _runtime
from ._compiler import Unsupported, compile_tree
from ._parser import ParseError, parse

__all__ = ["compile", "Expression", "EvaluationError", "EvaluationTimeout", "UNDEFINED"]

#: JSONata's *undefined* (no value); distinct from ``None`` (JSON null).
UNDEFINED = _runtime.U
_U = _runtime.U
_clean = _runtime.clean


_CODE = re.compile(r"\b([STDU]\d{4})\b")


def _jsonatapy():
    import jsonatapy
    return jsonatapy


_THREAD = threading.local()
_PER_THREAD = 1024  # jsonatapy expressions kept per thread (as many as compile() caches)


def _thread_jsonatapy(source: str) -> Any:
    """This thread's jsonatapy expression for ``source`` (compiled on first use in the thread).

    jsonatapy objects are pyo3 "unsendable": using one from another thread raises PanicException
    and dropping one there is an error too, so each lives (and dies) in its own thread's cache.
    No frame that an exception's traceback may keep (and carry to another thread) holds one."""
    fb = getattr(_THREAD, "cache", _NO_CACHE).get(source)
    return fb if fb is not None else _thread_jsonatapy_new(source)


_NO_CACHE: dict = {}


def _thread_jsonatapy_new(source: str) -> Any:
    fb = _jsonatapy().compile(source)  # may raise ValueError (invalid): nothing cached yet
    cache = _THREAD.__dict__.setdefault("cache", {})
    if len(cache) >= _PER_THREAD:
        for old in list(cache)[:_PER_THREAD // 2]:  # the oldest half, on their own thread
            del cache[old]
    cache[source] = fb
    return fb


class Expression:
    """A compiled JSONata expression. ``engine`` is ``"compiled"`` or ``"jsonatapy"``. Thread-safe."""

    __slots__ = ("source", "engine", "python_source", "_fn", "unsupported", "_functions")

    def __init__(self, source: str, fn: Any, engine: str, python_source: str = "",
                 unsupported: str = "", functions: frozenset = frozenset()):
        self.source = source
        self.engine = engine
        self.python_source = python_source
        self._fn = fn
        self.unsupported = unsupported
        self._functions = functions  # the built-in functions the compiled code calls

    def __repr__(self) -> str:
        return f"Expression({self.source!r}, engine={self.engine!r})"

    @property
    def function(self) -> Any:
        """The compiled ``fn(context, root)`` (None with the fallback engine). It returns
        :data:`UNDEFINED` for undefined and may raise internal errors: callers that are not hot
        loops should use :meth:`raw` or :meth:`evaluate`."""
        return self._fn

    def raw(self, data: Any, bindings: dict | None = None, *, timeout: float | None = None,
            max_depth: int | None = None) -> Any:
        """Evaluate; JSONata undefined is :data:`UNDEFINED`. Raises :class:`EvaluationError`.

        ``bindings`` maps variable names (without ``$``) to JSON values for this evaluation.
        ``timeout`` (seconds; None: none of its own) bounds the evaluation in either engine:
        :class:`~flownb.errors.EvaluationTimeout` when it passes. ``max_depth`` bounds the nesting
        of function calls in jsonatapy (``D1011``; the compiled engine has no user functions)."""
        if timeout is not None:
            try:
                return _deadline.run(timeout, self._raw, data, bindings, max_depth)
            except _deadline.Expired:
                raise EvaluationTimeout(timeout, expression=self.source) from None
        return self._raw(data, bindings, max_depth)

    def _raw(self, data: Any, bindings: dict | None, max_depth: int | None = None) -> Any:
        if self._fn is not None and (not bindings or self._functions.isdisjoint(bindings)):
            # compiled code reads no variables but the built-in functions it calls (a binding
            # that shadows one of them goes to the fallback engine)
            try:
                return _clean(self._fn(data, data))
            except _runtime.NonFinite as exc:
                # jsonata-js lets an infinity flow on until it is used; the fallback engine tells
                # whether that use is a more specific error ($string(1/0): D3001); else D1001
                try:
                    self._evaluate_fallback(data, bindings, max_depth)
                except EvaluationError as fexc:
                    if fexc.code is not None:
                        raise
                raise EvaluationError(str(exc), code=exc.code, expression=self.source) from None
            except _runtime.EvalError as exc:
                raise EvaluationError(str(exc), code=exc.code, expression=self.source) from None
            except (_runtime.Fallback, RecursionError):
                pass  # a rare case, or input (or an expression) nested too deeply for Python
        return self._evaluate_fallback(data, bindings, max_depth)

    def evaluate(self, data: Any, undefined: Any = None, bindings: dict | None = None, *,
                 timeout: float | None = None, max_depth: int | None = None) -> Any:
        """Evaluate on ``data``; JSONata undefined becomes ``undefined`` (default ``None``)."""
        v = self.raw(data, bindings, timeout=timeout, max_depth=max_depth)
        return undefined if v is _U else v

    __call__ = evaluate

    def _evaluate_fallback(self, data: Any, bindings: dict | None = None,
                           max_depth: int | None = None) -> Any:
        if data is _U:
            payload = None
        else:
            try:
                payload = orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY
                                       | orjson.OPT_NON_STR_KEYS).decode()
            except TypeError as exc:
                raise EvaluationError(f"the input is not JSON ({exc})", expression=self.source) from exc
        # jsonatapy's error is not chained to ours: its traceback holds the jsonatapy object (in
        # the wrapper's frame), and our error may be freed on another thread (_thread_jsonatapy)
        # jsonatapy holds the GIL until it returns (no other thread, no signal handler runs): within
        # a deadline (_deadline.run) it is told the time left, and stops itself with D1012
        kw: dict = {}
        left = _deadline.remaining()
        if left is not None:
            kw["timeout"] = max(1, int(left * 1000))
        if max_depth is not None:
            kw["max_stack_depth"] = max_depth
        region = _deadline.pause() if left is not None else None
        try:
            out = _thread_jsonatapy(self.source).evaluate_json_or_none(payload, bindings or None, **kw)
            message = None
        except (ValueError, TypeError) as exc:  # TypeError: bindings that are not JSON-like
            message = str(exc)
        finally:
            late = _deadline.resume(region)  # (pause: see _deadline.pause)
        if late:
            raise _deadline.Expired()
        if message is None:
            if out is None:
                return _U
            try:
                return orjson.loads(out)
            except (orjson.JSONDecodeError, MemoryError) as exc:  # orjson: "Not enough memory …"
                raise EvaluationError(f"the result ({len(out):,} characters of JSON) does not fit in "
                                      f"memory ({exc}); make the expression return less, or give the "
                                      f"process more memory", expression=self.source) from None
        m = _CODE.search(message)
        code = m.group(1) if m else None
        if code == "D1012" and left is not None:
            raise _deadline.Expired()
        raise EvaluationError(message, code=code, expression=self.source)


_DEEP_LOCK = threading.Lock()
_DEEP_STACK = 256 * 1024 * 1024  # the helper thread's C stack (reserved; pages used as touched)
_DEEP_FRAMES = 200_000  # at most this recursion limit, while a deep expression compiles


def _front(source: str) -> tuple:
    """Parse and compile to Python: ``(fn, python_source)``; ParseError or Unsupported."""
    return compile_tree(parse(source), source)


def _front_deep(source: str) -> tuple:
    """:func:`_front` for an expression nested too deeply for the recursion limit (thousands of
    parentheses): on a helper thread with a large stack, the limit raised while it runs. Python
    3.11 keeps Python-to-Python calls off the C stack; the large stack covers the calls that are
    not. Serialised: the recursion limit is one for the process."""
    box: dict = {}

    def run() -> None:
        try:
            box["ok"] = _front(source)
        except BaseException as exc:  # noqa: BLE001 - re-raised on the calling thread
            box["error"] = exc

    with _DEEP_LOCK:
        old_limit = sys.getrecursionlimit()
        limit = min(max(old_limit, 10 * len(source) + 10_000), _DEEP_FRAMES)
        sys.setrecursionlimit(limit)
        try:
            try:
                old_stack: int | None = threading.stack_size(_DEEP_STACK)
            except (ValueError, RuntimeError):  # a platform without settable thread stacks
                old_stack = None
            try:
                t = threading.Thread(target=run, name="flownb-rules-deep-compile", daemon=True)
                t.start()
            finally:
                if old_stack is not None:
                    threading.stack_size(old_stack)
            t.join()
        finally:
            if sys.getrecursionlimit() == limit:
                sys.setrecursionlimit(old_limit)
    if "error" in box:
        raise box.pop("error")
    return box["ok"]


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
        try:
            fn, py = _front(source)
        except RecursionError:
            fn, py = _front_deep(source)
    except ParseError as exc:
        # our parser follows jsonata-js; if the fallback engine accepts the text anyway, use it
        try:
            _thread_jsonatapy(source)
        except ValueError:
            raise _syntax_error(source, exc) from None
        return Expression(source, None, "jsonatapy", unsupported=f"parser: {exc}")
    except (Unsupported, RecursionError, MemoryError) as exc:
        try:
            _thread_jsonatapy(source)  # validates; this thread's copy is kept for evaluation
        except ValueError as fexc:
            if isinstance(exc, Unsupported):
                err = ExpressionError(f"invalid JSONata: {fexc}", expression=source)
            else:
                err = ExpressionError(f"nested too deeply: {fexc}; flatten it: bind inner parts to "
                                      f"variables (($a := …; …)) or split it over several fields",
                                      expression=source)
            m = _CODE.search(str(fexc))
            err.code = m.group(1) if m else None  # type: ignore[attr-defined]
            raise err from None
        return Expression(source, None, "jsonatapy", unsupported=str(exc) or type(exc).__name__)
    return Expression(source, fn, "compiled", python_source=py,
                      functions=getattr(fn, "functions", frozenset()))
