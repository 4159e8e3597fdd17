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


def _quorum_flow(**kw) -> Flow:
    return Flow(name="ha", trigger=step("hook", "webhook", token_env="TOK"), steps=[step("work", "log", replicas=2)],
                topology="quorum", **kw)


def test_a_quorum_flow_gets_a_three_node_rabbitmq_cluster_formed_by_peer_discovery():
    """docs/deploy.md, "A highly available broker": three nodes in a parallel StatefulSet find each
    other through the Kubernetes API; the workers list every node."""
    files = render_manifests(_quorum_flow(), keda=True)
    objs = files["rabbitmq.yaml"]
    for o in objs:
        _check(o)
    by_kind = {o["kind"]: o for o in objs}
    assert sorted(by_kind) == ["ConfigMap", "PodDisruptionBudget", "Role", "RoleBinding", "Service",
                               "ServiceAccount", "StatefulSet"]
    sts = by_kind["StatefulSet"]
    assert sts["spec"]["replicas"] == 3 and sts["spec"]["podManagementPolicy"] == "Parallel"
    services = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Service"}
    headless = services["flownb-ha-rabbitmq-nodes"]
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"] is True
    assert sts["spec"]["serviceName"] == "flownb-ha-rabbitmq-nodes"
    assert {p["port"] for p in headless["spec"]["ports"]} == {4369, 25672, 5672}
    assert set(services) == {"flownb-ha-rabbitmq-nodes", "flownb-ha-rabbitmq"}  # + the client Service
    # peer discovery reads the headless Service's endpoints with the pods' own ServiceAccount
    pod = sts["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == by_kind["ServiceAccount"]["metadata"]["name"] == "flownb-ha-rabbitmq"
    assert {"apiGroups": [""], "resources": ["endpoints"], "verbs": ["get"]} in by_kind["Role"]["rules"]
    assert by_kind["RoleBinding"]["roleRef"]["name"] == by_kind["Role"]["metadata"]["name"]
    assert by_kind["RoleBinding"]["subjects"] == [{"kind": "ServiceAccount", "name": "flownb-ha-rabbitmq"}]
    conf = by_kind["ConfigMap"]["data"]["rabbitmq.conf"]
    assert "cluster_formation.peer_discovery_backend = rabbit_peer_discovery_k8s" in conf
    assert "cluster_formation.k8s.service_name = flownb-ha-rabbitmq-nodes" in conf
    assert "cluster_formation.k8s.address_type = hostname" in conf
    assert "rabbitmq_peer_discovery_k8s" in by_kind["ConfigMap"]["data"]["enabled_plugins"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["RABBITMQ_NODENAME"] == "rabbit@$(MY_POD_NAME).$(K8S_SERVICE_NAME).$(MY_POD_NAMESPACE).svc.cluster.local"
    assert env["RABBITMQ_USE_LONGNAME"] == "true" and env["K8S_SERVICE_NAME"] == "flownb-ha-rabbitmq-nodes"
    # the Erlang cookie the nodes share comes from the flow's Secret, never from a file written here
    cookie = next(v for v in pod["volumes"] if v["name"] == "erlang-cookie")["secret"]
    assert cookie["secretName"] == "flownb-ha-secrets" and cookie["items"][0]["key"] == "RABBITMQ_ERLANG_COOKIE"
    assert "chmod 600 /var/lib/rabbitmq/.erlang.cookie" in pod["initContainers"][0]["command"][-1]
    assert by_kind["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1
    work = files["step-work.yaml"]
    env = {e["name"]: e.get("value") for e in work[0]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["FLOWNB_BROKER_URL"].split(",") == [
        f"amqp://guest:guest@flownb-ha-rabbitmq-{i}.flownb-ha-rabbitmq-nodes:5672/" for i in range(3)]
    scaled = next(o for o in work if o["kind"] == "ScaledObject")  # KEDA takes one URL: the Service
    assert scaled["spec"]["triggers"][0]["metadata"]["hostFromEnv"] == "FLOWNB_RABBITMQ_SERVICE_URL"
    assert env["FLOWNB_RABBITMQ_SERVICE_URL"] == "amqp://guest:guest@flownb-ha-rabbitmq:5672/"


def test_the_broker_mode_can_be_chosen_and_the_operator_gets_a_rabbitmq_cluster_resource():
    single = render_manifests(_quorum_flow(), rabbitmq="single")["rabbitmq.yaml"]
    assert [o["kind"] for o in single] == ["StatefulSet", "Service"] and single[0]["spec"]["replicas"] == 1
    files = render_manifests(_quorum_flow(), rabbitmq="operator")
    (cluster,) = files["rabbitmq.yaml"]
    assert cluster["apiVersion"] == "rabbitmq.com/v1beta1" and cluster["kind"] == "RabbitmqCluster"
    assert cluster["metadata"]["name"] == "flownb-ha-rabbitmq" and cluster["spec"]["replicas"] == 3
    assert cluster["spec"]["persistence"] == {"storage": "1Gi"}
    dep = files["step-work.yaml"][0]
    _check(dep)
    env = dep["spec"]["template"]["spec"]["containers"][0]["env"]
    # the operator's Secret <cluster>-default-user holds the credentials; the URL is built from them
    assert env[:2] == [{"name": n, "valueFrom": {"secretKeyRef": {"name": "flownb-ha-rabbitmq-default-user", "key": k}}}
                       for n, k in (("RABBITMQ_USERNAME", "username"), ("RABBITMQ_PASSWORD", "password"))]
    assert env[2] == {"name": "FLOWNB_BROKER_URL",
                      "value": "amqp://$(RABBITMQ_USERNAME):$(RABBITMQ_PASSWORD)@flownb-ha-rabbitmq:5672/"}
    from flownb.errors import DeployError
    with pytest.raises(DeployError, match="--keda .* --rabbitmq cluster"):
        render_manifests(_quorum_flow(), rabbitmq="operator", keda=True)
    with pytest.raises(DeployError, match="with --broker-url it writes none"):
        render_manifests(_quorum_flow(), rabbitmq="cluster", broker_url="amqp://mq:5672/")
    with pytest.raises(DeployError, match="did you mean 'cluster'"):
        render_manifests(_quorum_flow(), rabbitmq="clustr")
    # not set: a flow without 'topology: quorum' keeps one node (its classic queues live on one)
    plain = Flow(name="ha", trigger=step("hook", "webhook", token_env="TOK"), steps=[step("work", "log")])
    assert [o["kind"] for o in render_manifests(plain)["rabbitmq.yaml"]] == ["StatefulSet", "Service"]


def test_a_step_scaled_by_keda_shares_its_claim_read_write_many():
    flow = Flow(name="kf", trigger=step("hook", "webhook", token_env="TOK"),
                steps=[step("out", "csv.write", path="/srv/out/rows.csv")])
    for keda, mode in ((False, "ReadWriteOnce"), (True, "ReadWriteMany")):
        (claim,) = render_manifests(flow, keda=keda)["volumes.yaml"]
        _check(claim)
        assert claim["spec"]["accessModes"] == [mode]
        assert claim["metadata"]["annotations"]["flownb.io/mount-path"] == "/srv/out"
