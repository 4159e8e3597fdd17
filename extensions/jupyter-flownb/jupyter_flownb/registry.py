"""How a kernel tells the Jupyter server which flow to serve webhooks for.

The kernel calls :func:`serve_in_jupyter(flow, state_dir)`; it writes ``<registry>/<flow>.json``
(mode 0600: it holds the URL token and the HMAC secret) with the flow's spec (YAML), the absolute
state directory, the token and, when the webhook trigger has ``hmac_secret_env``, the secret — read
in the kernel, whose environment has it (the server's need not). The server reads the registry on
every hook request, so registering, re-registering (after editing the flow) and
:func:`stop_serving` take effect at once, without a server restart.

The registry directory is ``$FLOWNB_JUPYTER_REGISTRY`` if set, else ``<jupyter runtime dir>/
flownb-hooks`` — the runtime dir (``jupyter --runtime-dir``, ``$JUPYTER_RUNTIME_DIR``) is the same
for a server and the kernels it starts.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from flownb.errors import ConfigError, SpecError

__all__ = ["HookRegistration", "registry_dir", "serve_in_jupyter", "stop_serving", "served_flows", "read"]

MIN_TOKEN = 16


def registry_dir(path: str | Path | None = None) -> Path:
    if path is not None:
        return Path(path)
    env = os.environ.get("FLOWNB_JUPYTER_REGISTRY")
    if env:
        return Path(env)
    from jupyter_core.paths import jupyter_runtime_dir

    return Path(jupyter_runtime_dir()) / "flownb-hooks"


@dataclass
class HookRegistration:
    """A flow served by the Jupyter server."""

    flow: str
    spec: str  # flow.yaml text
    state_dir: str  # absolute
    token: str
    max_body: int = 1024 * 1024
    pid: int = 0  # the registering kernel
    registered_at: float = 0.0
    # HMAC secret of a trigger with hmac_secret_env ("" when requests are not signed); never in a repr
    secret: str = field(default="", repr=False)

    @property
    def path(self) -> str:
        """The URL path (append it to the server's base URL)."""
        return f"/flownb/hooks/{self.flow}/{self.token}"

    def public(self) -> dict:
        """What the server lists: everything but the token, the secret and the spec text."""
        return {
            "flow": self.flow,
            "state_dir": self.state_dir,
            "pid": self.pid,
            "registered_at": self.registered_at,
            "max_body": self.max_body,
            "signed": bool(self.secret),
        }


def webhook_config(flow: Any):
    """The flow's webhook trigger config (the checks ``flownb run --port`` applies), or None when the
    trigger is not a webhook (such a flow is served with the defaults: no signature, 1 MiB, depth 64)."""
    from flownb.registry import get
    from flownb.webhook.pipeline import webhook_config as config_of

    if get(flow.trigger.component, step=flow.trigger.name).kind != "webhook":
        return None
    return config_of(flow)


def _token_for(config: Any, token: str | None) -> str:
    if token is None and config is not None:
        token = os.environ.get(config.token_env)
    token = token or secrets.token_urlsafe(24)
    if len(token) < MIN_TOKEN:
        raise ConfigError(
            f"the webhook token has {len(token)} characters; use at least {MIN_TOKEN} "
            f"(e.g. secrets.token_urlsafe(24))",
            field="token",
        )
    return token


def _secret_for(config: Any) -> str:
    if config is None or not config.hmac_secret_env:
        return ""
    secret = os.environ.get(config.hmac_secret_env)
    if not secret:
        raise ConfigError(
            f"environment variable '{config.hmac_secret_env}' (hmac_secret_env) is not set in this kernel; "
            f"export the shared signing secret before serve_in_jupyter (requests must be signed)",
            field="config.hmac_secret_env",
        )
    return secret


def serve_in_jupyter(
    flow: Any,
    state_dir: str | Path = ".flownb",
    *,
    token: str | None = None,
    max_body: int | None = None,
    registry: str | Path | None = None,
) -> HookRegistration:
    """Register ``flow`` (a :class:`flownb.Flow`) with the Jupyter server of this kernel.

    Requests to ``/flownb/hooks/<flow>/<token>`` are then committed into ``state_dir``; run the flow
    on the same state directory in the kernel (``LocalRuntime(flow, state_dir).run()``) to process
    them. The token is ``token``, else the value of the webhook trigger's ``token_env``, else a
    random one. Requests get the same checks as ``flownb run --port`` (the trigger's signature,
    ``tolerance``, ``max_depth``, ``max_body``, ``signature_header``); ``max_body`` overrides the
    trigger's. With ``hmac_secret_env``, that variable must be set here (ConfigError otherwise).
    Returns the registration; ``.path`` is the URL path to call.
    """
    flow.validate_components()
    config = webhook_config(flow)
    reg = HookRegistration(
        flow=flow.name,
        spec=flow.to_yaml(),
        state_dir=str(Path(state_dir).resolve()),
        token=_token_for(config, token),
        secret=_secret_for(config),
        max_body=max_body if max_body is not None else config.max_body if config is not None else 1024 * 1024,
        pid=os.getpid(),
        registered_at=time.time(),
    )
    folder = registry_dir(registry)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{flow.name}.json"
    tmp = folder / f".{flow.name}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(asdict(reg), fh)
    os.replace(tmp, target)  # readers never see a half-written registration
    return reg


def stop_serving(flow_name: str, *, registry: str | Path | None = None) -> bool:
    """Remove the registration of ``flow_name``; True when there was one."""
    try:
        (registry_dir(registry) / f"{flow_name}.json").unlink()
    except FileNotFoundError:
        return False
    return True


def read(flow_name: str, registry: str | Path | None = None) -> HookRegistration | None:
    path = registry_dir(registry) / f"{flow_name}.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise SpecError(
            f"hook registration '{path}' is unreadable ({exc}); call serve_in_jupyter again"
        ) from exc
    return HookRegistration(**{k: data[k] for k in HookRegistration.__dataclass_fields__ if k in data})


def served_flows(registry: str | Path | None = None) -> list[HookRegistration]:
    folder = registry_dir(registry)
    if not folder.is_dir():
        return []
    out = []
    for p in sorted(folder.glob("*.json")):
        reg = read(p.stem, folder)
        if reg is not None:
            out.append(reg)
    return out
