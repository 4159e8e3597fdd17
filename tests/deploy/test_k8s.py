"""Kubernetes manifests validated with kubernetes-validate (the API's OpenAPI schemas)."""

from __future__ import annotations

import kubernetes_validate
import pytest
import yaml

from flownb import Flow, step
from flownb.deploy import render_manifests
from flownb.runtime.amqp import names

from .conftest import load_yaml_all

K8S_VERSION = "1.30"


def _check(obj: dict) -> None:
    if obj["apiVersion"].startswith(("keda.sh/", "monitoring.coreos.com/")):
        return  # a CRD: checked by hand below
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_validator_rejects_a_broken_deployment():
    bad = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
           "spec": {"replicas": "three", "selector": {}, "template": {}}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_exported_manifests_validate(hooks_export):
    objs = [o for p in sorted((hooks_export / "k8s").glob("*.yaml")) for o in load_yaml_all(p)]
    kinds = sorted(o["kind"] for o in objs)
    # the broker: a three-node cluster (the export's default for its quorum queues, docs/deploy.md)
    assert kinds == ["ConfigMap", "ConfigMap", "Deployment", "Deployment", "Deployment", "PodDisruptionBudget",
                     "PodMonitor", "PrometheusRule", "Role", "RoleBinding", "Service", "Service", "Service",
                     "ServiceAccount", "StatefulSet"]
    for o in objs:
        _check(o)
    cm = next(o for o in objs if o["kind"] == "ConfigMap" and "flow.yaml" in o["data"])
    assert yaml.safe_load(cm["data"]["flow.yaml"])["name"] == "hooks"
    deps = {o["metadata"]["labels"]["flownb.step"]: o for o in objs if o["kind"] == "Deployment"}
    assert deps["show"]["spec"]["replicas"] == 3
    for d in deps.values():
        pod = d["spec"]["template"]["spec"]
        assert pod["terminationGracePeriodSeconds"] == 60  # as compose's stop_grace_period (docs/deploy.md)
        c = pod["containers"][0]
        assert c["readinessProbe"] and c["livenessProbe"] and c["resources"]["limits"]["memory"]
        assert c["securityContext"]["runAsNonRoot"] is True
        refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c["env"] if "valueFrom" in e}
        own = {"hook": ["HOOK_TOKEN_E2E"], "show": [], "store": ["DB_URL_E2E"]}[d["metadata"]["labels"]["flownb.step"]]
        assert refs == {k: {"name": "flownb-hooks-secrets", "key": k} for k in own}  # its own secrets only
        broker = next(e for e in c["env"] if e["name"] == "FLOWNB_BROKER_URL")
        assert broker["value"] == ",".join(f"amqp://guest:guest@flownb-hooks-rabbitmq-{i}.flownb-hooks-rabbitmq-nodes:5672/"
                                           for i in range(3))
    svc = next(o for o in objs if o["kind"] == "Service" and o["metadata"]["labels"]["flownb.step"] == "hook")
    assert svc["spec"]["ports"][0]["targetPort"] == "webhook"
    assert deps["hook"]["spec"]["strategy"]["type"] == "RollingUpdate"


