import pytest

from flownb.errors import ParameterError
from flownb.params import coerce_all, inspect
from flownb.schedule import add_schedule


def test_parameters_cell_is_read_with_types(params_nb):
    p = inspect(params_nb)
    assert {k: v.type for k, v in p.items()} == {
        "n": "int",
        "label": "str",
        "rate": "float",
        "out_file": "str",
        "sleep": "float",
        "fail": "bool",
    }
    assert p["n"].default == 3


def test_strings_from_the_command_line_get_the_parameter_types(params_nb):
    given = {"n": "7", "rate": "2", "fail": "yes", "label": "x"}
    assert coerce_all(inspect(params_nb), given, source="the notebook") == {
        "n": 7,
        "rate": 2.0,
        "fail": True,
        "label": "x",
    }


def test_unknown_name_lists_the_known_ones(params_nb):
    with pytest.raises(ParameterError) as e:
        coerce_all(inspect(params_nb), {"nn": 1}, source="the notebook")
    msg = str(e.value)
    assert "did you mean 'n'" in msg and "rate (float)" in msg and "fail (bool)" in msg


@pytest.mark.parametrize("name,value", [("n", "three"), ("n", True), ("rate", "fast"), ("fail", "maybe")])
def test_wrong_type_is_refused(params_nb, name, value):
    with pytest.raises(ParameterError, match=f"parameter '{name}'"):
        coerce_all(inspect(params_nb), {name: value}, source="the notebook")


def test_add_checks_before_storing(store, params_nb, tmp_path):
    with pytest.raises(ParameterError):
        add_schedule(store, params_nb, cron="0 3 * * *", name="bad", parameters={"nope": 1})
    assert store.names() == []
    with pytest.raises(Exception, match="does not exist"):
        add_schedule(store, tmp_path / "missing.ipynb", cron="0 3 * * *", name="gone")
    s = add_schedule(store, params_nb, cron="0 3 * * *", name="good", parameters={"n": "5"})
    assert store.get("good").parameters == {"n": 5} == s.parameters
    with pytest.raises(Exception, match="exists; remove it first"):
        add_schedule(store, params_nb, cron="0 3 * * *", name="good")
