"""Kubernetes manifests: the spec in a ConfigMap, a Deployment per step, Secret references for every
``*_env`` secret, a Service (+ optional Ingress) for a webhook trigger, a RabbitMQ StatefulSet unless a
broker URL is given, and optionally a KEDA ScaledObject per action step (queue length)."""

from __future__ import annotations

from pathlib import Path

import yaml

from ..flow import Flow
from ..runtime.amqp import names
from .image import UID
from .plan import (
    BROKER_ENV,
    METRICS_PORT,
    RABBITMQ_IMAGE,
    RECORDER_DIR,
    StepPlan,
    image_name,
    secret_envs,
    secrets_name,
    step_plans,
    url_has_password,
)

__all__ = ["KEDA_QUEUE_LENGTH", "TERMINATION_GRACE_SECONDS", "render_manifests", "write_manifests"]

TERMINATION_GRACE_SECONDS = 60
KEDA_QUEUE_LENGTH = 100
BROKER_SECRET_KEY = BROKER_ENV


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


def _env(flow: Flow, p: StepPlan, broker_url: str | None) -> list[dict]:
    """The broker URL and the secrets of step ``p`` only (least privilege)."""
    secret = secrets_name(flow)
    env: list[dict] = []
    if broker_url is None:
        env.append({"name": BROKER_ENV, "value": f"amqp://guest:guest@{_dns(f'flownb-{flow.name}-rabbitmq')}:5672/"})
    elif url_has_password(broker_url):
        env.append({"name": BROKER_ENV, "valueFrom": {"secretKeyRef": {"name": secret, "key": BROKER_SECRET_KEY}}})
    else:
        env.append({"name": BROKER_ENV, "value": broker_url})
    for name in p.secrets:
        env.append({"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": name}}})
    return env


def _deployment(flow: Flow, p: StepPlan, image: str, broker_url: str | None) -> dict:
    name = f"flownb-{flow.name}-{p.name}"
    ports = [{"name": "metrics", "containerPort": METRICS_PORT}]
    if p.port is not None:
        ports.append({"name": "webhook", "containerPort": p.port})
    # /livez turns 503 when a thread of the worker died (the process also exits: either restarts it);
    # /readyz is 503 while the worker is not consuming (broker unreachable) or its setup() fails
    live = {"httpGet": {"path": "/livez", "port": "metrics"}, "periodSeconds": 10, "failureThreshold": 3}
    ready = {"httpGet": {"path": "/readyz", "port": "metrics"}, "periodSeconds": 5, "failureThreshold": 2}
    container = {
        "name": "worker", "image": image, "imagePullPolicy": "IfNotPresent",
        "command": p.command(metrics=True), "env": _env(flow, p, broker_url), "ports": ports,
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
        "readinessProbe": {**ready, "initialDelaySeconds": 2},
        "livenessProbe": {**live, "initialDelaySeconds": 15},
        "volumeMounts": [{"name": "spec", "mountPath": "/app/flow.yaml", "subPath": "flow.yaml",
                          "readOnly": True}],
        "securityContext": {"allowPrivilegeEscalation": False, "runAsNonRoot": True, "runAsUser": 10001,
                            "capabilities": {"drop": ["ALL"]}},
    }
    meta = _meta(flow, name, p.name)
    return {
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
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": meta,
           "spec": {"selector": sel, "ports": [{"name": "amqp", "port": 5672, "targetPort": "amqp"},
                                               {"name": "management", "port": 15672,
                                                "targetPort": "management"}]}}
    return [sts, svc]


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


def _scaled_object(flow: Flow, p: StepPlan) -> dict:
    return {
        "apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
        "metadata": _meta(flow, f"flownb-{flow.name}-{p.name}", p.name),
        "spec": {
            "scaleTargetRef": {"name": _dns(f"flownb-{flow.name}-{p.name}")},
            "minReplicaCount": p.replicas, "maxReplicaCount": max(p.replicas * 5, 5),
            "triggers": [{"type": "rabbitmq", "metadata": {
                "queueName": names.step_queue(flow.name, p.name), "mode": "QueueLength",
                "value": str(KEDA_QUEUE_LENGTH), "hostFromEnv": BROKER_ENV}}],
        },
    }


def _recorder(flow: Flow, p: StepPlan, image: str, broker_url: str | None) -> list[dict]:
    """The flight recorder's Deployment (one replica, replaced, never overlapping: its SQLite file has
    one writer) on a PersistentVolumeClaim of its own. ``flownb recorder`` serves no probes: it exits
    non-zero when it fails, and the pod restarts."""
    dep = _deployment(flow, p, image, broker_url)
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
                     schedules: list | None = None) -> dict[str, list[dict]]:
    """file name → the Kubernetes objects written to it. ``schedules`` (flownb.schedule.Schedule)
    become CronJobs running their notebook (copied to /app/notebooks in the image) with papermill."""
    img = image or image_name(flow)
    files: dict[str, list[dict]] = {"configmap.yaml": [_configmap(flow)]}
    if broker_url is None:
        files["rabbitmq.yaml"] = _rabbitmq(flow)
    for p in step_plans(flow):
        if p.kind == "recorder":
            files[f"step-{p.name}.yaml"] = _recorder(flow, p, img, broker_url)
            continue
        objs = [_deployment(flow, p, img, broker_url)]
        if p.port is not None:
            objs.append(_webhook_service(flow, p))
            if ingress_host:
                objs.append(_ingress(flow, p, ingress_host))
        if keda and p.kind == "action":
            objs.append(_scaled_object(flow, p))
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
