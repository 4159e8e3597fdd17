"""What compose, Kubernetes, the image and the Docker deploy share: names, secrets, worker commands."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from ..errors import DeployError
from ..flow import Flow, Step
from ..runtime.amqp.names import (
    BROKER_ENV,  # noqa: F401  (re-exported: every target names it)
    ON_ERROR_WORKER,
)
from ..secrets import required_env, step_env, walk_config

DEFAULT_WEBHOOK_PORT = 8080
METRICS_PORT = 9100
INTERNAL_BROKER_URL = "amqp://guest:guest@rabbitmq:5672/"
RABBITMQ_IMAGE = "rabbitmq:3-management"
#: the service / Deployment of the flow's on_error worker (``flownb worker --step on_error``)
ON_ERROR_SERVICE = "on-error"
#: the service / Deployment that drains the flight recorder's tap (``flownb recorder``) into a SQLite
#: file on a volume, for a flow that records (``record:`` with a sample above 0)
RECORDER_SERVICE = "recorder"
#: where the recorder's SQLite file lives in its container (a volume)
RECORDER_DIR = "/data"
RECORDER_DB = f"{RECORDER_DIR}/recorder.db"
#: config keys whose literal value would be a secret: name an environment variable instead
_SECRET_KEYS = re.compile(r"^(password|passwd|secret|token|api_?key|access_?key|authorization|"
                          r"client_secret|private_key)$", re.IGNORECASE)


def image_name(flow: Flow) -> str:
    return f"flownb-{flow.name}:latest"


def secrets_name(flow: Flow) -> str:
    """Name of the Kubernetes Secret (and stem of the compose env file) holding the flow's secrets."""
    return f"flownb-{flow.name}-secrets"


def secret_envs(flow: Flow) -> list[str]:
    """Environment-variable names given by any ``*_env`` config field, in step order, no repeats."""
    return list(dict.fromkeys(v.name for v in required_env(flow)))


def check_no_literal_secrets(flow: Flow) -> None:
    """A config key such as ``password``/``token`` holding a literal string is refused."""
    for s in [*flow.all_steps, *flow.error_steps]:
        for where, key, value in walk_config(s.config):
            if _SECRET_KEYS.match(key) and isinstance(value, str) and value and "{{" not in value:
                raise DeployError(
                    f"step '{s.name}': config field '{where}' holds a literal secret; secrets never go "
                    f"into a spec or an exported file: set '{key}_env: SOME_ENV_VAR' instead and provide "
                    f"the variable through the env file (compose) or the Secret (Kubernetes)")


def url_has_password(url: str) -> bool:
    return bool(urlsplit(url).password)


def without_password(url: str) -> str:
    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


@dataclass(frozen=True)
class StepPlan:
    """How one step runs in a container."""

    step: Step
    is_trigger: bool
    kind: str  # "action" | "poll" | "webhook" | "on_error" | "recorder"
    #: the steps this service runs: the step itself, its ``fuse`` group (first step first), whose
    #: worker (``flownb worker --step <first>``) runs them all as one stage, or (kind "on_error") the
    #: flow's on_error actions, run by the on_error worker
    members: tuple[Step, ...] = ()

    @property
    def steps(self) -> tuple[Step, ...]:
        return self.members or (self.step,)

    @property
    def name(self) -> str:
        return self.step.name

    @property
    def replicas(self) -> int:
        # a polling trigger must not poll twice, the recorder's SQLite file has one writer: one replica
        return 1 if self.kind in ("poll", "on_error", "recorder") else self.step.replicas

    @property
    def secrets(self) -> list[str]:
        """The environment variables this step reads (its ``*_env`` fields): all its container
        gets of the flow's secrets (``flownb worker --step`` checks only these)."""
        return list(dict.fromkeys(v.name for s in self.steps for v in step_env(s)))

    @property
    def port(self) -> int | None:
        if self.kind != "webhook":
            return None
        return int(self.step.config.get("port") or DEFAULT_WEBHOOK_PORT)

    def command(self, spec_path: str = "/app/flow.yaml", *, metrics: bool = False) -> list[str]:
        if self.kind == "recorder":
            return ["flownb", "recorder", spec_path, "--db", RECORDER_DB]
        cmd = ["flownb", "worker", spec_path, "--step", ON_ERROR_WORKER if self.kind == "on_error" else self.name]
        if self.port is not None:
            cmd += ["--port", str(self.port), "--host", "0.0.0.0"]
        if metrics:
            cmd += ["--metrics-port", str(METRICS_PORT)]
        return cmd


def component_kind(component: str) -> str:
    """The kind of an installed component; falls back on the key when it is not installed here."""
    from ..errors import FlownbError
    from ..registry import get
    try:
        return get(component).kind
    except FlownbError:  # not installed here: the deployment image may still provide it
        return "webhook" if component.split(".")[-1] == "webhook" else "poll"


def step_plans(flow: Flow) -> list[StepPlan]:
    """One plan per container: the trigger, then each action step — a ``fuse`` group is one plan
    (named after its first step) whose worker runs the group's steps as one stage."""
    out = [StepPlan(flow.trigger, True, component_kind(flow.trigger.component))]
    for s in flow.actions:
        group = flow.fused_group(s.name)
        if s.name != group[0]:
            continue  # runs in the worker of its group's first step
        members = tuple(flow.step(n) for n in group) if len(group) > 1 else ()
        out.append(StepPlan(s, False, "action", members))
    if flow.on_error is not None:  # one worker (a service, a Deployment) for the on_error actions
        if any(p.name == ON_ERROR_SERVICE for p in out):
            raise DeployError(f"step '{ON_ERROR_SERVICE}' has the name the on_error worker's service gets; "
                              f"rename the step")
        out.append(StepPlan(Step(name=ON_ERROR_SERVICE, component="on_error"), False, "on_error",
                            tuple(flow.error_steps)))
    if flow.record is not None and flow.record.sample > 0:  # the tap is drained into a file on a volume
        if any(p.name == RECORDER_SERVICE for p in out):
            raise DeployError(f"step '{RECORDER_SERVICE}' has the name the flight recorder's service gets; "
                              f"rename the step")
        out.append(StepPlan(Step(name=RECORDER_SERVICE, component="recorder"), False, "recorder"))
    return out


def extras_for(flow: Flow) -> list[str]:
    """flownb extras the flow's workers need (webhook server, PostgreSQL driver, MQTT, Redis and NATS
    clients, Parquet/Excel libraries)."""
    extras = []
    if any(p.kind == "webhook" for p in step_plans(flow)):
        extras.append("webhook")
    text = flow.to_yaml()
    if "postgresql" in text or "postgres://" in text:
        extras.append("postgres")
    components = [flow.trigger.component, *(s.component for s in [*flow.actions, *flow.error_steps])]
    # mqtt.* need paho-mqtt, redis.* redis-py, nats.* nats-py, file.read/write pandas + pyarrow + openpyxl
    for extra, prefix in (("mqtt", "mqtt."), ("redis", "redis."), ("nats", "nats."), ("files", "file.")):
        if any(c.startswith(prefix) for c in components):
            extras.append(extra)
    return extras
