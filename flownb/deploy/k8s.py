"""Kubernetes manifests: the spec in a ConfigMap, a Deployment per step, Secret references for every
``*_env`` secret, a Service (+ optional Ingress) for a webhook trigger, a PersistentVolumeClaim per
folder of local files (mounted in the steps that use it), RabbitMQ unless a broker URL is given (one
node, a three-node cluster formed by peer discovery, or a ``RabbitmqCluster`` for the cluster
operator), and optionally a KEDA ScaledObject per action step (queue length)."""

from __future__ import annotations

from pathlib import Path

import yaml

from ..errors import DeployError
from ..flow import Flow
from ..runtime.amqp import names
from .image import UID
from .plan import (
    BROKER_ENV,
    METRICS_PORT,
    RABBITMQ_IMAGE,
    RECORDER_DIR,
    DataVolume,
    StepPlan,
    data_volumes,
    image_name,
    secret_envs,
    secrets_name,
    step_plans,
    url_has_password,
)

__all__ = ["KEDA_QUEUE_LENGTH", "RABBITMQ_MODES", "TERMINATION_GRACE_SECONDS", "rabbitmq_mode", "render_manifests",
           "write_manifests"]

TERMINATION_GRACE_SECONDS = 60
KEDA_QUEUE_LENGTH = 100
BROKER_SECRET_KEY = BROKER_ENV
#: the broker an export writes without --broker-url: one node; three nodes that find each other
#: through the Kubernetes API (rabbit_peer_discovery_k8s); a RabbitmqCluster for the cluster operator
RABBITMQ_MODES = ("single", "cluster", "operator")
CLUSTER_NODES = 3
#: the key of the Erlang cookie the cluster's nodes share, in the flow's Secret (secrets.env)
ERLANG_COOKIE_KEY = "RABBITMQ_ERLANG_COOKIE"
#: the uid of the rabbitmq user of the official image
RABBITMQ_UID = 999
FILES_STORAGE = "1Gi"
#: cluster mode: the broker's Service URL (one URL) beside the list of nodes in FLOWNB_BROKER_URL
SERVICE_URL_ENV = "FLOWNB_RABBITMQ_SERVICE_URL"


def check_rabbitmq_mode(mode: str | None, broker_url: str | None) -> None:
    if mode is None:
        return
    if mode not in RABBITMQ_MODES:
        from ..errors import did_you_mean
        raise DeployError(f"unknown RabbitMQ mode '{mode}'{did_you_mean(mode, RABBITMQ_MODES)} modes: "
                          f"{', '.join(RABBITMQ_MODES)}")
    if broker_url is not None:
        raise DeployError(f"--rabbitmq {mode} chooses the broker the export writes, and with --broker-url it "
                          f"writes none: pass one of them")


def rabbitmq_mode(flow: Flow, mode: str | None, broker_url: str | None) -> str | None:
    """The broker the manifests hold: None with an external ``broker_url``; else ``mode``, by default
    ``cluster`` for ``topology: quorum`` (replicated queues: they need nodes to replicate to; what
    ``flownb export`` writes into a spec that leaves it unset) and ``single`` otherwise (classic
    queues live on one node anyway)."""
    check_rabbitmq_mode(mode, broker_url)
    if broker_url is not None:
        return None
    return mode or ("cluster" if flow.topology == "quorum" else "single")


def _dns(name: str) -> str:
    """A DNS-1035 label (<= 63 chars): long names are cut and given a short hash to stay unique."""
    if len(name) <= 63:
        return name
    import hashlib
    return name[:54].rstrip("-") + "-" + hashlib.sha1(name.encode()).hexdigest()[:8]


def _meta(flow: Flow, name: str, step: str | None = None) -> dict:
    labels = {"app.kubernetes.io/name": "flownb", "app.kubernetes.io/instance": flow.name,
              "flownb.flow": flow.name}
    if step:
        labels["flownb.step"] = step
    return {"name": _dns(name), "labels": labels}


