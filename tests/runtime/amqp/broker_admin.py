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


def connection_of(consumer: dict) -> str | None:
    """The name of a consumer's connection; None while the management database has not filled in
    its channel's details yet (the API then lists ``channel_details: []``)."""
    details = consumer.get("channel_details")
    return details.get("connection_name") if isinstance(details, dict) else None


def connection_names(broker: str, queue: str) -> list[str] | None:
    """The connection names of ``queue``'s consumers; None while one of them is not known yet."""
    names = [connection_of(c) for c in consumers(broker, queue)]
    return None if None in names else [n for n in names if n is not None]


def active_connection(broker: str, queue: str) -> str | None:
    """The name of the connection whose consumer is the single active consumer of ``queue`` (None:
    none yet, or its details not filled in yet)."""
    for c in consumers(broker, queue):
        if c.get("activity_status") == "single_active":
            return connection_of(c)
    return None


def drop_connection(name: str) -> None:
    r = httpx.delete(f"{API}/connections/{urllib.parse.quote(name, safe='')}", auth=("guest", "guest"),
                     headers={"X-Reason": "test: dropped"}, timeout=10)
    r.raise_for_status()
