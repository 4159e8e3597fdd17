"""Parser, compiler and fallback: positions of syntax errors, undefined vs null, engines."""

from __future__ import annotations

import pytest

import flownb
from flownb.errors import ExpressionError, FatalError, SpecError
from flownb.rules import UNDEFINED, EvaluationError, Expression, compile
from flownb.rules._parser import ParseError, parse


@pytest.mark.parametrize("expr, position, code", [
    ("a +", 3, "S0207"),
    ("a.b[", 4, "S0207"),
    ("(a", 2, "S0203"),
    ('"abc', 0, "S0101"),
    ("a b", 2, "S0201"),
    ("1 +* 2", 5, "S0201"),
    ('{"x": }', 6, "S0211"),
    ("a.`b", 2, "S0105"),
    ("$lowercase(name", 15, "S0203"),
    ("a.1", 2, "S0213"),
])
def test_syntax_errors_carry_a_zero_based_position(expr, position, code):
    with pytest.raises(ExpressionError) as info:
        compile(expr)
    err = info.value
    assert isinstance(err, SpecError)
    assert err.position == position
    assert err.code == code
    assert err.expression == expr
    assert "^" in str(err)  # the pointer under the expression


def test_empty_expression_is_an_error():
    with pytest.raises(ExpressionError):
        compile("  ")


GRAMMAR_DATA = {"items": [{"type": "a", "qty": 2, "price": 3}, {"type": "b", "qty": 1, "price": 7},
                          {"type": "a", "qty": 4, "price": 1}],
                "a": None, "b": "B", "s": "xABBCy", "n": {"x": 1, "m": {"x": 2}}}


# every form the fallback engine serves parses AND gives the value JSONata gives (checked against the
# jsonata-python reference implementation when these were written)
@pytest.mark.parametrize("text, expected", [
    ("$map(items, function($v, $i) { $v.qty * $i })", [0, 1, 8]),
    ("items^(>price, qty).price", [7, 3, 1]),
    ("items{type: $sum(price)}", {"a": 4, "b": 7}),
    ("($x := 5; $x + 1)", 6),
    ("b ~> $uppercase()", "B"),
    ("[1..5]", [1, 2, 3, 4, 5]),
    ("$contains(s, /ab+c/i)", True),
    ("items ~> | $ | {'x': 1} |", [{"type": "a", "qty": 2, "price": 3, "x": 1},
                                   {"type": "b", "qty": 1, "price": 7, "x": 1},
                                   {"type": "a", "qty": 4, "price": 1, "x": 1}]),
    ("items@$i.$i.qty", [2, 1, 4]),
    ("items#$p[$p > 0].{'p': $p, 'q': qty}", [{"p": 1, "q": 1}, {"p": 2, "q": 4}]),
    ("a ?: b", "B"),
    ("missing ?? b", "B"),
    ("a ?? b", None),  # null is defined: ?? keeps it
    ("**.x", [1, 2]),
    ("items.%.b", ["B", "B", "B"]),
    ("(function($x)<n:n>{ $x * 2 })(21)", 42),
])
def test_parser_accepts_the_full_grammar_for_the_fallback(text, expected):
    parse(text)  # our parser (positions, the compiler's input) takes the form...
    assert compile(text).evaluate(GRAMMAR_DATA) == expected  # ...and the expression means what JSONata says


def test_compiled_and_fallback_engines():
    assert compile("customer.email").engine == "compiled"
    e = compile("$map(items, function($v) { $v.qty * 2 })")
    assert e.engine == "jsonatapy" and e.source.startswith("$map")
    assert e.evaluate({"items": [{"qty": 1}, {"qty": 3}]}) == [2, 6]
    assert isinstance(e, Expression)


def test_undefined_is_none_by_default_and_a_sentinel_on_request():
    e = compile("missing")
    assert e.evaluate({"a": 1}) is None
    assert e.raw({"a": 1}) is UNDEFINED
    assert e.evaluate({"a": 1}, undefined="n/a") == "n/a"
    n = compile("a")
    assert n.raw({"a": None}) is None  # JSON null stays null
    fb = compile("$map(missing, function($v) { $v })")
    assert fb.engine == "jsonatapy" and fb.raw({}) is UNDEFINED