def _configmap(flow: Flow) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(flow, f"flownb-{flow.name}-spec"),
            "data": {"flow.yaml": flow.to_yaml()}}


def _rabbitmq_name(flow: Flow) -> str:
    return _dns(f"flownb-{flow.name}-rabbitmq")


def _nodes_service(flow: Flow) -> str:
    """The headless Service that gives each cluster node its DNS name (and forms the cluster)."""
    return _dns(f"flownb-{flow.name}-rabbitmq-nodes")


def _env(flow: Flow, p: StepPlan, broker_url: str | None, mode: str | None = "single") -> list[dict]:
    """The broker URL and the secrets of step ``p`` only (least privilege)."""
    secret = secrets_name(flow)
    env: list[dict] = []
    if broker_url is None and mode == "cluster":
        # every node, by its stable name: a worker whose node goes down connects to the next one
        sts, nodes = _rabbitmq_name(flow), _nodes_service(flow)
        env.append({"name": BROKER_ENV, "value": ",".join(
            f"amqp://guest:guest@{sts}-{i}.{nodes}:5672/" for i in range(CLUSTER_NODES))})
        # one URL, through the Service, for whoever takes a single one (KEDA's queue-length scaler)
        env.append({"name": SERVICE_URL_ENV, "value": f"amqp://guest:guest@{sts}:5672/"})
    elif broker_url is None and mode == "operator":
        # the operator keeps the default user in <cluster>-default-user; its Service balances the nodes
        user = f"{_rabbitmq_name(flow)}-default-user"
        env += [{"name": "RABBITMQ_USERNAME", "valueFrom": {"secretKeyRef": {"name": user, "key": "username"}}},
                {"name": "RABBITMQ_PASSWORD", "valueFrom": {"secretKeyRef": {"name": user, "key": "password"}}},
                {"name": BROKER_ENV,
                 "value": f"amqp://$(RABBITMQ_USERNAME):$(RABBITMQ_PASSWORD)@{_rabbitmq_name(flow)}:5672/"}]
    elif broker_url is None:
        env.append({"name": BROKER_ENV, "value": f"amqp://guest:guest@{_rabbitmq_name(flow)}:5672/"})
    elif url_has_password(broker_url):
        env.append({"name": BROKER_ENV, "valueFrom": {"secretKeyRef": {"name": secret, "key": BROKER_SECRET_KEY}}})
    else:
        env.append({"name": BROKER_ENV, "value": broker_url})
    for name in p.secrets:
        env.append({"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": name}}})
    return env


