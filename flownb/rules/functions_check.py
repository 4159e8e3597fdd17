"""Unknown JSONata functions, found before anything runs.

JSONata reports a call of a function that does not exist (``$lowercas(x)``) only when it is
evaluated (T1006, "attempted to invoke a non-function"): on every row. :func:`check_functions` finds
such calls in the text — a ``$name(…)`` or ``… ~> $name`` whose name is neither a JSONata built-in
nor bound in the expression (``$f := function($x) {…}``, a lambda's parameters) — so ``flownb
validate``, a step's config check and the MappingEditor name it, with its position and the nearest
built-in. Bindings passed at evaluation time are JSON values, never functions, so they cannot
supply a function.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..errors import ExpressionError, did_you_mean

__all__ = ["BUILTINS", "unknown_functions", "check_functions"]

#: the functions of JSONata 2.0 (docs.jsonata.org: string, numeric, aggregation, boolean, array,
#: object, date/time and higher-order functions)
BUILTINS = frozenset("""
string length substring substringBefore substringAfter uppercase lowercase trim pad contains split join
match replace eval base64encode base64decode encodeUrlComponent encodeUrl decodeUrlComponent decodeUrl
number abs floor ceil round power sqrt random formatNumber formatBase formatInteger parseInteger
sum max min average count boolean not exists append sort reverse shuffle distinct zip keys lookup spread
merge sift each error assert type now millis fromMillis toMillis map filter single reduce
""".split())


def _nodes(node: Any) -> Iterator[Any]:
    from ._parser import Node
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, Node):
            yield n
            stack.extend(v for k, v in vars(n).items() if k not in ("type", "value", "position"))
        elif isinstance(n, (list, tuple)):
            stack.extend(n)


def unknown_functions(source: str) -> list[tuple[str, int]]:
    """``[(name, position)]`` of the functions ``source`` calls that do not exist (empty when the
    text does not parse: the compiler reports that)."""
    from ._parser import ParseError, parse
    try:
        tree = parse(source)
    except (ParseError, RecursionError, ValueError):
        return []
    bound: set[str] = set()
    called: list[tuple[str, int]] = []
    for n in _nodes(tree):
        if n.type == "bind" and getattr(n.lhs, "type", None) == "variable":
            bound.add(n.lhs.value)
        elif n.type == "lambda":
            bound.update(a.value for a in n.arguments if getattr(a, "type", None) == "variable")
        elif n.type in ("function", "partial") and n.procedure.type == "variable":
            called.append((n.procedure.value, n.procedure.position))
        elif n.type == "binary" and n.value == "~>" and n.rhs.type == "variable":
            called.append((n.rhs.value, n.rhs.position))
    return sorted({(name, pos) for name, pos in called
                   if name and name not in BUILTINS and name not in bound}, key=lambda c: c[1])


def check_functions(source: str, *, step: str | None = None, field: str | None = None) -> None:
    """Raise ExpressionError for the first unknown function, with its position and the nearest
    built-in; nothing when every function exists."""
    unknown = unknown_functions(source)
    if unknown:
        name, pos = unknown[0]
        hint = did_you_mean(name, BUILTINS).replace("'", "'$", 1) or ";"
        raise ExpressionError(f"unknown function '${name}'{hint} JSONata has no such function "
                              f"(see docs/rules.md for the built-ins)",
                              expression=source, position=pos, step=step, field=field)
