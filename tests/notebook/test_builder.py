"""FlowBuilder and its config forms, driven through the widgets' values and clicks."""

from __future__ import annotations

from typing import Literal

import pytest
import yaml
from pydantic import BaseModel, ConfigDict, Field

import flownb
from flownb import registry
from flownb.components.base import Action
from flownb.notebook import FlowBuilder
from flownb.notebook.forms import ConfigForm


def _flow() -> flownb.Flow:
    return flownb.Flow(name="demo", parameters={"lvl": "info"},
                       trigger=flownb.step("incoming", "webhook", token_env="HOOK_TOKEN"),
                       steps=[flownb.step("first", "log", level="{{ lvl }}"),
                              flownb.step("second", "log", prefix="> ", replicas=2, retry={"max_attempts": 3})])


def test_round_trip_of_an_existing_flow():
    b = FlowBuilder(flow=_flow())
    assert b.flow == _flow()
    assert b.validate() == []
    assert "✓ valid" in b.card("second").message.value
    assert "flow is valid: 3 steps" in b.status.value
    assert "<svg" in b.diagram.value


def test_a_number_field_holding_no_number_opens_and_is_named_by_validation():
    # found by mypy: int(None) raised TypeError, so FlowBuilder could not open a flow whose spec
    # (loadable: configs are validated later) wrote `max_depth: null`
    flow = flownb.Flow(name="demo", trigger=flownb.step("incoming", "webhook", max_depth=None),
                       steps=[flownb.step("first", "log")])
    b = FlowBuilder(flow=flow)
    assert b.flow == flow  # the value is kept as written, not replaced by the default
    assert "max_depth" in b.card("incoming").message.value
    assert any("max_depth" in m for m in b.validate())


def test_palette_click_adds_reorders_and_removes(tmp_path):
    b = FlowBuilder(flow=_flow())
    palette = {btn.description: btn for row in b.palette.children for btn in row.children[1].children}
    assert {"log", "csv.write", "http.request"} <= set(palette)
    assert palette["webhook"].button_style == "info"  # triggers look different
    palette["log"].click()
    assert b.step_names == ["incoming", "first", "second", "log"]
    b.move("log", -1)
    assert b.step_names == ["incoming", "first", "log", "second"]
    b.card("log").box.children[0].children[-1].click()  # the trash button
    assert b.step_names == ["incoming", "first", "second"]
    palette["schedule"].click()  # a trigger replaces the trigger
    assert b.step_names[0] == "schedule" and b.flow.trigger.component == "schedule"
    problems = b.validate()
    assert problems and "config.cron" in problems[0] and "required" in problems[0]
    assert "required by 'schedule'" in b.card("schedule").message.value
    b.card("schedule").form.set("cron", "*/5 * * * *")
    assert b.validate() == []
    b.path.value = str(tmp_path / "clicked.yaml")
    b.save_button.click()
    assert "saved" in b.status.value and flownb.load(tmp_path / "clicked.yaml") == b.flow
    out = b.save(tmp_path / "flow.yaml")
    assert flownb.load(out) == b.flow
    assert yaml.safe_load(out.read_text())["trigger"]["config"] == {"cron": "*/5 * * * *"}


def test_widget_edits_show_inline_validation_never_raise():
    b = FlowBuilder(flow=_flow())
    card = b.card("first")
    card.name.value = "Bad Name"
    problems = b.validate()
    assert any("lowercase" in p for p in problems)
    assert "lowercase letters" in card.message.value
    card.name.value = "first"
    b.name.value = "Not A Slug"
    assert any("flow name" in p for p in b.validate())
    b.name.value = "demo"
    b.card("second").form.set("level", "error")
    assert b.validate() == [] and b.flow.step("second").config["level"] == "error"
    b.add("csv.write")
    assert "path" in b.card("csv-write").message.value
    with pytest.raises(flownb.SpecError):
        b.save()


def test_sample_that_is_not_a_dataframe_is_a_message():
    b = FlowBuilder(sample=42)
    assert any("must be a pandas DataFrame" in p for p in b.validate())
    assert b.run() is None
    assert "must be a pandas DataFrame" in b.status.value