def _deployment(flow: Flow, p: StepPlan, image: str, broker_url: str | None, mode: str | None = "single",
                files: tuple[tuple[DataVolume, bool], ...] = ()) -> dict:
    """``files``: (volume, shared) of the folders of local files this step uses (its claims)."""
    name = f"flownb-{flow.name}-{p.name}"
    ports = [{"name": "metrics", "containerPort": METRICS_PORT}]
    if p.port is not None:
        ports.append({"name": "webhook", "containerPort": p.port})
    # /livez turns 503 when a thread of the worker died (the process also exits: either restarts it);
    # /readyz is 503 while the worker is not consuming (broker unreachable) or its setup() fails
    live = {"httpGet": {"path": "/livez", "port": "metrics"}, "periodSeconds": 10, "failureThreshold": 3}
    ready = {"httpGet": {"path": "/readyz", "port": "metrics"}, "periodSeconds": 5, "failureThreshold": 2}
    container: dict = {
        "name": "worker", "image": image, "imagePullPolicy": "IfNotPresent",
        "command": p.command(metrics=True), "env": _env(flow, p, broker_url, mode), "ports": ports,
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
        "readinessProbe": {**ready, "initialDelaySeconds": 2},
        "livenessProbe": {**live, "initialDelaySeconds": 15},
        "volumeMounts": [{"name": "spec", "mountPath": "/app/flow.yaml", "subPath": "flow.yaml",
                          "readOnly": True}],
        "securityContext": {"allowPrivilegeEscalation": False, "runAsNonRoot": True, "runAsUser": 10001,
                            "capabilities": {"drop": ["ALL"]}},
    }
    meta = _meta(flow, name, p.name)
    dep: dict = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
        "spec": {
            "replicas": p.replicas,
            # a polling trigger must never run twice at once: replace, never overlap
            "strategy": {"type": "Recreate"} if p.kind == "poll" else {"type": "RollingUpdate"},
            "selector": {"matchLabels": {"flownb.flow": flow.name, "flownb.step": p.name}},
            "template": {
                # a changed spec changes the pod template, so Kubernetes rolls the workers (the spec
                # itself is in a ConfigMap, which a Deployment does not watch)
                "metadata": {"labels": meta["labels"], "annotations": {"flownb.io/spec-hash": flow.spec_hash()}},
                "spec": {
                    # SIGTERM drains in-flight messages; give the worker time before SIGKILL
                    "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
                    "containers": [container],
                    "volumes": [{"name": "spec", "configMap": {"name": _dns(f"flownb-{flow.name}-spec")}}],
                },
            },
        },
    }
    if files:
        pod = dep["spec"]["template"]["spec"]
        pod["securityContext"] = {"fsGroup": UID}  # the claims writable by the image's user
        for v, _shared in files:
            pod["volumes"].append({"name": _dns(v.name), "persistentVolumeClaim": {"claimName": _claim(flow, v)}})
            container["volumeMounts"].append({"name": _dns(v.name), "mountPath": v.path})
        if any(not shared for _v, shared in files):
            # a ReadWriteOnce claim attaches to one node: a rolling update's new pod, elsewhere, would
            # wait for the old one, which waits for the new one to be ready; replace instead
            dep["spec"]["strategy"] = {"type": "Recreate"}
    return dep


def shared_claims(flow: Flow, *, keda: bool = False) -> list[tuple[DataVolume, bool]]:
    """(volume, shared) per folder of local files: shared when several pods mount it at once —
    several steps, a step's replicas, or a step KEDA scales (ReadWriteMany)."""
    scaled = {p.name for p in step_plans(flow) if keda and p.kind == "action"}
    return [(v, v.shared or bool(scaled & set(v.services))) for v in data_volumes(flow)]


def _claim(flow: Flow, v: DataVolume) -> str:
    return _dns(f"flownb-{flow.name}-{v.name}")


def _files_claims(flow: Flow, files: list[tuple[DataVolume, bool]]) -> list[dict]:
    """A PersistentVolumeClaim per folder of local files: ReadWriteOnce when one pod mounts it,
    ReadWriteMany when several do (steps, replicas, or a KEDA-scaled step): only a storage class
    that offers it (NFS, CephFS, a cloud file share) binds such a claim."""
    out = []
    for v, shared in files:
        meta = _meta(flow, _claim(flow, v))
        meta["annotations"] = {"flownb.io/mount-path": v.path,
                               "flownb.io/used-by": ", ".join(f"{s}.{f}: {p}" for s, f, p in v.uses)}
        out.append({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta,
                    "spec": {"accessModes": ["ReadWriteMany" if shared else "ReadWriteOnce"],
                             "resources": {"requests": {"storage": FILES_STORAGE}}}})
    return out


def _webhook_service(flow: Flow, p: StepPlan) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": _meta(flow, f"flownb-{flow.name}-{p.name}", p.name),
            "spec": {"selector": {"flownb.flow": flow.name, "flownb.step": p.name},
                     "ports": [{"name": "webhook", "port": 80, "targetPort": "webhook"}]}}


def _ingress(flow: Flow, p: StepPlan, host: str) -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": _meta(flow, f"flownb-{flow.name}-{p.name}", p.name),
            "spec": {"rules": [{"host": host, "http": {"paths": [{
                "path": f"/hooks/{flow.name}", "pathType": "Prefix",
                "backend": {"service": {"name": _dns(f"flownb-{flow.name}-{p.name}"),
                                        "port": {"name": "webhook"}}}}]}}]}}


