"""The two places an accepted request can go, behind one small interface for the tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flownb.flow import Flow
from flownb.message import Message
from flownb.webhook.amqp import AmqpIngest

from .conftest import BROKER, amqp_delete, amqp_drain


class Backend:
    def __init__(self, tmp: Path):
        self.tmp = tmp

    def ingest(self, flow: Flow) -> Any:
        raise NotImplementedError

    def drain(self, flow: Flow) -> list[Message]:
        """Every message queued for the flow's first action since the last drain."""
        raise NotImplementedError

    def cleanup(self, flows: list[Flow]) -> None:
        pass


class AmqpBackend(Backend):
    def ingest(self, flow: Flow) -> AmqpIngest:
        return AmqpIngest(flow, BROKER)

    def drain(self, flow: Flow) -> list[Message]:
        return amqp_drain(flow)

    def cleanup(self, flows: list[Flow]) -> None:
        for f in flows:
            amqp_delete(f)


BACKENDS: dict[str, type[Backend]] = {"amqp": AmqpBackend}
