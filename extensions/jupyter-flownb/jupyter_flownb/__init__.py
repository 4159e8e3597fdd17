"""jupyter-flownb: a Jupyter Server extension for flownb.

Inside a running Jupyter server (JupyterLab, Notebook 7, ``jupyter server``) it serves

- ``POST /flownb/hooks/<flow>/<token>``: a real HTTP request goes through the webhook pipeline of
  ``flownb run --port`` (:mod:`flownb.webhook.pipeline`: the flow's token, signature, limits) and
  becomes a message, durably committed into the first action's queue in the flow's local state
  directory by the embedded runtime's ingress; the kernel that runs the same flow on the same state
  directory processes it. A kernel registers its flow with :func:`serve_in_jupyter` (a JSON file in
  the hook registry directory that the server reads).
- ``/flownb/api/schedules…``: list/add/remove schedules, run one now, read run history, backed by
  :mod:`flownb.schedule` (see the README for every route).

Both need the server's token (or a logged-in browser session), except the hook URL itself, whose
secret is the token in its path.
"""

from __future__ import annotations

from .registry import HookRegistration, registry_dir, serve_in_jupyter, served_flows, stop_serving

__all__ = [
    "serve_in_jupyter",
    "stop_serving",
    "served_flows",
    "registry_dir",
    "HookRegistration",
    "__version__",
]
__version__ = "0.1.0"


def _jupyter_server_extension_points() -> list[dict]:
    return [{"module": "jupyter_flownb"}]


def _load_jupyter_server_extension(serverapp) -> None:
    from .handlers import setup_handlers

    setup_handlers(serverapp)
