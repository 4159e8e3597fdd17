"""flownb.params: one inspection and one coercion for flows, export and schedules."""

from __future__ import annotations

import pytest

from flownb.errors import ParameterError
from flownb.params import Param, coerce, coerce_all


def test_a_declared_type_wins_over_the_default():
    p = Param.of("n", None, "int")
    assert (p.type, p.declared) == ("int", True)
    assert coerce("7", p) == 7
    with pytest.raises(ParameterError, match=r"parameter 'n' does not fit the type int declared in the notebook; "
                                             r"pass e.g\. 3"):
        coerce("seven", p)


def test_without_type_or_default_any_value_passes():
    p = Param.of("when", None)  # e.g. a default that is an expression: datetime.now()
    assert p.type is None
    assert coerce("2024-01-01", p) == "2024-01-01" and coerce([1], p) == [1]


@pytest.mark.parametrize("default,value,expected", [(0.5, 2, 2.0), (0.5, "2", 2.0), (1, 2, 2)])
def test_an_int_fits_a_float(default, value, expected):
    out = coerce(value, Param.of("x", default))
    assert out == expected and type(out) is type(expected)


@pytest.mark.parametrize("default,value", [(1, True), (1, 2.5), ("s", 3), ([1], {"a": 1}), (True, 1)])
def test_typed_values_that_do_not_fit_are_refused_not_converted(default, value):
    with pytest.raises(ParameterError, match=r"does not fit the type of the default") as e:
        coerce(value, Param.of("x", default))
    assert e.value.field == "x"


def test_coerce_all_lists_what_the_source_has():
    params = {"n": Param.of("n", 3), "rate": Param.of("rate", 0.5)}
    assert coerce_all(params, {"n": "4"}, source="notebook 'a.ipynb'") == {"n": 4}
    with pytest.raises(ParameterError) as e:
        coerce_all(params, {"nn": 1}, source="notebook 'a.ipynb'")
    assert str(e.value).endswith("notebook 'a.ipynb' has no parameter 'nn'; did you mean 'n'? "
                                 "its parameters: n (int) = 3, rate (float) = 0.5")
    with pytest.raises(ParameterError, match=r"has no parameter 'x' its parameters: \(none: tag a cell"):
        coerce_all({}, {"x": 1}, source="notebook 'b.ipynb'")


def test_the_flow_model_uses_the_same_rules():
    from flownb import Flow, step
    flow = Flow(name="p", parameters={"rate": 0.5, "on": False},
                trigger=step("t", "webhook"), steps=[step("l", "log")])
    assert flow.with_parameters(rate=1, on="yes").parameters == {"rate": 1.0, "on": True}
    with pytest.raises(ParameterError, match="parameter 'on' does not fit"):
        flow.with_parameters(on=1)
