"""Hostile JSONata expressions (issue 12, beside the hostile webhook requests and specs): each one
ends in a known outcome — the exact error type with a message that says what to do, or a value when
the input is harmless after all (a regex that would backtrack for ever in another engine) — never a
hang, a raw Python exception or an unbounded allocation. Evaluated through ``flownb.rules`` with a
deadline, each case naming the engine that runs it; the memory-hungry ones in a child process under
a hard memory cap (``RLIMIT_AS``), where jsonatapy dies (a process death: poison in a runtime,
tests/runtime/test_local_state.py) and Python raises MemoryError (a dead letter)."""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from typing import Any

import pytest

import flownb
from flownb.errors import EvaluationTimeout, ExpressionError, MessageError
from flownb.rules import EvaluationError, compile

from .capped import run_capped

RECURSE = "($f := function($n){ $f($n+1) }; $f(0))"
#: polynomial work in the compiled engine: 400⁵ steps on 400 items
NESTED = "$count(a[$count($$.a[$count($$.a[$count($$.a[$count($$.a) > 0]) > 0]) > 0]) > 0])"
#: input that makes a backtracking regex engine take exponential time (jsonatapy's is linear)
AAA = {"s": "a" * 30_000 + "!"}
TIMEOUT = 2.0
#: what EvaluationError and EvaluationTimeout tell the user to do
FIX = "fix the expression or the input record"
SIMPLIFY = "simplify the expression or raise the evaluation's timeout"


@dataclass
class Case:
    expression: str
    engine: str  # the engine compile() picks: "compiled" or "jsonatapy"
    error: type[Exception] | None  # None: a value is expected
    says: list[str] = field(default_factory=list)  # fragments of the message (what to do among them)
    code: str | None = None
    data: Any = field(default_factory=lambda: {"s": "x"})
    value: Any = None