def _rabbitmq(flow: Flow) -> list[dict]:
    name = f"flownb-{flow.name}-rabbitmq"
    meta = _meta(flow, name, "rabbitmq")
    sel = {"flownb.flow": flow.name, "flownb.step": "rabbitmq"}
    probe = {"exec": {"command": ["rabbitmq-diagnostics", "-q", "ping"]}, "periodSeconds": 15,
             "timeoutSeconds": 10}
    sts = {
        "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": meta,
        "spec": {
            "serviceName": meta["name"], "replicas": 1, "selector": {"matchLabels": sel},
            "template": {"metadata": {"labels": meta["labels"]}, "spec": {
                "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
                "containers": [{
                    "name": "rabbitmq", "image": RABBITMQ_IMAGE,
                    "ports": [{"name": "amqp", "containerPort": 5672},
                              {"name": "management", "containerPort": 15672}],
                    "readinessProbe": {**probe, "initialDelaySeconds": 10},
                    "livenessProbe": {**probe, "initialDelaySeconds": 60},
                    "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
                    "volumeMounts": [{"name": "data", "mountPath": "/var/lib/rabbitmq"}],
                }]}},
            "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {
                "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}],
        },
    }
    return [sts, _client_service(flow)]


def _client_service(flow: Flow) -> dict:
    """The Service workers (and people) reach the broker through: any ready node."""
    return {"apiVersion": "v1", "kind": "Service", "metadata": _meta(flow, f"flownb-{flow.name}-rabbitmq", "rabbitmq"),
            "spec": {"selector": {"flownb.flow": flow.name, "flownb.step": "rabbitmq"},
                     "ports": [{"name": "amqp", "port": 5672, "targetPort": "amqp"},
                               {"name": "management", "port": 15672, "targetPort": "management"}]}}


#: rabbitmq.conf of the cluster: nodes find each other through the Kubernetes API (the endpoints of
#: the headless Service); a node cut off from the majority pauses rather than diverging (quorum queues
#: keep a majority anyway); a node gone for good stays a member until removed by hand (no data lost
#: to a long outage)
CLUSTER_CONF = """cluster_formation.peer_discovery_backend = rabbit_peer_discovery_k8s
cluster_formation.k8s.host = kubernetes.default.svc.cluster.local
cluster_formation.k8s.address_type = hostname
cluster_formation.k8s.service_name = {nodes}
cluster_formation.node_cleanup.only_log_warning = true
cluster_partition_handling = pause_minority
queue_leader_locator = balanced
loopback_users.guest = false
"""


