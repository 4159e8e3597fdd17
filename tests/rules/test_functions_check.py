"""Unknown JSONata functions are named before anything runs (validate, config checks, the editor)."""

from __future__ import annotations

import pytest

from flownb.errors import ExpressionError
from flownb.rules.functions_check import BUILTINS, check_functions, unknown_functions

from .jsonata_suite import load_cases


def test_an_unknown_function_is_named_with_its_position_and_the_nearest_builtin():
    with pytest.raises(ExpressionError) as e:
        check_functions("$trim($lowercas(customer.email))", step="to-contact", field="config.fields.email")
    err = e.value
    assert (err.position, err.step, err.field) == (6, "to-contact", "config.fields.email")
    assert str(err).startswith("step 'to-contact', field 'config.fields.email': unknown function "
                               "'$lowercas'; did you mean '$lowercase'? JSONata has no such function")
    assert str(err).endswith("$trim($lowercas(customer.email))\n          ^")


def test_functions_the_expression_binds_and_chains_are_found_or_accepted():
    assert unknown_functions("($f := function($x) { $x * 2 }; $f(3))") == []
    assert unknown_functions("$map(items, function($i, $n) { $n($i) })") == []  # a parameter called
    assert unknown_functions("name ~> $uppercase() ~> $trim") == []
    assert unknown_functions("name ~> $uppercas") == [("uppercas", 8)]
    assert unknown_functions("$foo(1) & $bar(2) & $foo(1)") == [("foo", 0), ("bar", 10), ("foo", 20)]
    assert unknown_functions("a +") == []  # does not parse: the compiler says so, not this check


def test_every_builtin_is_a_function_of_the_jsonata_engine():
    import jsonatapy
    assert [n for n in sorted(BUILTINS) if jsonatapy.compile(f"$type(${n})").evaluate({}) != "function"] == []
    assert len(BUILTINS) == 64


def test_no_case_of_the_jsonata_suite_that_succeeds_is_flagged():
    """1,686 expressions written by JSONata's authors: every one that evaluates without an error
    uses only functions that exist, so none may be flagged; the T1006 cases name unknown ones."""
    flagged_ok, t1006 = [], 0
    cases = load_cases()
    assert len(cases) == 1686
    for case in cases:
        found = unknown_functions(case.expr)
        if case.kind in ("result", "undefined") and found:
            flagged_ok.append((case.id, found))
        if case.code == "T1006" and found:
            t1006 += 1
    assert flagged_ok == []
    assert t1006 >= 1


def test_validate_names_the_function_and_exits_2(tmp_path):
    import subprocess
    import sys
    from pathlib import Path
    spec = tmp_path / "flow.yaml"
    spec.write_text("flownb: 1\nname: t\ntrigger: {name: t, component: webhook, config: {token_env: T}}\n"
                    "steps:\n  - {name: m, component: mapping, config: {fields: {email: \"$lowercas(x)\"}}}\n")
    exe = Path(sys.executable).with_name("flownb")
    r = subprocess.run([str(exe), "validate", str(spec)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert ("step 'm', field 'config.fields.email': unknown function '$lowercas'; did you mean "
            "'$lowercase'?") in r.stderr
