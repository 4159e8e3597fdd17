"""From notebook to containers: export (papermill), image, compose, Kubernetes, Docker deploy.

papermill, nbformat and the Docker SDK are imported lazily, inside the functions that need them.
"""

from __future__ import annotations

from .compose import render_compose, write_compose
from .engine import DeployResult, deploy, down, status
from .export import ExportResult, check_parameters, export, flows_in_notebook, notebook_parameters
from .image import (DEBIAN_BASE_IMAGE, DEFAULT_BASE_IMAGE, build_image, build_wheelhouse, ensure_base_image,
                    write_dockerfile)
from .k8s import render_manifests, write_manifests
from .redact import redact_notebook, redact_text

__all__ = [
    "export", "ExportResult", "notebook_parameters", "check_parameters", "flows_in_notebook",
    "render_compose", "write_compose", "render_manifests", "write_manifests",
    "write_dockerfile", "build_wheelhouse", "build_image", "ensure_base_image", "DEFAULT_BASE_IMAGE",
    "DEBIAN_BASE_IMAGE", "deploy", "status", "down", "DeployResult", "redact_text", "redact_notebook",
]
