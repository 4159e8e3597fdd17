"""Check schedule parameters against the notebook's ``parameters`` cell when the schedule is added.

papermill's ``inspect_notebook`` gives each parameter's name, declared type (``x: int = 1``) and
default text; values given as strings on the command line are converted to the default's type.
papermill is imported lazily (workers never import it).
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import yaml

from ..errors import ParameterError, did_you_mean
from .model import ScheduleError, ScheduleInputError

__all__ = ["notebook_parameters", "check_parameters"]

_TYPES: dict[str, type] = {"int": int, "float": float, "str": str, "bool": bool, "list": list, "dict": dict}


def notebook_parameters(notebook: str | Path) -> dict[str, dict]:
    """``{name: {"type": "int" | … | None, "default": value, "help": str}}`` of the parameters cell."""
    path = Path(notebook)
    if not path.is_file():
        raise ScheduleInputError(
            f"notebook '{path}' does not exist; pass the path to an .ipynb file", field="notebook"
        )
    try:
        import papermill
        from papermill.exceptions import PapermillException
    except ImportError as exc:
        raise ScheduleError(
            "scheduled runs need papermill; install it with: pip install 'flownb[notebook]'"
        ) from exc

    try:
        found = papermill.inspect_notebook(str(path))
    except (PapermillException, ValueError, OSError) as exc:
        raise ScheduleInputError(f"cannot read the parameters of '{path}': {exc}", field="notebook") from exc
    out = {}
    for name, p in found.items():
        default = _literal(p.get("default"))
        declared = p.get("inferred_type_name")
        tname = declared if declared in _TYPES else (type(default).__name__ if default is not None else None)
        out[name] = {
            "type": tname if tname in _TYPES else None,
            "default": default,
            "help": p.get("help", ""),
        }
    return out


def _literal(text: Any) -> Any:
    if not isinstance(text, str):
        return text
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None  # an expression (e.g. ``datetime.now()``): no type to check against


def check_parameters(notebook: str | Path, values: dict[str, Any]) -> dict[str, Any]:
    """Return ``values`` converted to the types of the notebook's parameters; an unknown name or a
    value that does not fit is a ParameterError that lists the known parameters."""
    known = notebook_parameters(notebook)
    if values and not known:
        raise ParameterError(
            f"notebook '{notebook}' has no 'parameters' cell; tag a cell 'parameters' "
            f"(cell toolbar → tags) that assigns the defaults, then add the schedule again"
        )
    out = {}
    for name, value in values.items():
        if name not in known:
            listing = ", ".join(f"{n} ({k['type'] or 'any'})" for n, k in known.items())
            raise ParameterError(
                f"unknown parameter '{name}'{did_you_mean(name, known)} the notebook's "
                f"parameters cell defines: {listing}",
                field=name,
            )
        out[name] = _convert(name, value, known[name]["type"])
    return out


def _convert(name: str, value: Any, tname: str | None) -> Any:
    if tname is None:
        return value
    want = _TYPES[tname]
    if isinstance(value, str) and want is not str:
        try:
            value = _from_text(value, want)
        except (ValueError, yaml.YAMLError):
            raise ParameterError(
                f"value {value!r} does not fit type {tname} of the notebook's parameter "
                f"'{name}'; pass e.g. {_example(want)}",
                field=name,
            ) from None
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, want) or (want is int and isinstance(value, bool)):
        raise ParameterError(
            f"value {value!r} does not fit type {tname} of the notebook's parameter "
            f"'{name}'; pass e.g. {_example(want)}",
            field=name,
        )
    return value


def _from_text(text: str, want: type) -> Any:
    if want is bool:
        low = text.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(text)
    if want in (int, float):
        return want(text)
    parsed = yaml.safe_load(text)
    if not isinstance(parsed, want):
        raise ValueError(text)
    return parsed


def _example(want: type) -> str:
    return {int: "3", float: "0.5", bool: "true", list: "'[1, 2]'", dict: "'{a: 1}'"}.get(want, "'text'")