CASES = {
    "never-ending recursion": Case(RECURSE, "jsonatapy", EvaluationTimeout,
                                   [f"evaluation exceeded {TIMEOUT:g} s", SIMPLIFY], "D1012"),
    "polynomial work, compiled": Case(NESTED, "compiled", EvaluationTimeout,
                                      [f"evaluation exceeded {TIMEOUT:g} s", SIMPLIFY], "D1012",
                                      data={"a": list(range(400))}),
    "$eval of never-ending recursion": Case(f"$eval({RECURSE!r})".replace("'", '"'), "jsonatapy",
                                            EvaluationTimeout, [SIMPLIFY], "D1012"),
    "$eval of text that is no JSONata": Case("$eval(s)", "jsonatapy", EvaluationError,
                                             ["cannot be parsed", FIX], "D3120", data={"s": "("}),
    "$eval calling an unknown function": Case('$eval("$foo()")', "jsonatapy", EvaluationError,
                                              ["non-function: $foo", FIX], "D3121"),
    "range of 1e9 items": Case("[1..1e9]", "jsonatapy", EvaluationError, ["too many elements", FIX], "D2014"),
    "range of 1e9 items counted": Case("$count([1..1000000000])", "jsonatapy", EvaluationError,
                                       ["(> 10,000,000)", FIX], "D2014"),
    "100,000 nested parentheses": Case("(" * 100_000 + "1" + ")" * 100_000, "-", ExpressionError,
                                       ["nested too deeply", "flatten it: bind inner parts to variables"],
                                       "U1002"),
    "5,000 nested arrays": Case("[" * 5_000 + "1" + "]" * 5_000, "compiled", EvaluationError,
                                ["maximum expression nesting depth (1000)", FIX], "U1002"),
    "catastrophic backtracking: $match": Case("$match(s, /^(a+)+$/)", "jsonatapy", None, data=AAA, value=None),
    "catastrophic backtracking: $replace": Case('$replace(s, /(a|aa)+$/, "b")', "jsonatapy", None, data=AAA,
                                                value=AAA["s"]),
    "catastrophic backtracking: $contains": Case("$contains(s, /(a*)*b/)", "jsonatapy", None, data=AAA,
                                                 value=False),
    "invalid regex": Case("$match(s, /(/)", "jsonatapy", EvaluationError, ["Invalid regex", "unclosed group", FIX]),
    "lone surrogate literal, compiled": Case('"\\ud800"', "compiled", None, value="\ud800"),
    "lone surrogate literal, jsonatapy": Case('($x := "\\ud800"; $x)', "-", ExpressionError,
                                              ["\\u must be followed by 4 hex digits"]),
    "lone surrogate in the input, jsonatapy": Case("($x := s; $x)", "jsonatapy", EvaluationError,
                                                   ["the input is not JSON", "surrogates not allowed", FIX],
                                                   data={"s": "a\udc80b"}),
    "a 1,000,000-character literal": Case('"' + "y" * 1_000_000 + '"', "compiled", None, value="y" * 1_000_000),
    "a 400-digit number": Case("1" * 400, "-", ExpressionError, ["invalid JSONata (S0102): Number out of range",
                                                                 "at position 0"], "S0102"),
    "an unknown function": Case("$foo(s)", "jsonatapy", EvaluationError,
                                ["Attempted to invoke a non-function: $foo", FIX], "T1006"),
    "a misspelt function": Case("$uppercas(s)", "jsonatapy", EvaluationError,
                                ["non-function: $uppercas", FIX], "T1006"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_a_hostile_expression_ends_in_its_known_outcome(name):
    case = CASES[name]
    if case.engine == "-":  # refused by compile(): no engine runs it
        with pytest.raises(ExpressionError) as info:
            compile(case.expression)
        err: Exception = info.value
    else:
        expr = compile(case.expression)
        assert expr.engine == case.engine
        if case.error is None:
            # a deadline in place: an evaluation that backtracked for ever would be EvaluationTimeout
            assert expr.evaluate(case.data, timeout=TIMEOUT) == case.value
            return
        with pytest.raises(Exception) as caught:
            expr.evaluate(case.data, timeout=TIMEOUT)
        err = caught.value
    assert type(err) is case.error, (type(err), err)
    text = str(err)
    for fragment in case.says:
        assert fragment in text, text[-1000:]
    if case.code is not None:
        assert err.code == case.code, text[-1000:]


def test_a_lone_surrogate_from_a_mapping_is_a_dead_letter_that_says_what_to_do():
    """The compiled engine keeps a lone surrogate (jsonata-js strings are UTF-16): the step's output
    cannot be JSON, so the input is dead-lettered at once, the message naming the surrogate."""
    flow = flownb.Flow(name="surrogate", trigger=flownb.step("in", "webhook", token_env="T"),
                       steps=[flownb.step("m", "mapping", fields={"y": '"\\ud800"'})])
    result = flow.test([{"a": 1}])
    [dead] = result.dead_letters
    assert dead.error.type == MessageError.__name__ and not dead.error.retryable
    assert "surrogates not allowed" in dead.error.message
    assert "a string holds a lone UTF-16 surrogate" in dead.error.message and "remove it" in dead.error.message


#: the memory-hungry: (expression, input in the child, outcome) under a cap of what the child has
#: mapped plus SPARE_MIB; "abort" is jsonatapy's "memory allocation of N bytes failed" and SIGABRT
SPARE_MIB = 320
HUNGRY = {
    "doubling a string in $reduce": ('$reduce([1..100000], function($a, $v){ $a & $a }, "x")', "{}", "abort"),
    "$pad to 2e9 characters": ('$pad("", 2000000000, "x")', "{}", "abort"),
    "$join of 1e7 strings": ('$join($map([1..10000000], function($v){ "xxxxxxxxxxxxxxxxxxxx" }))', "{}",
                             "abort"),
    "a 1e7-item result": ("[0..9999999]", "{}", "EvaluationError: the result (78,888,891 characters of JSON) "
                                                "does not fit in memory"),
    "concatenating a 48 MiB input, compiled": ("s & s & s & s & s & s & s & s", '{"s": "x" * (48 << 20)}',
                                               "MemoryError"),
}


@pytest.mark.parametrize("name", list(HUNGRY))
def test_a_memory_hungry_expression_under_a_memory_cap(name):
    src, data, outcome = HUNGRY[name]
    out = run_capped(f"""
try:
    compile({src!r}).raw({data}, timeout=30)
    print("no error")
except Exception as exc:
    print(f"{{type(exc).__name__}}: {{exc}}")
""", spare_mib=SPARE_MIB)
    if outcome == "abort":
        assert out.returncode == -signal.SIGABRT, (out.returncode, out.stdout, out.stderr[-2000:])
        assert "memory allocation of" in out.stderr and "failed" in out.stderr
    else:
        assert out.returncode == 0, (out.returncode, out.stderr[-2000:])
        assert out.stdout.startswith(outcome), out.stdout[-2000:]
        if outcome.startswith("EvaluationError"):
            assert "make the expression return less" in out.stdout