def test_external_broker_ingress_and_keda():
    flow = Flow(name="kq", trigger=step("hook", "webhook", token_env="TOK"),
                steps=[step("work", "log", replicas=2)])
    files = render_manifests(flow, broker_url="amqp://app:pw-secret@mq:5672/", ingress_host="hooks.example.org",
                             keda=True)
    assert "rabbitmq.yaml" not in files
    objs = [o for v in files.values() for o in v]
    for o in objs:
        _check(o)
    ing = next(o for o in objs if o["kind"] == "Ingress")
    assert ing["spec"]["rules"][0]["host"] == "hooks.example.org"
    so = [o for o in objs if o["kind"] == "ScaledObject"]
    assert len(so) == 1  # action steps only, not the trigger
    spec = so[0]["spec"]
    assert spec["scaleTargetRef"]["name"] == "flownb-kq-work" and spec["minReplicaCount"] == 2
    trig = spec["triggers"][0]
    assert trig["type"] == "rabbitmq" and trig["metadata"]["queueName"] == names.step_queue("kq", "work")
    assert trig["metadata"]["hostFromEnv"] == "FLOWNB_BROKER_URL"
    assert "pw-secret" not in yaml.safe_dump_all(objs)
    work = next(o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] == "flownb-kq-work")
    env = {e["name"]: e for e in work["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["FLOWNB_BROKER_URL"]["valueFrom"]["secretKeyRef"]["key"] == "FLOWNB_BROKER_URL"


def test_long_names_stay_valid_dns_labels():
    flow = Flow(name="a" * 50, trigger=step("t" * 60, "webhook", token_env="TOK"), steps=[step("s" * 60, "log")])
    for objs in render_manifests(flow).values():
        for o in objs:
            assert len(o["metadata"]["name"]) <= 63
            _check(o)


def test_a_changed_spec_changes_every_pod_template_so_the_workers_roll():
    def hashes(flow):
        objs = [d for docs in render_manifests(flow).values() for d in (docs if isinstance(docs, list) else [docs])]
        return {o["metadata"]["name"]: o["spec"]["template"]["metadata"]["annotations"]["flownb.io/spec-hash"]
                for o in objs if o.get("kind") == "Deployment"}
    a = Flow(name="roll", trigger=step("hook", "webhook", token_env="TOK"), steps=[step("work", "log")])
    b = Flow(name="roll", trigger=step("hook", "webhook", token_env="TOK"), steps=[step("work", "log", prefix="> ")])
    ha, hb = hashes(a), hashes(b)
    assert set(ha) == set(hb) == {"flownb-roll-hook", "flownb-roll-work"}
    assert len(set(ha.values())) == 1 and ha != hb and set(ha.values()) == {a.spec_hash()}
    assert hashes(Flow.model_validate(a.model_dump())) == ha  # the same flow: the same hash


def test_a_polling_trigger_is_recreated_never_rolled():
    """docs/deploy.md: `Recreate` for a polling trigger, so two pollers never overlap during an update;
    it runs one replica. Action steps roll."""
    flow = Flow(name="pq", trigger=step("src", "schedule", cron="*/5 * * * *"),
                steps=[step("work", "log", replicas=2)])
    objs = [o for v in render_manifests(flow).values() for o in v]
    for o in objs:
        _check(o)
    deps = {o["metadata"]["labels"]["flownb.step"]: o for o in objs if o["kind"] == "Deployment"}
    assert sorted(deps) == ["src", "work"]
    assert deps["src"]["spec"]["strategy"] == {"type": "Recreate"}
    assert deps["src"]["spec"]["replicas"] == 1
    assert deps["work"]["spec"]["strategy"]["type"] == "RollingUpdate"
    assert deps["work"]["spec"]["replicas"] == 2


def test_monitoring_scrapes_the_workers_and_alerts_on_dead_letters_and_unready_workers():
    flow = Flow(name="mon", trigger=step("hook", "webhook", token_env="TOK"), steps=[step("work", "log")])
    pod_monitor, rule = render_manifests(flow)["monitoring.yaml"]
    assert pod_monitor["kind"] == "PodMonitor" and pod_monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert pod_monitor["spec"]["selector"] == {"matchLabels": {"flownb.flow": "mon"}}
    assert pod_monitor["spec"]["podMetricsEndpoints"] == [{"port": "metrics", "interval": "30s"}]
    deployment = render_manifests(flow)["step-work.yaml"][0]
    ports = deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
    assert {"name": "metrics", "containerPort": 9100} in ports  # the port the PodMonitor names
    assert deployment["metadata"]["labels"]["flownb.flow"] == "mon"
    (group,) = rule["spec"]["groups"]
    alerts = {r["alert"]: r for r in group["rules"]}
    dead = alerts["FlownbDeadLettersGrowing"]
    # the counter the workers export (flownb/runtime/amqp/metrics.py), with its _total suffix
    assert 'increase(flownb_messages_dead_lettered_total{flow="mon"}[10m])' in dead["expr"]
    unready = alerts["FlownbWorkerUnready"]
    assert 'pod=~"flownb-mon-.*"' in unready["expr"] and unready["for"] == "5m"
    assert unready["labels"]["severity"] == "critical"


def test_an_on_error_flow_gets_one_on_error_worker_with_only_its_secrets():
    flow = Flow(name="oe", trigger=step("hook", "webhook", token_env="TOK"), steps=[step("work", "log")],
                on_error=[step("alert", "http.request", url="https://chat.example.org/hook", token_env="CHAT_TOKEN")])
    files = render_manifests(flow, keda=True)
    dep = files["step-on-error.yaml"][0]
    _check(dep)
    assert dep["spec"]["replicas"] == 1 and len(files["step-on-error.yaml"]) == 1  # no KEDA: one consumer
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["command"][:5] == ["flownb", "worker", "/app/flow.yaml", "--step", "on_error"]
    secrets = {e["name"] for e in c["env"] if "valueFrom" in e}
    assert secrets == {"CHAT_TOKEN"}
    work = files["step-work.yaml"][0]["spec"]["template"]["spec"]["containers"][0]
    assert "CHAT_TOKEN" not in {e["name"] for e in work["env"]}


def test_a_recording_flow_gets_a_recorder_on_a_volume_claim_of_its_own():
    flow = Flow(name="rec", trigger=step("hook", "webhook", token_env="TOK"), steps=[step("work", "log")],
                record={"sample": 1.0})
    files = render_manifests(flow, keda=True)
    pvc, dep = files["step-recorder.yaml"]  # no KEDA, no Service: one writer of one SQLite file
    _check(pvc)
    _check(dep)
    assert pvc["kind"] == "PersistentVolumeClaim" and dep["spec"]["strategy"] == {"type": "Recreate"}
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["command"] == ["flownb", "recorder", "/app/flow.yaml", "--db", "/data/recorder.db"]
    assert {"name": "recorder", "mountPath": "/data"} in c["volumeMounts"]
    assert {"name": "recorder", "persistentVolumeClaim": {"claimName": pvc["metadata"]["name"]}} in pod["volumes"]
    assert pod["securityContext"] == {"fsGroup": 10001} and dep["spec"]["replicas"] == 1
    assert "readinessProbe" not in c and {e["name"] for e in c["env"]} == {"FLOWNB_BROKER_URL"}
