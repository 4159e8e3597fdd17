"""Long and deeply nested expressions (valid JSONata) compile — or fall back — and evaluate; the
parser and the generated Python never raise SyntaxError, RecursionError or MemoryError.

The parser recurses once per nesting level: an expression too deep for the recursion limit is parsed
and compiled again on a helper thread with a large stack (expression._front_deep). Left-associative
chains (``a + b + …``, ``a.b.…``, ``x and y and …``) are walked in loops, and the generated Python
moves to a new def every few levels (CPython's parser allows 200 nested parentheses)."""

from __future__ import annotations

import sys

import pytest

from flownb.errors import ExpressionError
from flownb.rules import EvaluationError, compile
from flownb.rules import expression as expression_module

pytestmark = pytest.mark.timeout(300)

DATA = {"a": 1, "s": "z", "items": [{"x0": 0, "x1": 1, "qty": 2}, {"x0": 5, "qty": 3}]}


def nested_object(n: int) -> dict:
    out: object = 1
    for _ in range(n):
        out = {"a": out}
    return out  # type: ignore[return-value]


def nested_array(n: int) -> list:
    out: object = 1
    for _ in range(n):
        out = [out]
    return out  # type: ignore[return-value]


CASES = [
    # (name, expression, expected result)
    ("100 and-terms in a filter", "items[" + " and ".join(f"x{i % 2} >= 0" for i in range(100)) + "]",
     {"x0": 0, "x1": 1, "qty": 2}),
    ("1000 and-terms in a filter", "items[" + " and ".join(["qty > 1"] * 1000) + "]", DATA["items"]),
    ("300 or-terms", " or ".join(f"a = {i}" for i in range(300, 0, -1)), True),
    ("5000 nested parentheses", "(" * 5000 + "a" + ")" * 5000, 1),
    ("5000 nested parentheses around a sum", "(" * 5000 + "a + 1" + ")" * 5000, 2),
    ("5000 nested parentheses in a path", "items." + "(" * 5000 + "qty" + ")" * 5000, [2, 3]),
    ("5000-term + chain", " + ".join(["a"] * 5000), 5000),
    ("3000-term mixed chain", " - ".join(["a * 2"] * 3000), 2 - 2 * 2999),
    ("2000-term & chain", " & ".join(["s"] * 2000), "z" * 2000),
    ("right-nested + 2000 deep", "a + (" * 2000 + "a" + ")" * 2000, 2001),
    ("200-deep nested object", '{"a":' * 200 + "a" + "}" * 200, nested_object(200)),
    ("200-deep nested array", "[" * 200 + "a" + "]" * 200, nested_array(200)),
    ("2000 nested conditions", "a ? " * 2000 + "1" + " : 2" * 2000, 1),
    ("1000 unary minus", "-" * 1000 + "a", 1),
    ("2000-step path", ".".join(["a"] * 2000), None),
    ("1000 predicates", "items" + "[0]" * 1000, DATA["items"][0]),
    ("1000 nested calls", "$string(" * 1000 + "a" + ")" * 1000, "1"),
    ("an object of 2000 fields", "{" + ", ".join(f'"k{i}": a + {i}' for i in range(2000)) + "}",
     {f"k{i}": 1 + i for i in range(2000)}),
    ("an array of 5000 items", "[" + ", ".join(["a"] * 5000) + "]", [1] * 5000),
]


@pytest.mark.parametrize("name, expr, expected", CASES, ids=[c[0] for c in CASES])
def test_long_and_deep_expressions_compile_and_evaluate(name, expr, expected):
    limit = sys.getrecursionlimit()
    e = compile(expr)
    assert sys.getrecursionlimit() == limit  # the deep compile restores the limit
    assert e.engine in ("compiled", "jsonatapy")
    assert e.evaluate(DATA) == expected
    if e.engine == "compiled":
        assert "def _main" in e.python_source


def test_the_deepest_cases_use_the_compiled_engine():
    # jsonatapy refuses nesting beyond 1000 levels (U1002): these work only because ours compile
    for expr in ("(" * 5000 + "a" + ")" * 5000, " + ".join(["a"] * 5000), "a ? " * 2000 + "1" + " : 2" * 2000):
        assert compile(expr).engine == "compiled"


def test_too_deep_for_everyone_is_a_clean_error():
    """A 2000-deep object constructor compiles; its 2000-deep result is beyond Python's recursion
    limit and jsonatapy's nesting limit: an EvaluationError, never a RecursionError."""
    e = compile('{"a":' * 2000 + "a" + "}" * 2000)
    with pytest.raises(EvaluationError):
        e.evaluate(DATA)


def test_beyond_the_deep_compile_limit_is_an_expression_error(monkeypatch):
    monkeypatch.setattr(expression_module, "_DEEP_FRAMES", 3000)
    with pytest.raises(ExpressionError) as info:
        compile("[" * 4000 + "1" + "]" * 4000)  # too deep for us with this limit, and for jsonatapy
    assert "nested too deeply" in str(info.value)


def test_deep_syntax_errors_keep_their_position():
    text = "(" * 3000 + "a +" + ")" * 3000
    with pytest.raises(ExpressionError) as info:
        compile(text)
    assert info.value.code == "S0211" and info.value.position == 3003


def test_generated_python_stays_shallow():
    py = compile("(" * 50 + "a + " * 60 + "1" + ")" * 50).python_source
    depth = max_depth = 0
    for ch in py:
        depth += ch == "("
        depth -= ch == ")"
        max_depth = max(max_depth, depth)
    assert max_depth < 100