def _rabbitmq_cluster(flow: Flow) -> list[dict]:
    """Three RabbitMQ nodes that form one cluster by themselves (rabbit_peer_discovery_k8s): a
    StatefulSet started in parallel, a headless Service naming each node, the RBAC the discovery
    needs (get the Service's endpoints), the config in a ConfigMap and the Erlang cookie the nodes
    share from the flow's Secret (key RABBITMQ_ERLANG_COOKIE, in secrets.env: never in a file here)."""
    name, nodes = _rabbitmq_name(flow), _nodes_service(flow)
    meta = _meta(flow, name, "rabbitmq")
    sel = {"flownb.flow": flow.name, "flownb.step": "rabbitmq"}
    config = _dns(f"flownb-{flow.name}-rabbitmq-config")
    account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(flow, name, "rabbitmq")}
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": _meta(flow, name, "rabbitmq"),
            "rules": [{"apiGroups": [""], "resources": ["endpoints"], "verbs": ["get"]},
                      {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]}]}
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": _meta(flow, name, "rabbitmq"),
               "subjects": [{"kind": "ServiceAccount", "name": name}],
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name}}
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(flow, config, "rabbitmq"),
          "data": {"rabbitmq.conf": CLUSTER_CONF.format(nodes=nodes),
                   "enabled_plugins": "[rabbitmq_management,rabbitmq_peer_discovery_k8s,rabbitmq_prometheus].\n"}}
    headless = {"apiVersion": "v1", "kind": "Service", "metadata": _meta(flow, nodes, "rabbitmq"),
                "spec": {"clusterIP": "None", "publishNotReadyAddresses": True, "selector": sel,
                         "ports": [{"name": "epmd", "port": 4369, "targetPort": 4369},
                                   {"name": "cluster-rpc", "port": 25672, "targetPort": 25672},
                                   {"name": "amqp", "port": 5672, "targetPort": 5672}]}}
    probe = {"exec": {"command": ["rabbitmq-diagnostics", "-q", "ping"]}, "periodSeconds": 15,
             "timeoutSeconds": 10}
    field = {"MY_POD_NAME": "metadata.name", "MY_POD_NAMESPACE": "metadata.namespace"}
    env = [{"name": k, "valueFrom": {"fieldRef": {"fieldPath": v}}} for k, v in field.items()]
    env += [{"name": "K8S_SERVICE_NAME", "value": nodes},
            {"name": "RABBITMQ_USE_LONGNAME", "value": "true"},
            # the node's name is its stable DNS name: its data directory follows it across restarts
            {"name": "RABBITMQ_NODENAME",
             "value": "rabbit@$(MY_POD_NAME).$(K8S_SERVICE_NAME).$(MY_POD_NAMESPACE).svc.cluster.local"},
            {"name": "K8S_HOSTNAME_SUFFIX", "value": ".$(K8S_SERVICE_NAME).$(MY_POD_NAMESPACE).svc.cluster.local"}]
    cookie = "/var/lib/rabbitmq/.erlang.cookie"
    sts = {
        "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": meta,
        "spec": {
            "serviceName": nodes, "replicas": CLUSTER_NODES, "selector": {"matchLabels": sel},
            # every node starts at once: peer discovery waits for the others (one by one, the first
            # node would wait for the second to be ready before it is created)
            "podManagementPolicy": "Parallel",
            "template": {"metadata": {"labels": meta["labels"]}, "spec": {
                "serviceAccountName": name,
                "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
                "securityContext": {"fsGroup": RABBITMQ_UID, "runAsUser": RABBITMQ_UID, "runAsGroup": RABBITMQ_UID},
                # the nodes spread over the cluster's machines where they can
                "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
                    "weight": 100, "podAffinityTerm": {"labelSelector": {"matchLabels": sel},
                                                       "topologyKey": "kubernetes.io/hostname"}}]}},
                "initContainers": [{
                    # Erlang reads the cookie from a file only its owner may read
                    "name": "erlang-cookie", "image": RABBITMQ_IMAGE,
                    "command": ["sh", "-c", f"cp /tmp/cookie/{ERLANG_COOKIE_KEY} {cookie} && chmod 600 {cookie}"],
                    "volumeMounts": [{"name": "data", "mountPath": "/var/lib/rabbitmq"},
                                     {"name": "erlang-cookie", "mountPath": "/tmp/cookie", "readOnly": True}],
                }],
                "containers": [{
                    "name": "rabbitmq", "image": RABBITMQ_IMAGE, "env": env,
                    "ports": [{"name": "amqp", "containerPort": 5672},
                              {"name": "management", "containerPort": 15672},
                              {"name": "epmd", "containerPort": 4369},
                              {"name": "cluster-rpc", "containerPort": 25672}],
                    "readinessProbe": {**probe, "initialDelaySeconds": 10},
                    "livenessProbe": {**probe, "initialDelaySeconds": 60},
                    "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
                    "volumeMounts": [
                        {"name": "data", "mountPath": "/var/lib/rabbitmq"},
                        {"name": "config", "mountPath": "/etc/rabbitmq/conf.d/90-flownb.conf",
                         "subPath": "rabbitmq.conf", "readOnly": True},
                        {"name": "config", "mountPath": "/etc/rabbitmq/enabled_plugins",
                         "subPath": "enabled_plugins", "readOnly": True}],
                }],
                "volumes": [
                    {"name": "config", "configMap": {"name": config}},
                    {"name": "erlang-cookie", "secret": {
                        "secretName": secrets_name(flow), "defaultMode": 0o400,
                        "items": [{"key": ERLANG_COOKIE_KEY, "path": ERLANG_COOKIE_KEY}]}}],
            }},
            "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {
                "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}],
        },
    }
    pdb = {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": _meta(flow, name, "rabbitmq"),
           "spec": {"maxUnavailable": 1, "selector": {"matchLabels": sel}}}  # a drain keeps the majority
    return [account, role, binding, cm, headless, _client_service(flow), sts, pdb]


