"""The broker's management API (127.0.0.1:15672, guest/guest) for tests that drop a connection the
way an operator or a load balancer does: ``DELETE /api/connections/NAME`` closes it from the broker's
side (connection.close 320 CONNECTION_FORCED, then the socket)."""

from __future__ import annotations

import urllib.parse

import httpx

API = "http://127.0.0.1:15672/api"


def _vhost(broker: str) -> str:
    return urllib.parse.quote(urllib.parse.unquote(urllib.parse.urlsplit(broker).path.lstrip("/")) or "/", safe="")


def consumers(broker: str, queue: str) -> list[dict]:
    """The consumers of ``queue`` in the broker URL's vhost, as the management API lists them (each
    with ``activity_status``: ``single_active``, ``waiting`` or ``up``, and its connection's name)."""
    r = httpx.get(f"{API}/consumers/{_vhost(broker)}", auth=("guest", "guest"), timeout=10)
    r.raise_for_status()
    return [c for c in r.json() if c["queue"]["name"] == queue]


def active_connection(broker: str, queue: str) -> str | None:
    """The name of the connection whose consumer is the single active consumer of ``queue``."""
    for c in consumers(broker, queue):
        if c.get("activity_status") == "single_active":
            return c["channel_details"]["connection_name"]
    return None


def drop_connection(name: str) -> None:
    r = httpx.delete(f"{API}/connections/{urllib.parse.quote(name, safe='')}", auth=("guest", "guest"),
                     headers={"X-Reason": "test: dropped"}, timeout=10)
    r.raise_for_status()