class _Cfg(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str
    token_env: str | None = None
    mode: Literal["a", "b"] = "a"
    verbose: bool = False
    batch: int = 10
    ratio: float = 0.5
    interval: flownb.Duration = 60.0
    headers: dict = Field(default_factory=dict)


def test_config_form_draws_every_kind_and_reads_back():
    import ipywidgets as w

    form = ConfigForm(_Cfg, {"url": "http://x", "batch": "{{ n }}"})
    kinds = {f.name: (f.kind, type(f.widget)) for f in form.fields}
    assert kinds == {"url": ("text", w.Text), "token_env": ("env", w.Text), "mode": ("choice", w.Dropdown),
                     "verbose": ("bool", w.Checkbox), "batch": ("text", w.Text), "ratio": ("float", w.FloatText),
                     "interval": ("text", w.Text), "headers": ("yaml", w.Textarea)}
    assert "environment variable" in form.fields[1].widget.placeholder
    assert form.fields[6].widget.value == "1m"
    assert form.config() == {"url": "http://x", "batch": "{{ n }}"}
    form.set("mode", "b")
    form.set("headers", {"X-A": "1"})
    form.set("interval", "2m")
    form.set("token_env", "CRM_TOKEN")
    assert form.config() == {"url": "http://x", "batch": "{{ n }}", "mode": "b", "headers": {"X-A": "1"},
                             "interval": "2m", "token_env": "CRM_TOKEN"}
    form.fields[7].widget.value = "a: [1"
    with pytest.raises(ValueError, match="not valid YAML"):
        form.config()


def test_custom_component_gets_a_form():
    @registry.register("test.builder-custom")
    class Custom(Action):
        """A custom action."""
        Config = _Cfg

        def process(self, message, ctx):
            return message.body

    b = FlowBuilder(flow=_flow())
    b.add("test.builder-custom", name="custom")
    assert "required by 'test.builder-custom'" in b.card("custom").message.value
    b.card("custom").form.set("url", "http://example")
    assert b.validate() == []


def test_run_on_sample_shows_outputs_and_dead_letters_in_tabs():
    source = "def f(body, ctx):\n    return {'x': 10 // body['d']}\n"
    flow = flownb.Flow(name="run", trigger=flownb.step("in", "webhook", token_env="T"),
                       steps=[flownb.step("divide", "python", source=source, function="f")])
    b = FlowBuilder(sample=[{"d": 2}, {"d": 0}, {"d": 5}], flow=flow)
    assert b.results.layout.display == "none"  # no empty tab box under run/save before a run
    b.run_button.click()
    assert b.results.layout.display is None
    titles = [b.results.get_title(i) for i in range(len(b.results.children))]
    assert titles == ["in (3)", "divide (2)", "dead letters (1)", "timings"]
    assert ">5<" in b.results.children[1].value and ">2<" in b.results.children[1].value
    assert "ZeroDivisionError" in b.results.children[2].value
    assert "1 dead letters" in b.status.value
    assert b.result.frame("divide")["x"].tolist() == [5, 2]


def test_run_on_sample_is_dry_until_the_live_box_is_ticked(tmp_path):
    out = tmp_path / "big-orders.csv"
    flow = flownb.Flow(name="w", trigger=flownb.step("in", "webhook", token_env="T"),
                       steps=[flownb.step("write", "csv.write", path=str(out))])
    b = FlowBuilder(sample=[{"id": 1}, {"id": 2}], flow=flow)
    assert b.live.value is False
    b.run_button.click()
    titles = [b.results.get_title(i) for i in range(len(b.results.children))]
    assert titles == ["in (2)", "write (2)", "dead letters (0)", "write: would send (2)", "timings"]
    assert not out.exists() and "dry run" in b.results.children[3].value
    b.live.value = True
    b.run_button.click()
    assert out.read_text() == "id\n1\n2\n"
    assert [b.results.get_title(i) for i in range(len(b.results.children))] == \
        ["in (2)", "write (2)", "dead letters (0)", "timings"]


def test_run_on_a_dataframe_sample_feeds_the_records_of_flownb_records():
    import pandas as pd

    from flownb.records import to_records

    df = pd.DataFrame({"customer.email": ["A@X", None], "n": [1.5, float("nan")],
                       "at": pd.to_datetime(["2024-01-02T03:04:05", None], utc=True)})
    flow = flownb.Flow(name="run", trigger=flownb.step("in", "webhook", token_env="T"),
                       steps=[flownb.step("m", "mapping", fields={"e": "$lowercase(customer.email)"})])
    result = FlowBuilder(sample=df, flow=flow).run()
    assert result.outputs["in"] == to_records(df) == [
        {"customer": {"email": "A@X"}, "n": 1.5, "at": "2024-01-02T03:04:05.000Z"}, {"customer": {}}]
    assert result.outputs["m"] == [{"e": "a@x"}, {}] and result.dead_letters == []


def test_sample_with_colliding_columns_is_a_message():
    import pandas as pd

    b = FlowBuilder(sample=pd.DataFrame({"a": [1], "a.b": [2]}), flow=_flow())
    assert any("columns 'a' and 'a.b' collide" in p for p in b.validate())
    assert b.run() is None and "collide" in b.status.value


def test_a_config_form_shows_what_the_config_sets_open_and_lists_as_lists():
    m = ConfigForm(registry.get("mapping").Config, {"fields": {"email": "$lowercase(email)"}})
    assert [getattr(c, "description", None) for c in m.widget.children][0] == "fields"  # not folded away
    c = ConfigForm(registry.get("csv.write").Config, {"path": "out.csv"})
    columns = next(f for f in c.fields if f.name == "columns").widget
    assert columns.placeholder == "YAML, e.g. [a, b]"


def test_a_yaml_field_is_as_tall_as_what_it_holds_and_a_checkbox_sits_in_the_input_column():
    fields = {f"f{i}": f"$string(x{i})" for i in range(6)}
    m = ConfigForm(registry.get("mapping").Config, {"fields": fields})
    box = m.fields[0].widget
    assert box.value.count("\n") == 5 and box.rows == 7  # six rules shown whole, no scrolling
    empty = ConfigForm(registry.get("csv.write").Config, {"path": "o.csv"})
    assert next(f for f in empty.fields if f.name == "columns").widget.rows == 3
    poll = ConfigForm(registry.get("csv.poll").Config, {"path": "a.csv", "cursor": "n"})
    check = next(f for f in poll.fields if f.name == "parse_numbers").widget
    assert check.indent and check.style.description_width == "11em"  # lines up with the other inputs


def test_a_route_step_is_built_edited_and_run_in_the_builder():
    """A route step from the palette: branches added, named, given conditions and steps, a default
    branch, a branch removed; the flow round-trips and runs, showing the branch each row took."""
    import pandas as pd
    b = FlowBuilder(flow=flownb.Flow(name="demo", trigger=flownb.step("incoming", "webhook", token_env="HOOK_TOKEN")),
                    sample=pd.DataFrame([{"country": "GB"}, {"country": "US"}, {"country": "FR"}]))
    palette = {btn.description: btn for row in b.palette.children for btn in row.children[1].children}
    palette["route"].click()
    card = b.route_card("route")
    uk = card.branches[0]
    uk.name.value, uk.when.value = "uk", "country = 'GB'"
    b.add("mapping", "tag-uk", branch=("route", "uk"), expression="$merge([$, {'tag': 'uk'}])")
    card.add_branch_button.click()
    us = card.branches[1]
    us.name.value, us.when.value = "us", "country = 'US'"
    us.pick.value = "log"
    us.add_button.click()  # a log step in branch us
    card.add_branch("never", "false")
    card.remove_branch("never")
    card.default_check.value = True
    b.add("mapping", "tag-other", branch=("route", "default"), expression="$merge([$, {'tag': 'other'}])")
    b.add("log", "after")
    assert b.validate() == []
    flow = b.flow
    route = flow.step("route").route
    assert [(x.name, x.when, [s.name for s in x.steps]) for x in route.branches] == [
        ("uk", "country = 'GB'", ["tag-uk"]), ("us", "country = 'US'", ["log"])]
    assert [s.name for s in route.default] == ["tag-other"]
    assert [s.name for s in flow.actions] == ["route", "tag-uk", "log", "tag-other", "after"]
    assert FlowBuilder(flow=flow).flow == flow  # a route step opens as it was saved
    assert "route route — branches" in b.diagram.value
    result = b.run()
    assert [r["_branch"] for r in result.routes["route"]] == ["uk", "us", "default"]
    assert any(b.results.get_title(i) == "route: branches (3)" for i in range(len(b.results.children)))
    b.move("log", -1)  # moves within its branch (alone there: stays)
    b.remove("tag-uk")
    assert b.flow.step("route").route.branches[0].steps == []
    uk.when.value = "country ="  # a condition that does not compile: named on the route card
    problems = b.validate()
    assert problems and "route.branches.0.when" in problems[0] and "route.branches.0.when" in card.message.value
    card.remove_branch("us")
    with pytest.raises(flownb.FlownbError, match="needs at least one branch"):
        card.remove_branch("uk")


def test_run_on_a_raw_read_csv_sample_of_a_csv_poll_flow_says_how_it_differs(tmp_path):
    import pandas as pd
    (tmp_path / "o.csv").write_text("id,zip,coupon\n1,01234,\n2,10115,X\n")
    flow = flownb.Flow(name="o", trigger=flownb.step("src", "csv.poll", path=str(tmp_path / "o.csv"), cursor="id"),
                       steps=[flownb.step("shape", "mapping", fields={"zip": "$string(zip)"})])
    raw = FlowBuilder(sample=pd.read_csv(tmp_path / "o.csv"), flow=flow)
    raw.run_button.click()
    assert len(raw.notes) == 1 and "did not come from flow.sample()" in raw.status.value
    assert raw.result.outputs["shape"] == [{"zip": "1234"}, {"zip": "10115"}]
    b = FlowBuilder(sample=flow.sample(), flow=flow)
    b.run_button.click()
    assert b.notes == [] and b.result.outputs["shape"] == [{"zip": "01234"}, {"zip": "10115"}]