def _rabbitmq_operator(flow: Flow) -> list[dict]:
    """A ``RabbitmqCluster`` of the RabbitMQ cluster operator (installed separately): three nodes;
    the operator writes the StatefulSet, the Services, the Erlang cookie and the default user's
    Secret (``<name>-default-user``), which the workers read their credentials from."""
    return [{
        "apiVersion": "rabbitmq.com/v1beta1", "kind": "RabbitmqCluster",
        "metadata": _meta(flow, _rabbitmq_name(flow), "rabbitmq"),
        "spec": {
            "replicas": CLUSTER_NODES, "image": RABBITMQ_IMAGE,
            "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
            "persistence": {"storage": "1Gi"},
            "rabbitmq": {"additionalConfig": "cluster_partition_handling = pause_minority\n"
                                             "queue_leader_locator = balanced\n"},
        },
    }]


def _monitoring(flow: Flow) -> list[dict]:
    """For the Prometheus operator: a PodMonitor scraping every worker's ``/metrics`` and a
    PrometheusRule alerting when dead letters grow and when a worker stays unready (its setup()
    fails, it cannot reach the broker, a thread died)."""
    sel = {"matchLabels": {"flownb.flow": flow.name}}
    f = flow.name
    pod_monitor = {"apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor",
                   "metadata": _meta(flow, f"flownb-{f}"),
                   "spec": {"selector": sel, "podMetricsEndpoints": [{"port": "metrics", "interval": "30s"}]}}
    rules = [
        {"alert": "FlownbDeadLettersGrowing",
         "expr": f'sum by (flow, step) (increase(flownb_messages_dead_lettered_total{{flow="{f}"}}[10m])) > 0',
         "labels": {"severity": "warning"},
         "annotations": {"summary": f"flow '{f}': step {{{{ $labels.step }}}} dead-lettered "
                                    f"{{{{ $value | humanize }}}} message(s) in 10 minutes",
                         "description": "list them with 'flownb dlq list' (or flownb.dead_letters in a "
                                        "notebook), fix the cause, then replay them"}},
        {"alert": "FlownbWorkerUnready",
         "expr": f'sum by (pod) (kube_pod_status_ready{{condition="false", pod=~"flownb-{f}-.*"}}) > 0',
         "for": "5m", "labels": {"severity": "critical"},
         "annotations": {"summary": f"flow '{f}': worker {{{{ $labels.pod }}}} has not been ready for 5 minutes",
                         "description": "its /readyz says why: a step whose setup() fails, the broker "
                                        "unreachable, or a thread that died"}},
    ]
    rule = {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
            "metadata": _meta(flow, f"flownb-{f}"),
            "spec": {"groups": [{"name": f"flownb-{f}", "rules": rules}]}}
    return [pod_monitor, rule]


def _scaled_object(flow: Flow, p: StepPlan, mode: str | None) -> dict:
    return {
        "apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
        "metadata": _meta(flow, f"flownb-{flow.name}-{p.name}", p.name),
        "spec": {
            "scaleTargetRef": {"name": _dns(f"flownb-{flow.name}-{p.name}")},
            "minReplicaCount": p.replicas, "maxReplicaCount": max(p.replicas * 5, 5),
            "triggers": [{"type": "rabbitmq", "metadata": {
                "queueName": names.step_queue(flow.name, p.name), "mode": "QueueLength",
                "value": str(KEDA_QUEUE_LENGTH),
                "hostFromEnv": SERVICE_URL_ENV if mode == "cluster" else BROKER_ENV}}],
        },
    }