def test_semantics_of_the_subset():
    data = {"customer": {"email": "A@X.io", "first": "Ann", "last": None},
            "items": [{"qty": 2, "price": 1.25}, {"qty": 1, "price": 10}], "one": [5]}
    assert compile("$lowercase(customer.email)").evaluate(data) == "a@x.io"
    assert compile('customer.first & " " & customer.middle').evaluate(data) == "Ann "
    assert compile('customer.first & " " & customer.last').evaluate(data) == "Ann null"
    assert compile("$sum(items.(qty * price))").evaluate(data) == 12.5
    assert compile("items[price > 5].qty").evaluate(data) == 1
    assert compile("one").evaluate(data) == [5]          # an array from the data stays an array
    assert compile("items[0].qty[]").evaluate(data) == [2]
    assert compile('{"a": missing, "b": customer.last}').evaluate(data) == {"b": None}
    assert compile("$string(0.1 + 0.2)").evaluate(data) == "0.3"
    assert compile("$string(1e21)").evaluate(data) == "1e+21"
    assert compile("6 / 3").evaluate(data) == 2 and type(compile("6 / 3").evaluate(data)) is int
    assert compile("$count(items) > 1 ? 'many' : 'one'").evaluate(data) == "many"
    assert compile("'Ann' in [customer.first, 'Bob']").evaluate(data) is True
    result = compile("items.{'q': qty}").evaluate(data)
    assert result == [{"q": 2}, {"q": 1}] and type(result) is list  # plain lists come out


def test_evaluation_errors_are_fatal_with_the_jsonata_code():
    with pytest.raises(EvaluationError) as info:
        compile("name + 1").evaluate({"name": "x"})
    assert info.value.code == "T2001"
    assert isinstance(info.value, FatalError) and isinstance(info.value, flownb.FlownbError)
    assert "name + 1" in str(info.value)
    with pytest.raises(EvaluationError) as info:
        compile("1 / 0").evaluate({})
    assert info.value.code == "D1001"
    with pytest.raises(EvaluationError) as info:
        compile("$sum(x, 1, 2)").evaluate({})  # wrong arity: fallback engine's error
    assert info.value.code == "T0410"  # argument count mismatch


def test_rare_cases_fall_back_at_run_time():
    e = compile("$number(s)")
    assert e.engine == "compiled"
    assert e.evaluate({"s": "0x1F"}) == 31  # hex strings are left to jsonatapy
    assert e.evaluate({"s": "12.5"}) == 12.5


def test_compile_is_cached_and_generates_python():
    assert compile("a.b") is compile("a.b")
    assert "def _main" in compile("a.b + 1").python_source


def test_parse_error_type():
    with pytest.raises(ParseError) as info:
        parse("a +")
    assert info.value.position == 3


BIG = 2**53 + 1  # the first integer a double cannot hold: JSONata-js would give 9007199254740992


@pytest.mark.parametrize(("text", "expected"), [
    ("a", BIG), ("a + 1", BIG + 1), ("a - 1", BIG - 1), ("a * 2", 2 * BIG), ("$sum([a, a])", 2 * BIG),
    ("[a, a + 2]", [BIG, BIG + 2]), ('{"x": a}', {"x": BIG}), ("a > 9007199254740992", True),
])
def test_integers_beyond_2_pow_53_stay_exact(text, expected):
    """docs/rules.md: integers beyond 2^53 stay exact Python ints (the compiled engine)."""
    e = compile(text)
    assert e.engine == "compiled"
    got = e.evaluate({"a": BIG})
    assert got == expected and type(got) is type(expected)


def test_integers_beyond_2_pow_53_stay_exact_through_a_flow():
    """…and through a flow: the message codec keeps 64-bit integers exact between steps."""
    flow = flownb.Flow(name="big", trigger=flownb.step("in", "webhook", token_env="UNUSED"),
                       steps=[flownb.step("m", "mapping", fields={"id": "id", "next": "id + 1"})])
    result = flow.test([{"id": BIG}, {"id": 2**63 - 2}])
    assert list(result.outputs["m"]) == [{"id": BIG, "next": BIG + 1}, {"id": 2**63 - 2, "next": 2**63 - 1}]
