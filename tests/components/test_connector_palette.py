"""The connectors of issue 15 in `flownb components` and the FlowBuilder palette: each appears with
its kind, clicking it adds a card whose form has the config model's fields, and a form filled with
the required fields gives a valid flow (nothing connects: validation only)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import flownb
from flownb.notebook import FlowBuilder

#: key → (kind, required config that makes the step valid)
CONNECTORS = {
    "mqtt.subscribe": ("poll", {"topics": ["shop/orders/#"]}),
    "mqtt.publish": ("action", {"topic": "shop/orders/{id}"}),
    "redis.stream": ("poll", {"stream": "orders"}),
    "redis.xadd": ("action", {"stream": "orders-out"}),
    "sql.poll": ("poll", {"url": "sqlite:///shop.db", "table": "orders", "cursor": "updated_at"}),
    "sql.upsert": ("action", {"url": "sqlite:///shop.db", "table": "contacts", "key": ["id"]}),
    "redis.set": ("action", {"key": "k:{id}"}),
    "nats.subscribe": ("poll", {"subject": "orders.>"}),
    "nats.publish": ("action", {"subject": "orders.created"}),
    "amqp.consume": ("poll", {"queue": "shop-orders"}),
    "amqp.publish": ("action", {"routing_key": "shop-orders"}),
    "smtp.send": ("action", {"sender": "a@example.com", "to": "{email}", "subject": "hi"}),
    "file.read": ("poll", {"path": "in/*.parquet"}),
    "file.write": ("action", {"path": "out.xlsx"}),
}


def test_flownb_components_lists_them():
    exe = str(Path(sys.executable).parent / "flownb")
    out = subprocess.run([exe, "components"], check=True, capture_output=True, text=True, timeout=60,
                         env={"COLUMNS": "200", "PATH": str(Path(sys.executable).parent)}).stdout
    for key, (kind, _cfg) in CONNECTORS.items():
        line = next((ln for ln in out.splitlines() if f" {key} " in ln), None)
        assert line is not None and kind in line, (key, out)


@pytest.mark.parametrize("key", list(CONNECTORS))
def test_the_palette_adds_a_card_with_the_models_form_and_it_validates(key):
    kind, required = CONNECTORS[key]
    flow = flownb.Flow(name="demo", trigger=flownb.step("incoming", "webhook", token_env="HOOK_TOKEN"),
                       steps=[flownb.step("log", "log")])
    b = FlowBuilder(flow=flow)
    palette = {btn.description: btn for row in b.palette.children for btn in row.children[1].children}
    assert key in palette and (palette[key].button_style == "info") == (kind != "action")
    palette[key].click()
    card_name = key.replace(".", "-")
    card = b.card(card_name)
    model = flownb.registry.get(key).Config
    assert {f.name for f in card.form.fields} == set(model.model_fields)
    for field, value in required.items():
        card.form.set(field, value)
    assert b.validate() == [], b.validate()
    step = b.flow.trigger if kind != "action" else b.flow.steps[-1]
    assert step.component == key and step.config == required
