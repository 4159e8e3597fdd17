"""The ASGI app behind webhook triggers (``POST /hooks/<flow>/<token>``); see docs/webhook.md.

Starlette and uvicorn come with the ``webhook`` extra (``pip install flownb[webhook]``); this package
imports them lazily so a worker that does not serve webhooks never loads them.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app", "Hook", "Ingest", "Accepted", "Backpressure", "Unavailable", "LocalIngest",
           "AmqpIngest", "serve_local", "serve_amqp", "sign", "verify_signature"]

_HOMES = {
    "create_app": "app", "Hook": "app",
    "Ingest": "ingest", "Accepted": "ingest", "Backpressure": "ingest", "Unavailable": "ingest",
    "LocalIngest": "ingest", "AmqpIngest": "amqp", "serve_local": "server", "serve_amqp": "server",
    "sign": "parse", "verify_signature": "parse",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'flownb.webhook' has no attribute '{name}'")
    import importlib
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
