"""``python`` (an action) and ``python.poll`` (a polling trigger): a function whose source is in the spec.

The function travels as source text in the spec (config ``source`` and ``function``), never pickled;
the runtime executes that text in a fresh module namespace of its own. Signatures: ``f(body, ctx)``
for the action (returns a dict, a list of dicts, or None), ``f(state, ctx)`` for the poll (returns
or yields dicts, updating ``state`` in place). ``ctx.config.options`` holds the step's ``options``.

In a notebook, :func:`python_step` / :func:`python_poll` capture a ``def``-ined function with
:func:`inspect.getsource` (dedented, decorators stripped). Names the function uses from the notebook
come along when they can be written as source: modules (``import re`` → ``import re``), other
functions defined with ``def`` (their source), and literal constants (numbers, strings, lists,
dicts…). Anything else is an error that says to define it inside the function.
"""

from __future__ import annotations

import ast
import builtins
import inspect
import linecache
import re
import textwrap
import types
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..errors import ConfigError
from .base import Action, Context, PollConfig, PollingTrigger

__all__ = ["PythonAction", "PythonPoll", "python_step", "python_poll", "function_source", "load_function"]

_STEP_KEYS = {"retry", "replicas", "prefetch"}
_LITERALS = (int, float, str, bool, type(None), bytes)


class _SourceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: str = Field(description="Python source defining the function (and anything it needs)")
    function: str = Field(description="name of the function to call", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    options: dict[str, Any] = Field(default_factory=dict, description="values the function reads as "
                                                                      "ctx.config.options")


class PythonConfig(_SourceConfig):
    pass


class PythonPollConfig(PollConfig, _SourceConfig):
    pass


def check_source(source: str, function: str, step: str | None = None) -> None:
    """Compile ``source`` and check it defines ``function`` at top level; ConfigError otherwise."""
    try:
        tree = ast.parse(source, filename=f"<step {step}>")
    except SyntaxError as exc:
        text = (exc.text or "").rstrip("\n")
        pointer = f"\n    {text}\n    {' ' * max((exc.offset or 1) - 1, 0)}^" if text else ""
        raise ConfigError(f"Python syntax error at line {exc.lineno}: {exc.msg}{pointer}; fix the "
                          f"function's source", step=step, field="config.source") from None
    defined = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    if function not in defined:
        raise ConfigError(f"the source defines no top-level function '{function}' (defined: "
                          f"{', '.join(defined) or 'none'}); set 'function' to one of them",
                          step=step, field="config.function")


def load_function(source: str, function: str, step: str) -> Callable:
    """Execute ``source`` in a fresh module namespace and return ``function`` from it."""
    check_source(source, function, step)
    filename = f"<flownb step {step}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)  # tracebacks
    module = types.ModuleType(f"flownb_step_{re.sub(r'[^A-Za-z0-9_]', '_', step)}")
    module.__dict__["__builtins__"] = builtins
    try:
        exec(compile(source, filename, "exec"), module.__dict__)  # noqa: S102 - the spec's own code
    except Exception as exc:
        raise ConfigError(f"running the module-level code of the source failed: {type(exc).__name__}: "
                          f"{exc}", step=step, field="config.source") from exc
    func = module.__dict__[function]
    if not callable(func):
        raise ConfigError(f"'{function}' is not a function", step=step, field="config.function")
    return func


def _arity(func: Callable) -> int:
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return 2
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return 2
    return sum(1 for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))


class PythonAction(Action[PythonConfig]):
    """Call a Python function (source in the spec) on each message body: f(body, ctx)."""

    Config = PythonConfig

    @classmethod
    def check_config(cls, config, step) -> None:
        check_source(config.source, config.function, step.name)

    def setup(self) -> None:
        self.func = load_function(self.config.source, self.config.function, self.ctx.step)
        self._two = _arity(self.func) >= 2

    def process(self, message, ctx: Context):
        return self.func(message.body, ctx) if self._two else self.func(message.body)


class PythonPoll(PollingTrigger[PythonPollConfig]):
    """Call a Python function (source in the spec) every interval: f(state, ctx) yields bodies."""

    Config = PythonPollConfig

    @classmethod
    def check_config(cls, config, step) -> None:
        check_source(config.source, config.function, step.name)

    def setup(self) -> None:
        self.func = load_function(self.config.source, self.config.function, self.ctx.step)
        self._two = _arity(self.func) >= 2

    def poll(self, state: dict, ctx: Context):
        result = self.func(state, ctx) if self._two else self.func(state)
        return [] if result is None else result


