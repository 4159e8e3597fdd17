"""``flownb export``'s flags through the command line (``main(["export", …])``), each asserted by
what it writes: ``--image``, ``--ingress-host``, ``--keda``, ``--broker-url`` (with and without a
password), ``--flow``, ``-p`` and ``-f``/``--params-file`` (and ``-p`` winning over ``-f``)."""

from __future__ import annotations

import json

import pytest
import yaml

from flownb import Flow, step
from flownb.cli import main

from .conftest import DATA, load_yaml_all

pytestmark = [pytest.mark.integration]


@pytest.fixture
def spec(tmp_path, monkeypatch):
    """A webhook flow with parameters, as a spec: no papermill run, no secret in it."""
    monkeypatch.setenv("EXPORT_CLI_TOKEN", "t0ken-export-cli")
    flow = Flow(name="cli-export", parameters={"label": "a", "n": 1},
                trigger=step("hook", "webhook", token_env="EXPORT_CLI_TOKEN"),
                steps=[step("shape", "mapping", fields={"id": "id", "label": '"{{ label }}"'}),
                       step("show", "log", prefix="event: ")])
    return flow.save(tmp_path / "flow.yaml")


def _k8s(out) -> list[dict]:
    return [d for f in sorted((out / "k8s").glob("*.yaml")) for d in load_yaml_all(f)]


def _of_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def _images(out) -> set[str]:
    compose = yaml.safe_load((out / "docker-compose.yml").read_text())
    workers = {svc["image"] for name, svc in compose["services"].items() if name != "rabbitmq"}
    pods = {c["image"] for d in _of_kind(_k8s(out), "Deployment")
            for c in d["spec"]["template"]["spec"]["containers"] if c["name"] != "rabbitmq"}
    return workers | pods


def test_without_flags_the_defaults_are_written(spec, tmp_path, capsys):
    """The baseline the flags change: the default image, a RabbitMQ of its own, no Ingress, no KEDA."""
    out = tmp_path / "out"
    assert main(["export", str(spec), "-o", str(out)]) == 0
    assert "exported flow 'cli-export'" in capsys.readouterr().out
    assert _images(out) == {"flownb-cli-export:latest"}
    docs = _k8s(out)
    assert not _of_kind(docs, "Ingress") and not _of_kind(docs, "ScaledObject")
    assert (out / "k8s" / "rabbitmq.yaml").exists()
    assert "rabbitmq" in yaml.safe_load((out / "docker-compose.yml").read_text())["services"]
    assert json.loads((out / "params.json").read_text())["flow_parameters"] == {"label": "a", "n": 1}


def test_image_names_the_image_of_every_worker(spec, tmp_path):
    out = tmp_path / "out"
    assert main(["export", str(spec), "--image", "registry.example/team/cli-export:1.2", "-o", str(out)]) == 0
    assert _images(out) == {"registry.example/team/cli-export:1.2"}


def test_ingress_host_adds_an_ingress_for_the_webhook(spec, tmp_path):
    out = tmp_path / "out"
    assert main(["export", str(spec), "--target", "k8s", "--ingress-host", "hooks.example.com",
                 "-o", str(out)]) == 0
    [ingress] = _of_kind(_k8s(out), "Ingress")
    [rule] = ingress["spec"]["rules"]
    assert rule["host"] == "hooks.example.com"
    [path] = rule["http"]["paths"]
    assert path["path"] == "/hooks/cli-export"
    backend = path["backend"]["service"]["name"]
    [service] = [s for s in _of_kind(_k8s(out), "Service") if s["metadata"]["name"] == backend]
    assert service["metadata"]["labels"]["flownb.step"] == "hook"
    assert not (out / "docker-compose.yml").exists()  # --target k8s