def _recorder(flow: Flow, p: StepPlan, image: str, broker_url: str | None, mode: str | None) -> list[dict]:
    """The flight recorder's Deployment (one replica, replaced, never overlapping: its SQLite file has
    one writer) on a PersistentVolumeClaim of its own. ``flownb recorder`` serves no probes: it exits
    non-zero when it fails, and the pod restarts."""
    dep = _deployment(flow, p, image, broker_url, mode)
    claim = _dns(f"flownb-{flow.name}-recorder")
    dep["spec"]["strategy"] = {"type": "Recreate"}
    pod = dep["spec"]["template"]["spec"]
    pod["securityContext"] = {"fsGroup": UID}  # the volume writable by the image's user
    pod["volumes"].append({"name": "recorder", "persistentVolumeClaim": {"claimName": claim}})
    container = pod["containers"][0]
    container["name"] = "recorder"
    for probe in ("readinessProbe", "livenessProbe"):
        container.pop(probe)
    container.pop("ports")
    container["volumeMounts"].append({"name": "recorder", "mountPath": RECORDER_DIR})
    pvc = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": _meta(flow, claim, p.name),
           "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}
    return [pvc, dep]


def render_manifests(flow: Flow, *, broker_url: str | None = None, image: str | None = None,
                     ingress_host: str | None = None, keda: bool = False,
                     schedules: list | None = None, rabbitmq: str | None = None) -> dict[str, list[dict]]:
    """file name → the Kubernetes objects written to it. ``schedules`` (flownb.schedule.Schedule)
    become CronJobs running their notebook (copied to /app/notebooks in the image) with papermill.
    ``rabbitmq``: the broker written without ``broker_url`` (:func:`rabbitmq_mode`)."""
    img = image or image_name(flow)
    mode = rabbitmq_mode(flow, rabbitmq, broker_url)
    if keda and mode == "operator":
        raise DeployError("--keda reads the broker URL from the workers' environment, which with --rabbitmq "
                          "operator is built from the operator's Secret at run time; use --rabbitmq cluster, "
                          "or --broker-url with a URL KEDA can read")
    files: dict[str, list[dict]] = {"configmap.yaml": [_configmap(flow)]}
    if mode is not None:
        files["rabbitmq.yaml"] = {"single": _rabbitmq, "cluster": _rabbitmq_cluster,
                                  "operator": _rabbitmq_operator}[mode](flow)
    plans = step_plans(flow)
    claims = shared_claims(flow, keda=keda)
    if claims:
        files["volumes.yaml"] = _files_claims(flow, claims)
    for p in plans:
        if p.kind == "recorder":
            files[f"step-{p.name}.yaml"] = _recorder(flow, p, img, broker_url, mode)
            continue
        own = tuple(c for c in claims if p.name in c[0].services)
        objs = [_deployment(flow, p, img, broker_url, mode, own)]
        if p.port is not None:
            objs.append(_webhook_service(flow, p))
            if ingress_host:
                objs.append(_ingress(flow, p, ingress_host))
        if keda and p.kind == "action":
            objs.append(_scaled_object(flow, p, mode))
        files[f"step-{p.name}.yaml"] = objs
    files["monitoring.yaml"] = _monitoring(flow)
    if schedules:
        from ..schedule.k8s import cronjob_manifests
        files["schedules.yaml"] = cronjob_manifests(
            schedules, img, workdir="/app/notebooks", env_from_secret=_schedule_secret(flow),
            labels={"app.kubernetes.io/instance": flow.name, "flownb.flow": flow.name}, kernel="python3")
    return files


def _schedule_secret(flow: Flow) -> str | None:
    """Scheduled notebooks get the flow's Secret as environment (when the flow has secrets)."""
    return secrets_name(flow) if secret_envs(flow) else None


def write_manifests(out: Path, flow: Flow, **kw) -> list[Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for fname, objs in render_manifests(flow, **kw).items():
        path = out / fname
        path.write_text(yaml.safe_dump_all(objs, sort_keys=False, width=110), encoding="utf-8")
        written.append(path)
    return written
