"""Component registry: register / get / entry points / describe / validation."""

from __future__ import annotations

import sys
import textwrap
import uuid
from importlib.metadata import EntryPoint, entry_points

import pytest
from pydantic import BaseModel, ConfigDict

from flownb import registry, step
from flownb.components.base import Action, PollingTrigger, action
from flownb.errors import ConfigError, SpecError, UnknownComponentError

BUILT_INS = {"mapping", "filter", "split", "python", "python.poll", "log", "csv.poll", "csv.write",
             "sql.poll", "sql.upsert", "http.request", "http.poll", "schedule", "webhook"}


def test_built_ins_are_declared_as_entry_points():
    declared = {ep.name for ep in entry_points(group=registry.GROUP)}
    assert BUILT_INS <= declared
    assert BUILT_INS <= set(registry.available())


def test_unknown_component_suggests_nearest():
    with pytest.raises(UnknownComponentError, match=r"unknown component 'sql.pol'; did you mean 'sql.poll'\?") as e:
        registry.get("sql.pol", step="src")
    assert e.value.step == "src" and "sql.upsert" in e.value.installed


def test_entry_point_of_a_third_party_package_loads_lazily(tmp_path, monkeypatch):
    mod = f"thirdparty_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{mod}.py").write_text(textwrap.dedent('''
        from flownb.components.base import Action
        class Shout(Action):
            """Upper-case the text field."""
            def process(self, message, ctx):
                return {"text": message.body["text"].upper()}
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    eps = dict(registry._entry_points())
    eps["acme.shout"] = EntryPoint(name="acme.shout", value=f"{mod}:Shout", group=registry.GROUP)
    eps["acme.broken"] = EntryPoint(name="acme.broken", value="no_such_module_xyz:Thing", group=registry.GROUP)
    monkeypatch.setattr(registry, "_eps", eps)
    assert "acme.shout" in registry.available()
    assert mod not in sys.modules                       # not imported until asked for
    cls = registry.get("acme.shout")
    assert cls.key == "acme.shout" and cls.__module__ == mod
    assert registry.describe("acme.shout")["description"] == "Upper-case the text field."
    with pytest.raises(SpecError, match="installed .* but fails to import.*reinstall") as e:
        registry.get("acme.broken", step="x")
    assert not isinstance(e.value, UnknownComponentError)
    monkeypatch.delitem(registry._registered, "acme.shout")


class ScoreConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    field: str
    weight: float = 1.0


def test_register_describe_and_validate_step():
    key = f"test.score-{uuid.uuid4().hex[:6]}"

    @action(key, config=ScoreConfig)
    def score(body, ctx):
        """Score a body."""
        return body

    d = registry.describe(key)
    assert d["kind"] == "action" and d["description"] == "Score a body."
    assert d["fields"] == [
        {"name": "field", "type": "str", "required": True, "default": None, "help": ""},
        {"name": "weight", "type": "float", "required": False, "default": 1.0, "help": ""},
    ]
    cfg = registry.validate_step(step("s", key, field="x"), trigger=False)
    assert cfg == ScoreConfig(field="x")
    with pytest.raises(ConfigError, match=r"step 's', field 'config.field': required by"):
        registry.validate_step(step("s", key), trigger=False)
    with pytest.raises(ConfigError, match=r"field 'config.wieght'.*did you mean 'weight'"):
        registry.validate_step(step("s", key, field="x", wieght=2), trigger=False)
    with pytest.raises(ConfigError, match=r"field 'config.weight'.*got 'heavy'"):
        registry.validate_step(step("s", key, field="x", weight="heavy"), trigger=False)
    with pytest.raises(ConfigError, match="is an action, but the first step must be a trigger"):
        registry.validate_step(step("s", key, field="x"), trigger=True)


def test_a_trigger_cannot_be_an_action():
    key = f"test.poll-{uuid.uuid4().hex[:6]}"
    registry.register(key, type("P", (PollingTrigger,), {}))
    with pytest.raises(ConfigError, match="is a trigger; a flow has exactly one trigger"):
        registry.validate_step(step("later", key), trigger=False)
    assert registry.validate_step(step("src", key, interval="5m"), trigger=True).interval == 300


def test_check_config_hook_runs():
    key = f"test.checked-{uuid.uuid4().hex[:6]}"

    class Checked(Action):
        @classmethod
        def check_config(cls, config, st):
            raise ConfigError("always wrong", step=st.name, field="config")
    registry.register(key, Checked)
    with pytest.raises(ConfigError, match="step 'c', field 'config': always wrong"):
        registry.validate_step(step("c", key), trigger=False)


def test_the_field_tables_of_docs_components_md_are_those_of_the_config_models():
    """Every built-in component has a table in docs/components.md, rendered from its config model;
    after changing a model run scripts/docs-tables (this test fails until the docs match)."""
    import re
    from pathlib import Path

    from flownb.registry import available, get, render_field_tables
    doc = Path(__file__).resolve().parents[1] / "docs" / "components.md"
    text = doc.read_text(encoding="utf-8")
    assert render_field_tables(text) == text, "docs/components.md is stale: run scripts/docs-tables"
    tabled = set(re.findall(r"<!-- fields: ([\w.]+) -->", text))
    builtin = {k for k in available() if get(k).__module__.startswith("flownb.components.")}
    assert {"csv.poll", "sql.upsert", "http.request", "mapping", "webhook", "log"} <= builtin
    assert builtin - tabled == set(), "add a '<!-- fields: KEY --><!-- /fields -->' block for these"
