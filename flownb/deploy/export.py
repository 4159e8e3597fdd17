"""``flownb export``: run a notebook with papermill (or read a spec), take the flow it displays and
write the deployment directory: flow.yaml, params.json, Dockerfile, docker-compose.yml, k8s/*.yaml,
and the executed notebook with secrets redacted.

papermill, nbformat and yaml are imported lazily: a worker never imports this module.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..display import FLOW_MIME
from ..errors import DeployError, ParameterError, did_you_mean
from ..flow import Flow, from_spec, load
from ..params import coerce_all, inspect
from .plan import (
    BROKER_ENV,
    check_no_literal_secrets,
    local_files,
    secret_envs,
    url_has_password,
)
from .redact import redact_notebook, redact_values

__all__ = [
    "TARGETS",
    "ExportResult",
    "export",
    "flows_in_notebook",
    "local_files",
]

log = logging.getLogger("flownb.deploy")
TARGETS = ("compose", "k8s", "all")
_NO_DEFAULT = object()


@dataclass
class ExportResult:
    flow: Flow
    out_dir: Path
    files: list[Path] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    #: what the deployment needs beyond the files written (e.g. a storage class for shared volumes)
    warnings: list[str] = field(default_factory=list)


# -- parameters ----------------------------------------------------------------------------------

def read_params_file(path: str | Path) -> dict[str, Any]:
    import yaml
    p = Path(path)
    if not p.exists():
        raise DeployError(f"parameters file '{p}' does not exist")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ParameterError(f"parameters file '{p}' is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ParameterError(f"parameters file '{p}' must be a mapping of name: value")
    return data


# -- notebook ------------------------------------------------------------------------------------

def run_notebook(src: Path, out: Path, params: dict[str, Any], *, kernel_name: str | None = None,
                 cwd: Path | None = None) -> dict:
    """Execute ``src`` with papermill; return the executed notebook as a dict. papermill writes to a
    temporary file: only a redacted notebook ever reaches ``out`` (the partial one, on failure)."""
    import tempfile

    import nbformat
    import papermill
    from papermill.exceptions import PapermillExecutionError
    with tempfile.TemporaryDirectory(prefix="flownb-export-") as tmp:
        tmp_out = Path(tmp) / src.name
        try:
            nb = papermill.execute_notebook(str(src), str(tmp_out), parameters=params,
                                            kernel_name=kernel_name, progress_bar=False,
                                            cwd=str(cwd or src.parent))
        except PapermillExecutionError as exc:
            if tmp_out.exists():
                partial = json.loads(tmp_out.read_text(encoding="utf-8"))
                out.write_text(json.dumps(redact_notebook(partial, []), indent=1) + "\n", encoding="utf-8")
            raise DeployError(f"notebook '{src.name}' failed in cell {exc.cell_index} (execution count "
                              f"{exc.exec_count}): {exc.ename}: {exc.evalue}; the partial output is in "
                              f"'{out}'; fix the notebook (or the parameters) and export again") from None
        except Exception as exc:  # kernel missing, unreadable notebook …
            raise DeployError(f"could not run notebook '{src.name}' with papermill: {exc}") from exc
    return json.loads(nbformat.writes(nb))


def flows_in_notebook(nb: dict) -> list[dict]:
    """The flow specs the notebook displays (MIME ``application/vnd.flownb.flow+json``), one per flow
    name; a flow displayed several times counts once (its last display wins)."""
    found: dict[str | None, dict] = {}  # by name (None: a spec without one, which from_spec rejects)
    for cell in nb.get("cells", []):
        for output in cell.get("outputs", []) or []:
            spec = (output.get("data") or {}).get(FLOW_MIME)
            if isinstance(spec, str):
                spec = json.loads(spec)
            if isinstance(spec, dict):
                found.pop(spec.get("name"), None)
                found[spec.get("name")] = spec
    return list(found.values())


def pick_flow(specs: list[dict], name: str | None, *, source: str) -> Flow:
    names = [str(s.get("name")) for s in specs]
    if name:
        for s in specs:
            if s.get("name") == name:
                return from_spec(s, source=f"{source} (flow '{name}')")
        raise DeployError(f"{source} displays no flow '{name}'{did_you_mean(name, names)} "
                          f"flows displayed: {', '.join(names) or '(none)'}")
    if not specs:
        raise DeployError(f"{source} displays no flow: end a cell with the Flow object (or "
                          f"display(flow)) so the export can find it")
    if len(specs) > 1:
        raise DeployError(f"{source} displays {len(specs)} flows ({', '.join(names)}); pick one with "
                          f"--flow NAME")
    return from_spec(specs[0], source=source)


# -- export --------------------------------------------------------------------------------------

def export(source: str | Path, out_dir: str | Path, *, params: dict[str, Any] | None = None,
           params_file: str | Path | None = None, target: str = "all", flow_name: str | None = None,
           broker_url: str | None = None, kernel_name: str | None = None, image: str | None = None,
           ingress_host: str | None = None, keda: bool = False,
           schedules_dir: str | Path | None = None, schedule_names: list[str] | None = None,
           rabbitmq: str | None = None) -> ExportResult:
    """Export a notebook (run with papermill) or a spec to a deployment directory ``out_dir``.

    ``schedules_dir`` is a state directory holding ``schedules.db`` (``flownb schedule add``): its
    schedules (all, or those named in ``schedule_names``) become Kubernetes CronJobs in
    ``k8s/schedules.yaml``, their notebooks are copied to ``notebooks/`` and go into the image.
    """
    if target not in TARGETS:
        raise DeployError(f"unknown target '{target}'{did_you_mean(target, TARGETS)} "
                          f"targets: {', '.join(TARGETS)}")
    from .k8s import check_rabbitmq_mode
    check_rabbitmq_mode(rabbitmq, broker_url)
    schedules = load_schedules(schedules_dir, schedule_names)
    src = Path(source)
    if not src.exists():
        raise DeployError(f"'{src}' does not exist; pass a notebook (.ipynb) or a flow.yaml")
    given = {**(read_params_file(params_file) if params_file else {}), **(params or {})}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result_params: dict[str, Any]
    executed: dict | None = None
    if src.suffix == ".ipynb":
        result_params = coerce_all(inspect(src), given, source=f"notebook '{src.name}'")
        log.info("running %s with papermill, parameters %s", src.name, sorted(result_params))
        executed_path = out / f"{src.stem}.executed.ipynb"
        executed = run_notebook(src, executed_path, result_params, kernel_name=kernel_name)
        flow = pick_flow(flows_in_notebook(executed), flow_name, source=f"notebook '{src.name}'")
    else:
        flow = load(src)
        if flow_name and flow_name != flow.name:
            raise DeployError(f"spec '{src}' holds flow '{flow.name}', not '{flow_name}'")
        flow = flow.with_parameters(given)
        result_params = dict(given)
    return _write(flow, out, executed, src, result_params, target=target, broker_url=broker_url,
                  image=image, ingress_host=ingress_host, keda=keda, schedules=schedules, rabbitmq=rabbitmq)


def load_schedules(state_dir: str | Path | None, names: list[str] | None = None) -> list:
    """The schedules of ``state_dir`` (all, or ``names`` in that order); [] when ``state_dir`` is None.
    An unknown name, or a directory without ``schedules.db``, is a ScheduleInputError (CLI exit 2)
    that says what exists."""
    from ..schedule.model import ScheduleInputError
    if state_dir is None:
        if names:
            raise ScheduleInputError("--schedule NAME needs --schedules STATE_DIR (where 'flownb schedule add' "
                                     "stored them)")
        return []
    db = Path(state_dir) / "schedules.db"
    if not db.exists():
        raise ScheduleInputError(f"'{state_dir}' holds no schedules ({db.name} is missing); add them with "
                                 f"'flownb schedule add NOTEBOOK --cron EXPR --name NAME --state-dir {state_dir}'")
    from ..schedule.store import ScheduleStore
    store = ScheduleStore(state_dir)
    every = {s.name: s for s in store.list()}
    if not names:
        return list(every.values())
    unknown = [n for n in names if n not in every]
    if unknown:
        raise ScheduleInputError(f"no schedule named {', '.join(map(repr, unknown))} in '{state_dir}'"
                                 f"{did_you_mean(unknown[0], list(every))} schedules: {', '.join(every) or '(none)'}")
    return [every[n] for n in names]


def _copy_schedule_notebooks(schedules: list, out: Path) -> Path:
    """Copy each scheduled notebook to ``out/notebooks/`` (one file name per notebook)."""
    import shutil
    nb_dir = out / "notebooks"
    nb_dir.mkdir(exist_ok=True)
    seen: dict[str, Path] = {}
    for s in schedules:
        path = Path(s.notebook)
        if not path.exists():
            raise DeployError(f"schedule '{s.name}': notebook '{path}' does not exist; fix or remove the "
                              f"schedule ('flownb schedule remove {s.name}')")
        other = seen.get(path.name)
        if other is not None and other.resolve() != path.resolve():
            raise DeployError(f"scheduled notebooks '{other}' and '{path}' have the same file name; the "
                              f"image holds one notebooks/ directory: rename one of them")
        seen[path.name] = path
        shutil.copy2(path, nb_dir / path.name)
    return nb_dir


def _write(flow: Flow, out: Path, executed: dict | None, src: Path, params: dict[str, Any], *,
           target: str, broker_url: str | None, image: str | None, ingress_host: str | None,
           keda: bool, schedules: list | None = None, rabbitmq: str | None = None) -> ExportResult:
    from . import compose, k8s
    from . import image as image_mod
    if flow.topology is None:  # a deployment runs on replicated queues unless the spec says classic
        flow = Flow.model_validate({**flow.model_dump(mode="python"), "topology": "quorum"}).located(flow.spec_dir)
    flow = flow.resolved(paths=False)  # the spec lands in the image: its relative paths stay relative
    flow.validate_components()
    check_no_literal_secrets(flow)
    envs = secret_envs(flow)
    values = [os.environ[e] for e in envs if os.environ.get(e)]
    spec_text = flow.to_yaml()
    if redact_values(spec_text, values) != spec_text:
        raise DeployError(f"the flow spec contains the value of a secret environment variable "
                          f"({', '.join(envs)}); reference it with a '*_env' config field instead")
    res = ExportResult(flow=flow, out_dir=out, parameters=params)
    # an ExportError for a path no volume can bring in: raised before anything is written
    for v, shared in k8s.shared_claims(flow, keda=keda):
        if shared and target in ("k8s", "all"):
            uses = ", ".join(f"step {u[0]!r} {u[1]} {u[2]!r}" for u in v.uses)
            res.warnings.append(
                f"local files in '{v.path}' ({uses}) are shared by several pods ({v.pods}"
                f"{', more as KEDA scales' if keda else ''}): Kubernetes needs a storage class offering "
                f"ReadWriteMany (NFS, CephFS, a cloud file share) for the claim; SQLite on such a share must "
                f"have one writer")
    for w in res.warnings:
        log.warning("%s", w)
    res.files.append(flow.save(out / "flow.yaml"))
    res.files.append(_write_text(out / "params.json", json.dumps(
        {"source": src.name, "parameters": params, "flow_parameters": flow.parameters},
        indent=2, default=str, sort_keys=True) + "\n", values))
    if schedules:
        nb_dir = _copy_schedule_notebooks(schedules, out)
        res.files += sorted(nb_dir.iterdir())
    res.files.append(image_mod.write_dockerfile(out, flow, notebooks=bool(schedules)))
    env_names = envs + ([BROKER_ENV] if broker_url and url_has_password(broker_url) else [])
    if target in ("k8s", "all") and k8s.rabbitmq_mode(flow, rabbitmq, broker_url) == "cluster":
        env_names.append(k8s.ERLANG_COOKIE_KEY)  # the cluster's nodes share it: in the flow's Secret
    if env_names:
        res.files.append(_write_text(out / "secrets.env.example", "".join(
            f"{e}=\n" for e in env_names), []))
    if target in ("compose", "all"):
        res.files.append(compose.write_compose(out, flow, broker_url=broker_url, image=image))
    if target in ("k8s", "all"):
        res.files += k8s.write_manifests(out / "k8s", flow, broker_url=broker_url, image=image,
                                        ingress_host=ingress_host, keda=keda, schedules=schedules or [],
                                        rabbitmq=rabbitmq)
    elif schedules:
        log.warning("%d schedule(s) are exported as Kubernetes CronJobs only (--target k8s or all); "
                    "with compose, run 'flownb schedule serve' beside the workers", len(schedules))
    if executed is not None:
        nb_path = out / f"{src.stem}.executed.ipynb"
        nb_path.write_text(json.dumps(redact_notebook(executed, values), indent=1, ensure_ascii=False) + "\n",
                           encoding="utf-8")
        res.files.append(nb_path)
    return res


def _write_text(path: Path, text: str, values: list[str]) -> Path:
    path.write_text(redact_values(text, values), encoding="utf-8")
    return path
