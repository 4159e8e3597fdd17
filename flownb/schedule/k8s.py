"""Schedules as Kubernetes CronJobs (``batch/v1``), called by ``flownb export --target k8s``.

Each CronJob runs ``papermill`` on the notebook inside ``image`` with the schedule's parameters
(``-y`` YAML keeps their types), ``concurrencyPolicy: Forbid`` unless the schedule allows overlap,
the schedule's time zone, ``activeDeadlineSeconds`` = its timeout, and ``keep`` as the jobs history
limit. Catch-up: Kubernetes starts at most the most recent missed run; ``none`` sets
``startingDeadlineSeconds`` (= ``grace``) so a late run is dropped, ``last`` and ``all`` leave it
unset (``all`` cannot be expressed; it exports as ``last`` with a warning). Kubernetes cron has no
seconds field, so a 6-field schedule is a DeployError.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from pathlib import Path

from ..errors import DeployError
from .model import Schedule

__all__ = ["cronjob_manifests"]

log = logging.getLogger("flownb.schedule.k8s")


def cronjob_manifests(
    schedules: Iterable[Schedule],
    image: str,
    *,
    namespace: str | None = None,
    workdir: str = "/app",
    notebook_root: str | Path | None = None,
    output_dir: str = "/runs",
    name_prefix: str = "nb-",
    grace: int = 60,
    env_from_secret: str | None = None,
    labels: dict[str, str] | None = None,
    kernel: str | None = None,
) -> list[dict]:
    """One CronJob manifest (a dict ready for ``yaml.safe_dump``) per schedule.

    The notebook path inside the image is ``workdir`` / (its path relative to ``notebook_root``, or
    its file name). Output notebooks go to ``output_dir`` (an ``emptyDir``; mount a volume there to
    keep them). ``env_from_secret`` names a Secret whose keys become environment variables.
    ``kernel`` overrides the notebook's kernel name (an image has the ``python3`` kernel, not the
    kernels of the machine the notebook was written on).
    """
    root = Path(notebook_root).resolve() if notebook_root else None
    return [
        _cronjob(
            s, image, namespace, workdir, root, output_dir, name_prefix, grace, env_from_secret, labels or {},
            kernel,
        )
        for s in schedules
    ]


def _in_image(notebook: str, workdir: str, root: Path | None) -> str:
    path = Path(notebook)
    rel = Path(path.name)
    if root is not None:
        try:
            rel = path.resolve().relative_to(root)
        except ValueError:
            rel = Path(path.name)
    return f"{workdir.rstrip('/')}/{rel.as_posix()}"


def _cronjob(
    s: Schedule,
    image: str,
    namespace: str | None,
    workdir: str,
    root: Path | None,
    output_dir: str,
    prefix: str,
    grace: int,
    secret: str | None,
    labels: dict[str, str],
    kernel: str | None = None,
) -> dict:
    if s.has_seconds:
        raise DeployError(
            f"schedule '{s.name}': cron '{s.cron}' has a seconds field, which Kubernetes "
            f"CronJobs do not support; use a 5-field expression for an exported schedule"
        )
    name = f"{prefix}{s.name}"
    if len(name) > 52 or not re.match(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$", name):
        raise DeployError(
            f"CronJob name '{name}' is not a valid Kubernetes name (at most 52 characters, "
            f"lowercase letters, digits, '-'); shorten the schedule name or name_prefix"
        )
    if s.catchup == "all":
        log.warning(
            "schedule '%s': catchup=all cannot be expressed as a CronJob; Kubernetes starts only the "
            "most recent missed run (as catchup=last)",
            s.name,
        )
    if s.on_error is not None:
        log.warning(
            "schedule '%s': its on_error is not part of the CronJob (Kubernetes runs the notebook, no "
            "scheduler sees the run fail); alert on failed Jobs instead (kube-state-metrics "
            "kube_job_status_failed)",
            s.name,
        )
    notebook = _in_image(s.notebook, workdir, root)
    out = f"{output_dir.rstrip('/')}/{s.name}.ipynb"
    command = [
        "papermill",
        notebook,
        out,
        "--cwd",
        str(Path(notebook).parent),
        "--log-output",
        "--no-progress-bar",
    ]
    if kernel:
        command += ["-k", kernel]
    if s.parameters:
        command += ["-y", json.dumps(s.parameters, sort_keys=True)]
    meta_labels = {
        "app.kubernetes.io/name": "flownb",
        "app.kubernetes.io/component": "schedule",
        "flownb/schedule": s.name,
        **labels,
    }
    container: dict = {
        "name": "notebook",
        "image": image,
        "command": command,
        "volumeMounts": [{"name": "runs", "mountPath": output_dir}],
    }
    if secret:
        container["envFrom"] = [{"secretRef": {"name": secret}}]
    job_spec = {
        "activeDeadlineSeconds": max(1, int(round(s.timeout))),
        "backoffLimit": 0,
        "template": {
            "metadata": {"labels": meta_labels},
            "spec": {
                "restartPolicy": "Never",
                "containers": [container],
                "volumes": [{"name": "runs", "emptyDir": {}}],
            },
        },
    }
    spec: dict = {
        "schedule": s.cron,
        "timeZone": s.tz,
        "concurrencyPolicy": "Allow" if s.allow_overlap else "Forbid",
        "successfulJobsHistoryLimit": s.keep,
        "failedJobsHistoryLimit": s.keep,
        "jobTemplate": {"metadata": {"labels": meta_labels}, "spec": job_spec},
    }
    if s.catchup == "none":
        spec["startingDeadlineSeconds"] = grace
    metadata: dict = {
        "name": name,
        "labels": meta_labels,
        "annotations": {"flownb/catchup": s.catchup, "flownb/notebook": notebook},
    }
    if namespace:
        metadata["namespace"] = namespace
    return {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": metadata, "spec": spec}
