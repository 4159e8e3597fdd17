"""Parameters: a notebook's ``parameters`` cell and a flow's ``parameters:``, inspected and coerced
one way for the flow model (``flow.with_parameters``, ``flownb … -p``), export and schedules.

A parameter's type is the one declared in the notebook (``n: int = 3``), else the type of its
literal default; a default that is not a literal (``datetime.now()``) or ``None`` takes any value.
A string value (``-p n 7`` on the command line) is converted to that type: ``int``/``float`` by
Python, ``bool`` from ``1/true/yes/on`` and ``0/false/no/off``, ``list``/``dict`` as YAML (the
bounded loader specs use). An ``int`` fits a ``float`` parameter; a ``bool`` never fits an ``int``.
papermill is imported only by :func:`inspect` (workers never import it).
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import FlownbError, ParameterError, SpecError, did_you_mean

__all__ = ["Param", "inspect", "coerce", "coerce_all"]

TYPES: dict[str, type] = {"int": int, "float": float, "str": str, "bool": bool, "list": list, "dict": dict}
_EXAMPLES = {"int": "3", "float": "0.5", "bool": "true", "list": "'[1, 2]'", "dict": "'{a: 1}'", "str": "'text'"}


@dataclass(frozen=True)
class Param:
    """One parameter: ``type`` is a key of :data:`TYPES` or None (any value); ``declared`` says the
    type comes from an annotation rather than from the default."""

    name: str
    default: Any = None
    type: str | None = None
    help: str = ""
    declared: bool = False

    @classmethod
    def of(cls, name: str, default: Any, annotation: str | None = None, help: str = "") -> Param:
        if annotation in TYPES:
            return cls(name, default, annotation, help, declared=True)
        tname = type(default).__name__ if default is not None else None
        return cls(name, default, tname if tname in TYPES else None, help)

    def describe(self) -> str:
        """``n (int) = 3``: how listings of known parameters show it."""
        return f"{self.name} ({self.type or 'any'}) = {self.default!r}"


def inspect(notebook: str | Path) -> dict[str, Param]:
    """The parameters of a notebook's cell tagged ``parameters``, in order (empty when it has none)."""
    path = Path(notebook)
    if not path.is_file():
        raise ParameterError(f"notebook '{path}' does not exist; pass the path to an .ipynb file", field="notebook")
    try:
        import papermill
    except ImportError as exc:  # pragma: no cover - papermill is a dependency of the notebook extra
        raise FlownbError("reading a notebook's parameters needs papermill; install it with: "
                          "pip install 'flownb[notebook]'") from exc
    try:
        found = papermill.inspect_notebook(str(path))
    except Exception as exc:  # papermill/nbformat raise many types for unreadable notebooks
        raise ParameterError(f"cannot read the parameters of notebook '{path}': {exc}; check that it is "
                             f"a valid .ipynb", field="notebook") from exc
    out = {}
    for name, info in found.items():
        text = info.get("default")
        try:
            default = ast.literal_eval(text) if isinstance(text, str) else text
        except (ValueError, SyntaxError):
            default = None  # an expression (e.g. ``datetime.now()``): nothing to check against
        out[name] = Param.of(name, default, info.get("inferred_type_name"), info.get("help") or "")
    return out


def coerce(value: Any, param: Param) -> Any:
    """``value`` converted to the parameter's type, or a ParameterError naming it and an example."""
    if param.type is None:
        return value
    want = TYPES[param.type]
    if isinstance(value, str) and want is not str:
        try:
            value = _from_text(value, want, param.name)
        except (ValueError, SpecError):
            raise _misfit(value, param) from None
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, want) or (want is int and isinstance(value, bool)):
        raise _misfit(value, param)
    return value


def coerce_all(params: Mapping[str, Param], given: Mapping[str, Any], *, source: str) -> dict[str, Any]:
    """Each given value coerced; a name ``source`` does not have is a ParameterError that lists the
    parameters it has (with their types and defaults)."""
    out = {}
    for name, value in given.items():
        if name not in params:
            listing = ", ".join(p.describe() for p in params.values()) or \
                "(none: tag a cell 'parameters' in the notebook)"
            raise ParameterError(f"{source} has no parameter '{name}'{did_you_mean(name, params)} "
                                 f"its parameters: {listing}", field=name)
        out[name] = coerce(value, params[name])
    return out


def _from_text(text: str, want: type, name: str) -> Any:
    if want is bool:
        low = text.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(text)
    if want in (int, float):
        return want(text)
    from . import _yaml
    parsed = _yaml.load(text, source=f"parameter '{name}'")
    if not isinstance(parsed, want):
        raise ValueError(text)
    return parsed


def _misfit(value: Any, param: Param) -> ParameterError:
    what = (f"type {param.type} declared in the notebook" if param.declared
            else f"type of the default ({param.type}: {param.default!r})")
    return ParameterError(f"value {value!r} of parameter '{param.name}' does not fit the {what}; "
                          f"pass e.g. {_EXAMPLES[param.type or 'str']}", field=param.name)