def test_keda_adds_a_scaled_object_per_action_step(spec, tmp_path):
    out = tmp_path / "out"
    assert main(["export", str(spec), "--target", "k8s", "--keda", "-o", str(out)]) == 0
    docs = _k8s(out)
    scaled = {d["metadata"]["labels"]["flownb.step"]: d for d in _of_kind(docs, "ScaledObject")}
    actions = {d["metadata"]["labels"]["flownb.step"] for d in _of_kind(docs, "Deployment")} - {"hook", "rabbitmq"}
    assert set(scaled) == actions and actions  # each action's worker, not the trigger's
    for name, obj in scaled.items():
        [trigger] = obj["spec"]["triggers"]
        assert trigger["type"] == "rabbitmq"
        assert trigger["metadata"]["queueName"] == f"flownb.cli-export.{name}"
        deployment = next(d for d in _of_kind(docs, "Deployment") if d["metadata"]["labels"]["flownb.step"] == name)
        assert obj["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]


def test_broker_url_without_a_password_is_written_and_no_broker_is_deployed(spec, tmp_path):
    out = tmp_path / "out"
    url = "amqp://broker.internal:5672/flows"
    assert main(["export", str(spec), "--broker-url", url, "-o", str(out)]) == 0
    compose = yaml.safe_load((out / "docker-compose.yml").read_text())
    assert "rabbitmq" not in compose["services"]
    assert {svc["environment"]["FLOWNB_BROKER_URL"] for svc in compose["services"].values()} == {url}
    assert not (out / "k8s" / "rabbitmq.yaml").exists()
    envs = [e for d in _of_kind(_k8s(out), "Deployment") for c in d["spec"]["template"]["spec"]["containers"]
            for e in c["env"] if e["name"] == "FLOWNB_BROKER_URL"]
    assert envs and all(e == {"name": "FLOWNB_BROKER_URL", "value": url} for e in envs)


def test_broker_url_with_a_password_goes_to_the_secrets_never_to_a_file(spec, tmp_path):
    out = tmp_path / "out"
    url = "amqp://flows:pw-export-cli-9@broker.internal:5672/"
    assert main(["export", str(spec), "--broker-url", url, "-o", str(out)]) == 0
    for p in out.rglob("*"):
        if p.is_file():
            assert "pw-export-cli-9" not in p.read_text(), p
    assert "FLOWNB_BROKER_URL=" in (out / "secrets.env.example").read_text().split()
    envs = [e for d in _of_kind(_k8s(out), "Deployment") for c in d["spec"]["template"]["spec"]["containers"]
            for e in c["env"] if e["name"] == "FLOWNB_BROKER_URL"]
    assert envs and all("secretKeyRef" in e["valueFrom"] for e in envs)


def test_params_file_and_param_set_the_flow_parameters_and_param_wins(spec, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("label: from-file\nn: 5\n")
    out = tmp_path / "out"
    assert main(["export", str(spec), "-f", str(params), "-p", "n", "7", "-o", str(out)]) == 0
    written = yaml.safe_load((out / "flow.yaml").read_text())
    assert written["parameters"] == {"label": "from-file", "n": 7}
    assert written["steps"][0]["config"]["fields"]["label"] == '"from-file"'
    assert json.loads((out / "params.json").read_text())["flow_parameters"] == {"label": "from-file", "n": 7}
    configmap = _of_kind(_k8s(out), "ConfigMap")[0]
    assert yaml.safe_load(configmap["data"]["flow.yaml"])["parameters"] == {"label": "from-file", "n": 7}


def test_a_params_file_with_an_unknown_name_is_exit_2(spec, tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text("lable: x\n")
    assert main(["export", str(spec), "--params-file", str(params), "-o", str(tmp_path / "out")]) == 2
    assert "did you mean 'label'" in capsys.readouterr().err


def test_flow_picks_one_of_the_notebooks_flows_with_a_params_file(tmp_path, monkeypatch):
    """A notebook run by papermill: ``-f`` sets its parameters (one of them makes it display a second
    flow), ``--flow`` picks which flow is exported."""
    monkeypatch.setenv("HOOK_TOKEN_E2E", "t0ken-value-cli")
    params = tmp_path / "params.yaml"
    params.write_text("second_flow: true\ntable: t_cli\n")
    out = tmp_path / "out"
    assert main(["export", str(DATA / "hooks.ipynb"), "-f", str(params), "--flow", "hooks-copy",
                 "--target", "compose", "-o", str(out)]) == 0
    assert yaml.safe_load((out / "flow.yaml").read_text())["name"] == "hooks-copy"
    assert json.loads((out / "params.json").read_text())["parameters"]["table"] == "t_cli"
    compose = yaml.safe_load((out / "docker-compose.yml").read_text())
    assert {svc["labels"]["flownb.flow"] for svc in compose["services"].values() if "labels" in svc} == {"hooks-copy"}
