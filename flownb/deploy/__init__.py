"""From notebook to containers: export (papermill), image, compose, Kubernetes, Docker deploy.

papermill, nbformat and the Docker SDK are imported lazily, inside the functions that need them.
"""

from __future__ import annotations

from .compose import render_compose, write_compose
from .docker import DeployResult, deploy, down, status
from .export import ExportResult, export, flows_in_notebook
from .image import (
                    DEBIAN_BASE_IMAGE,
                    DEFAULT_BASE_IMAGE,
                    build_image,
                    build_wheelhouse,
                    ensure_base_image,
                    write_dockerfile,
)
from .k8s import render_manifests, write_manifests
from .redact import redact_notebook, redact_text

__all__ = [
                    "DEBIAN_BASE_IMAGE",
                    "DEFAULT_BASE_IMAGE",
                    "DeployResult",
                    "ExportResult",
                    "build_image",
                    "build_wheelhouse",
                    "deploy",
                    "down",
                    "ensure_base_image",
                    "export",
                    "flows_in_notebook",
                    "redact_notebook",
                    "redact_text",
                    "render_compose",
                    "render_manifests",
                    "status",
                    "write_compose",
                    "write_dockerfile",
                    "write_manifests",
]
