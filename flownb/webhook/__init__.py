"""The ASGI app behind webhook triggers (``POST /hooks/<flow>/<token>``); see docs/webhook.md.

HTTP only: accepting a request durably (ingress) is the runtimes' job —
:mod:`flownb.runtime.local.ingress` (SQLite) and :mod:`flownb.runtime.amqp.ingress` (RabbitMQ).

Starlette and uvicorn come with the ``webhook`` extra (``pip install flownb[webhook]``); this package
imports them lazily so a worker that does not serve webhooks never loads them.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app", "Hook", "serve_local", "serve_amqp", "sign", "verify_signature"]

_HOMES = {
    "create_app": "app", "Hook": "app", "serve_local": "server", "serve_amqp": "server",
    "sign": "parse", "verify_signature": "parse",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'flownb.webhook' has no attribute '{name}'")
    import importlib
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
