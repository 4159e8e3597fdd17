"""docker-compose.yml validated against the Compose specification JSON schema (vendored)."""

from __future__ import annotations

import json

import jsonschema
import pytest
import yaml

from flownb import Flow, step
from flownb.deploy import render_compose

from .conftest import DATA

SCHEMA = json.loads((DATA / "compose-spec.json").read_text())


def _validate(doc: dict) -> None:
    jsonschema.Draft201909Validator(SCHEMA).validate(doc)


def test_the_schema_rejects_a_broken_document():
    with pytest.raises(jsonschema.ValidationError):
        _validate({"services": {"a": {"image": "x", "deploy": {"replicas": "two"}}}})
    with pytest.raises(jsonschema.ValidationError):
        _validate({"services": {"a": {"image": "x", "restart_policy": "always"}}})


def test_exported_compose_is_valid_and_complete(hooks_export):
    doc = yaml.safe_load((hooks_export / "docker-compose.yml").read_text())
    _validate(doc)
    svc = doc["services"]
    assert list(svc) == ["rabbitmq", "hook", "show", "store"]
    rmq = svc["rabbitmq"]
    assert rmq["image"] == "rabbitmq:3-management" and rmq["healthcheck"]["test"][0] == "CMD"
    assert rmq["volumes"] == ["rabbitmq-data:/var/lib/rabbitmq"] and "rabbitmq-data" in doc["volumes"]
    for name in ("hook", "show", "store"):
        s = svc[name]
        assert s["command"][:5] == ["flownb", "worker", "/app/flow.yaml", "--step", name]
        assert s["environment"]["FLOWNB_BROKER_URL"] == "amqp://guest:guest@rabbitmq:5672/"
        assert s["restart"] == "unless-stopped" and "env_file" not in s
        own = {"hook": ["HOOK_TOKEN_E2E"], "show": [], "store": ["DB_URL_E2E"]}[name]  # its own secrets only
        assert {k: v for k, v in s["environment"].items() if k != "FLOWNB_BROKER_URL"} == {
            k: f"${{{k}:?set {k} in secrets.env and run docker compose --env-file secrets.env}}" for k in own}
        assert s["depends_on"] == {"rabbitmq": {"condition": "service_healthy"}}
        assert s["labels"] == {"flownb.flow": "hooks", "flownb.step": name}
    assert svc["show"]["deploy"]["replicas"] == 3
    assert svc["hook"]["ports"] == ["8080:8080"] and "--port" in svc["hook"]["command"]
    assert "ports" not in svc["store"]


def test_external_broker_and_no_secrets():
    flow = Flow(name="plain", trigger=step("tick", "schedule", cron="* * * * *"),
                steps=[step("out", "log", replicas=4)])
    doc = render_compose(flow, broker_url="amqp://guest@mq.example:5672/")
    _validate(doc)
    assert "rabbitmq" not in doc["services"] and "volumes" not in doc
    out = doc["services"]["out"]
    assert out["environment"]["FLOWNB_BROKER_URL"] == "amqp://guest@mq.example:5672/"
    assert "env_file" not in out and "depends_on" not in out and out["deploy"]["replicas"] == 4
    assert doc["services"]["tick"]["deploy"]["replicas"] == 1  # a trigger that polls never runs twice


def test_on_error_gets_one_service_with_only_its_secrets():
    flow = Flow(name="oe", trigger=step("tick", "schedule", cron="* * * * *"),
                steps=[step("out", "log", replicas=2)],
                on_error=[step("chat", "http.request", url="https://chat.example.org/hook", token_env="CHAT_TOKEN")])
    doc = render_compose(flow)
    _validate(doc)
    svc = doc["services"]
    assert list(svc) == ["rabbitmq", "tick", "out", "on-error"]
    oe = svc["on-error"]
    assert oe["command"] == ["flownb", "worker", "/app/flow.yaml", "--step", "on_error"]
    assert oe["deploy"]["replicas"] == 1
    assert set(oe["environment"]) == {"FLOWNB_BROKER_URL", "CHAT_TOKEN"}
    assert "CHAT_TOKEN" not in svc["out"]["environment"]


def test_a_step_named_like_the_on_error_service_is_refused():
    from flownb.errors import DeployError
    flow = Flow(name="oe", trigger=step("tick", "schedule", cron="* * * * *"), steps=[step("on-error", "log")],
                on_error=[step("say", "log")])
    with pytest.raises(DeployError, match="rename the step"):
        render_compose(flow)


def test_a_fused_group_is_one_service_running_its_first_step():
    flow = Flow(name="fused", trigger=step("tick", "schedule", cron="* * * * *"),
                steps=[step("shape", "mapping", fields={"a": "a"}), step("keep", "filter", condition="a"),
                       step("out", "log")], fuse=[["shape", "keep"]])
    doc = render_compose(flow, broker_url="amqp://guest@mq.example:5672/")
    _validate(doc)
    assert list(doc["services"]) == ["tick", "shape", "out"]     # no service of its own for 'keep'
    assert doc["services"]["shape"]["command"][:5] == ["flownb", "worker", "/app/flow.yaml", "--step", "shape"]


def test_a_recording_flow_gets_one_recorder_service_writing_to_its_own_volume():
    flow = Flow(name="rec", trigger=step("hook", "webhook", token_env="TOK"), steps=[step("out", "log")],
                record={"sample": 0.05, "keep": "7d"})
    doc = render_compose(flow)
    _validate(doc)
    rec = doc["services"]["recorder"]
    assert rec["command"] == ["flownb", "recorder", "/app/flow.yaml", "--db", "/data/recorder.db"]
    assert rec["volumes"] == ["recorder-data:/data"] and rec["deploy"]["replicas"] == 1
    assert set(rec["environment"]) == {"FLOWNB_BROKER_URL"}  # no secrets of the steps
    assert doc["volumes"] == {"rabbitmq-data": {}, "recorder-data": {}}
    external = render_compose(flow, broker_url="amqp://mq.example:5672/")
    _validate(external)
    assert external["volumes"] == {"recorder-data": {}}
    off = Flow(name="rec", trigger=step("hook", "webhook", token_env="TOK"), steps=[step("out", "log")],
               record={"sample": 0})
    assert "recorder" not in render_compose(off)["services"]


def test_a_step_named_like_the_recorder_service_is_refused():
    from flownb.errors import DeployError
    flow = Flow(name="rec", trigger=step("tick", "schedule", cron="* * * * *"), steps=[step("recorder", "log")],
                record={"sample": 0.5})
    with pytest.raises(DeployError, match="flight recorder's service.*rename the step"):
        render_compose(flow)
