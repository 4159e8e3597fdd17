"""The JSONata test suite (jsonata-js v2.2.2) against flownb.rules and against jsonatapy alone.

The runner is ``tests/rules/jsonata_suite.py`` (``python -m tests.rules.jsonata_suite`` prints the
table published in docs/rules.md). Requirements:

- every case jsonatapy passes, flownb.rules passes too: the compiled engine never gives a different
  value or error where jsonatapy is right (it falls back instead);
- flownb.rules passes at least as many cases as jsonatapy;
- the failures of both engines are the ones recorded in ``jsonata_suite_known.json`` (computed by
  ``python -m tests.rules.jsonata_suite --update``), so a regression or a fix shows up here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonatapy
import pytest

from . import jsonata_suite as suite

pytestmark = pytest.mark.timeout(600)

DOCS = Path(__file__).parents[2] / "docs" / "rules.md"


@pytest.fixture(scope="module")
def report() -> suite.Report:
    return suite.run_all()


def _fails(report, outcomes):
    return {c.id: (c.expr, o.engine, o.detail) for c, o in zip(report.cases, outcomes, strict=True)
            if o.status == "fail"}


def test_the_vendored_suite_is_complete(report):
    groups = {c.id.split("/")[0] for c in report.cases}
    assert len(groups) == 102 and len(report.cases) == 1686
    assert (suite.SUITE / "LICENSE").read_text().startswith("MIT license")
    kinds = {c.kind for c in report.cases}
    assert kinds == {"result", "undefined", "code", "error"}
    assert sum(bool(c.bindings) for c in report.cases) == 7  # cases with variable bindings run too
    assert sum(c.data is suite._NO_INPUT for c in report.cases) > 100  # no input: undefined


def test_every_case_jsonatapy_passes_flownb_passes(report):
    regressions = {cid: _fails(report, report.flownb)[cid]
                   for cid in report.ids(report.jsonatapy) - report.ids(report.flownb)}
    assert not regressions, regressions


def test_the_compiled_engine_never_differs_where_jsonatapy_is_right(report):
    wrong = {c.id: (c.expr, o.detail) for c, o, ref in zip(report.cases, report.flownb, report.jsonatapy, strict=True)
             if o.engine == "compiled" and not o.passed and ref.passed}
    assert not wrong, wrong
    compiled = [o for o in report.flownb if o.engine == "compiled"]
    assert len(compiled) > 600  # the subset is exercised, not bypassed


def test_compiled_suite_expressions_agree_with_jsonatapy_on_every_dataset():
    """Beyond each case's own input: the ~600 suite expressions the compiled engine takes, on all
    the suite's datasets and a few other inputs (arrays, scalars, no object), give jsonatapy's value
    or error code."""
    differences = suite.cross_check()
    assert not differences, differences[:10]


def test_flownb_passes_at_least_as_many_cases_as_jsonatapy(report):
    n = report.counts()
    assert n["flownb_pass"] >= n["jsonatapy_pass"], n
    # no case is skipped: the 11 with a timelimit and depth run on both engines, each with its guard
    assert report.ids(report.jsonatapy, "skip") == report.ids(report.flownb, "skip") == set()
    assert n["skipped"] == 0 and n["guarded"] == len(report.guarded) == 11


def test_failures_are_the_recorded_ones(report):
    known = json.loads(suite.KNOWN.read_text())
    flownb = _fails(report, report.flownb)
    assert set(flownb) == set(known["flownb_failures"]), (
        f"flownb failures changed (run python -m tests.rules.jsonata_suite --update): {flownb}")
    if known["jsonatapy_version"] != jsonatapy.__version__:
        pytest.skip(f"recorded with jsonatapy {known['jsonatapy_version']}, not {jsonatapy.__version__}")
    assert set(_fails(report, report.jsonatapy)) == set(known["jsonatapy_failures"])


def test_guarded_cases_pass_on_flownb_with_its_deadline(report):
    """timelimit/depth cases: jsonata-js's runner instruments evaluation (U1001); flownb.rules runs
    them with ``Expression.raw(timeout=timelimit, max_depth=depth)`` (EvaluationTimeout or D1011 for
    U1001), and they all pass. jsonatapy's own timeout and max_stack_depth (D1012/D1011) play that
    part for jsonatapy alone (informational)."""
    assert len(report.guarded) == 11
    flownb = {c.id: o for c, o in zip(report.cases, report.flownb, strict=True) if c.id in report.guarded}
    assert all(o.passed for o in flownb.values()), {k: o.detail for k, o in flownb.items() if not o.passed}
    ja = [o for c, o in zip(report.cases, report.jsonatapy, strict=True) if c.id in report.guarded]
    assert all(o.status in ("pass", "fail") for o in ja)


def test_the_published_table_is_current(report):
    table = suite.table(report)
    assert suite.COMMAND in table
    docs = DOCS.read_text()
    published = re.search(r"\| jsonatapy (\S+) alone", docs)
    assert published, "docs/rules.md has no suite table"
    if published.group(1) != jsonatapy.__version__:
        pytest.skip(f"the table was made with jsonatapy {published.group(1)}")
    for line in table.splitlines():
        if line.startswith("|"):
            assert line in docs, f"docs/rules.md is out of date; regenerate with {suite.COMMAND}:\n{table}"


@pytest.mark.parametrize("cid", ["function-string/case030.json", "function-string/case019.json",
                                 "flattening/array-inputs.json#1", "function-split/case017.json",
                                 "function-encodeUrl/case002.json", "errors/case010.json",
                                 "function-signatures/case034.json", "literals/case017.json",
                                 "function-length/case004.json", "function-number/case029.json"])
def test_cases_the_compiled_engine_once_got_wrong(cid):
    (case,) = [c for c in suite.load_cases() if c.id == cid]
    assert suite.run_flownb(case).passed, suite.run_flownb(case)


def test_bindings_shadowing_a_built_in_function_go_to_jsonatapy():
    from flownb.rules import EvaluationError, compile

    e = compile("$uppercase(s)")
    assert e.engine == "compiled"
    assert e.evaluate({"s": "ab"}, bindings={"x": 1}) == "AB"
    with pytest.raises(EvaluationError) as info:  # $uppercase is now a number, not a function
        e.evaluate({"s": "ab"}, bindings={"uppercase": 5})
    assert info.value.code == "T1006"


@pytest.mark.parametrize("expr, code", [
    ("1 / 0", "D1001"),                   # flownb: an infinity is an error (jsonatapy: null)
    ('{"a": 5 % 0}', "D1001"),
    ("$string(1/0)", "D3001"),            # jsonata-js: $string of an infinity
    ("1/(10e300 * 10e100)", "D1001"),
    ('$string({"inf": 1/0})', "D1001"),
    ('"x" & (1/0)', "D1001"),             # jsonata-js D3001, but jsonatapy gives no code here
])
def test_infinities_are_errors_with_the_jsonata_js_code(expr, code):
    from flownb.rules import EvaluationError, compile

    e = compile(expr)
    assert e.engine == "compiled"
    with pytest.raises(EvaluationError) as info:
        e.evaluate({})
    assert info.value.code == code


def test_encode_url_follows_javascript():
    from flownb.rules import compile

    assert compile('$encodeUrl("https://x.org/?q=a b[1]#f")').evaluate(None) == \
        "https://x.org/?q=a%20b%5B1%5D#f"
    assert compile("$encodeUrlComponent(\"?x=t!*'()~ é\")").evaluate(None) == "%3Fx%3Dt!*'()~%20%C3%A9"