# -- capturing notebook functions ---------------------------------------------------------------

def _own_source(func: Callable) -> str:
    name = getattr(func, "__name__", repr(func))
    if name == "<lambda>":
        raise ConfigError("a lambda cannot be captured; define the function with 'def' in a cell")
    if not inspect.isfunction(func):
        raise ConfigError(f"{name!r} is not a Python function defined with 'def'")
    try:
        text = textwrap.dedent(inspect.getsource(func))
    except (OSError, TypeError) as exc:
        raise ConfigError(f"cannot find the source of '{name}' ({exc}); define it with 'def' in a notebook "
                          f"cell or a .py file (functions typed into a plain Python REPL have no source)") from None
    tree = ast.parse(text)
    node = next((n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))), None)
    if node is None:
        raise ConfigError(f"cannot find a 'def {name}' in its source; define it with 'def' in a cell")
    lines = text.splitlines()
    return "\n".join(lines[node.lineno - 1:node.end_lineno]) + "\n"  # without decorators


def _global_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return names


def function_source(func: Callable, _seen: set | None = None) -> str:
    """The source of ``func`` plus what it uses from its module: imports, helper functions, literals."""
    func = inspect.unwrap(func)  # a decorated function: capture the function itself
    if not inspect.isfunction(func):
        raise ConfigError(f"{func!r} is not a Python function; define one with 'def' in a cell")
    seen = _seen if _seen is not None else set()
    seen.add(func.__name__)
    if func.__code__.co_freevars:
        raise ConfigError(f"'{func.__name__}' uses variables of an enclosing function "
                          f"({', '.join(func.__code__.co_freevars)}); define it at the top level of a cell")
    own = _own_source(func)
    head: list[str] = []
    for name in sorted(_global_names(func.__code__)):
        if name in seen or name not in func.__globals__ or hasattr(builtins, name):
            continue
        value = func.__globals__[name]
        seen.add(name)
        head.append(_dependency(name, value, func.__name__, seen))
    return "".join(h for h in head if h) + own


def _dependency(name: str, value: Any, user: str, seen: set) -> str:
    if isinstance(value, types.ModuleType):
        return f"import {value.__name__}\n" if value.__name__ == name else f"import {value.__name__} as {name}\n"
    if inspect.isfunction(value):
        src = function_source(value, seen)
        renamed = value.__name__ != name
        return src + (f"{name} = {value.__name__}\n" if renamed else "") + "\n"
    if _literal(value):
        return f"{name} = {value!r}\n"
    if isinstance(value, type) or callable(value):
        module = getattr(value, "__module__", None)
        qual = getattr(value, "__qualname__", "")
        if module and module not in ("__main__", "builtins") and "." not in qual and "<" not in qual:
            return f"from {module} import {qual} as {name}\n" if qual != name else f"from {module} import {name}\n"
    raise ConfigError(f"'{user}' uses '{name}' ({type(value).__name__}) from the notebook, which cannot travel "
                      f"as source; define or import it inside the function")


def _literal(value: Any) -> bool:
    if isinstance(value, _LITERALS):
        return not isinstance(value, float) or value == value
    if isinstance(value, (list, tuple, set, frozenset)):
        return all(_literal(v) for v in value)
    if isinstance(value, dict):
        return all(_literal(k) and _literal(v) for k, v in value.items())
    return False


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "python"


def _make_step(component: str, func: Callable, name: str | None, opts: dict, extra: dict):
    from ..flow import Step
    func = inspect.unwrap(func)
    step_kw = {k: opts.pop(k) for k in list(opts) if k in _STEP_KEYS}
    config = {"source": function_source(func), "function": func.__name__, **extra}
    if opts:
        config["options"] = opts
    step = Step(name=name or _slug(func.__name__), component=component, config=config, **step_kw)
    check_source(config["source"], config["function"], step.name)
    return step


def python_step(func: Callable, name: str | None = None, **opts: Any):
    """A ``python`` action step running ``func(body, ctx)`` from its source. ``retry``, ``replicas``
    and ``prefetch`` go to the step; other keyword arguments become ``ctx.config.options``."""
    return _make_step("python", func, name, dict(opts), {})


def python_poll(func: Callable, name: str | None = None, interval: Any = 60.0, **opts: Any):
    """A ``python.poll`` trigger step calling ``func(state, ctx)`` every ``interval``."""
    return _make_step("python.poll", func, name, dict(opts), {"interval": interval})
