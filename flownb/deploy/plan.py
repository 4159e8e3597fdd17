"""What compose, Kubernetes, the image and the Docker deploy share: names, secrets, worker commands."""

from __future__ import annotations

import glob
import hashlib
import posixpath
import re
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from ..errors import DeployError, ExportError
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


# -- local files: volumes ------------------------------------------------------------------------

#: where the image holds the spec (/app/flow.yaml): a worker reads the spec's relative paths from here
APP_DIR = "/app"
#: components whose ``path`` names a local file, folder or glob (besides those listing it in their
#: ``local_paths``); a ``sqlite:///`` URL in any field named ``url`` is a local file too
_FILE_COMPONENTS = ("csv.", "file.")
#: folders a volume must never cover: the image's own system, its venv and the spec's folder
_SYSTEM_DIRS = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/proc", "/run", "/sbin", "/sys",
                "/usr", "/opt/flownb")


def local_files(flow: Flow) -> list[tuple[str, str, str]]:
    """(step, field, path) of every local file, folder, glob or SQLite database the flow's steps (its
    on_error actions included) read or write: a container sees none of them unless a volume brings
    them in (:func:`data_volumes`)."""
    out = []
    for s in [*flow.all_steps, *flow.error_steps]:
        for key, value in s.config.items():
            if not isinstance(value, str) or "{{" in value:
                continue
            if key != "url" and key in _path_fields(s.component):
                out.append((s.name, key, value))
            elif key == "url" and value.startswith("sqlite:///") and not value.startswith("sqlite:///:memory:"):
                out.append((s.name, key, value[len("sqlite:///"):].split("?", 1)[0]))
    return out


def _path_fields(component: str) -> tuple[str, ...]:
    """The config fields of ``component`` that name a local path (split's ``path`` is JSONata)."""
    from ..errors import FlownbError
    from ..registry import get
    try:
        fields = tuple(getattr(get(component), "local_paths", ()))
    except FlownbError:  # not installed here: the deployment image may still provide it
        fields = ()
    return fields + (("path",) if component.startswith(_FILE_COMPONENTS) else ())


def _folder(step: str, key: str, path: str) -> str:
    """The folder, in the container, that holds ``path`` (a file, a folder, or a glob: its fixed
    leading folders): the folder a volume is mounted on. Paths whose folder cannot take a volume
    are an :class:`ExportError` naming the step and field and what to write instead."""
    parts = path.split("/")
    if any(glob.has_magic(p) for p in parts):
        fixed = parts[:next(i for i, p in enumerate(parts) if glob.has_magic(p))]
    else:
        fixed = parts[:-1]  # a file (or csv.write/file.write's output): its folder takes the volume
    is_abs = path.startswith("/")
    rel = "/".join(fixed)
    folder = posixpath.normpath(posixpath.join(APP_DIR, rel) if not is_abs else (rel or "/"))
    how = (f"keep the file in a folder of its own, e.g. '{_example(key, 'data/' + parts[-1])}' (a volume "
           f"on /app/data) or '{_example(key, '/data/' + parts[-1])}', so a volume can be mounted there")
    if not is_abs and not (folder + "/").startswith(APP_DIR + "/"):
        raise ExportError(f"'{path}' leaves the spec's folder ('..'); in the container the spec lies in "
                          f"{APP_DIR}, where that path names nothing: use an absolute path such as "
                          f"'{_example(key, '/data/' + parts[-1])}' or one inside the spec's folder",
                          step=step, field=key)
    if folder == APP_DIR:
        what = "has no fixed folder before its first wildcard" if any(glob.has_magic(p) for p in parts) else \
            "lies in the spec's own folder"
        raise ExportError(f"'{path}' {what} ({APP_DIR} in the container, which holds the spec): a volume "
                          f"there would hide it; {how}", step=step, field=key)
    if folder == "/" or folder in ("/opt", "/var", "/home") or APP_DIR.startswith(folder + "/") or any(
            (folder + "/").startswith(d + "/") for d in _SYSTEM_DIRS):
        raise ExportError(f"'{path}' would need a volume on '{folder}', which holds the image's own files; "
                          f"{how}", step=step, field=key)
    return folder


def _example(key: str, path: str) -> str:
    return f"sqlite:///{path}" if key == "url" else path


@dataclass(frozen=True)
class DataVolume:
    """A folder of local files some steps use: a named volume (compose, ``flownb deploy``) or a
    PersistentVolumeClaim (Kubernetes), mounted on the same path in exactly the containers of those
    steps, so the spec is unchanged."""

    #: short name: the compose volume, the pod's volume, the suffix of the claim and Docker volume
    name: str
    #: absolute path in the container (a relative path of the spec: under /app)
    path: str
    #: (step, field, path as written) of every use
    uses: tuple[tuple[str, str, str], ...]
    #: the services (StepPlan names) whose containers mount it
    services: tuple[str, ...]
    #: the pods that mount it at once: every replica of every service
    pods: int

    @property
    def shared(self) -> bool:
        """Mounted by more than one container at once (several steps or replicas)."""
        return self.pods > 1


def data_volumes(flow: Flow) -> list[DataVolume]:
    """One volume per folder of local files (a folder inside another one's joins it: one volume
    must hold both, or a step would write where another never reads), in the order first used."""
    found: list[tuple[str, tuple[str, str, str]]] = [(_folder(*use), use) for use in local_files(flow)]
    roots: list[str] = []
    for folder in sorted({f for f, _ in found}, key=lambda f: f.count("/")):
        if not any((folder + "/").startswith(r + "/") for r in roots):
            roots.append(folder)
    plans = step_plans(flow) if found else []
    out: list[DataVolume] = []
    names: set[str] = set()
    for root in dict.fromkeys(next(r for r in roots if (f + "/").startswith(r + "/")) for f, _ in found):
        uses = tuple(u for f, u in found if (f + "/").startswith(root + "/"))
        steps = {u[0] for u in uses}
        users = [p for p in plans if any(s.name in steps for s in p.steps)]
        name = _volume_name(root, names)
        names.add(name)
        out.append(DataVolume(name=name, path=root, uses=uses, services=tuple(p.name for p in users),
                              pods=sum(p.replicas for p in users)))
    return out


def _volume_name(path: str, taken: set[str]) -> str:
    rel = path[len(APP_DIR) + 1:] if path.startswith(APP_DIR + "/") else path.lstrip("/")
    slug = re.sub(r"[^a-z0-9]+", "-", rel.lower()).strip("-")[:40].strip("-") or "root"
    name = f"files-{slug}"
    if name in taken:  # two folders with one slug ('Data' and 'data'): the path's hash tells them apart
        name = f"{name}-{hashlib.sha1(path.encode()).hexdigest()[:8]}"
    return name
