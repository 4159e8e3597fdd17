"""``example.jsonl.poll``: emit each new line of a JSON Lines file.

A polling trigger implements ``poll(state, ctx)``: it yields message bodies (dicts) and updates
``state`` in place. The runtime commits the emitted messages and the new state atomically (one
SQLite transaction locally, one AMQP transaction on RabbitMQ), so a crash never loses or repeats a
poll: keep everything needed to resume in ``state`` (small, JSON-serialisable).
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import Field, field_validator

from flownb import PollingTrigger
from flownb.components.base import PollConfig
from flownb.errors import ConfigError, FatalError, RetryableError


class JsonLinesPollConfig(PollConfig):
    """Config model: flownb validates the spec against it before anything runs, and the notebook
    widgets draw a form from it (descriptions become help texts). ``interval`` comes from PollConfig."""

    path: str = Field(description="JSON Lines file to follow (one JSON object per line)")
    batch: int = Field(100, ge=1, description="most lines emitted per poll")
    skip_invalid: bool = Field(False, description="skip lines that are not JSON objects instead of failing")

    @field_validator("path")
    @classmethod
    def _not_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("path is empty; give the JSON Lines file to read, e.g. 'data/events.jsonl'")
        return v


class JsonLinesPoll(PollingTrigger[JsonLinesPollConfig]):
    """Emit each new line of a JSON Lines file, resuming where the last poll stopped."""

    Config = JsonLinesPollConfig

    def next_delay(self, state: dict) -> float:
        # a full batch means more is waiting: poll again at once (the runtime's poll_backlog asks)
        return 0.0 if state.get("full") else self.interval

    def poll(self, state: dict, ctx):
        path = Path(self.config.path)
        if not path.exists():
            # transient: the runtime logs it and polls again after the interval
            raise RetryableError(f"'{path}' does not exist yet; it is polled again in {self.interval:g}s")
        offset = int(state.get("offset", 0))
        if path.stat().st_size < offset:
            ctx.logger.warning(
                "'%s' shrank below the saved offset %d; reading it from the start", path, offset
            )
            offset = 0
        bodies = []
        with path.open("rb") as fh:
            fh.seek(offset)
            while len(bodies) < self.config.batch:
                line = fh.readline()
                if not line.endswith(b"\n"):
                    break  # a half-written last line: read it next poll
                offset += len(line)
                body = self._parse(line, offset)
                if body is not None:
                    bodies.append(body)
        state["offset"] = offset
        state["full"] = len(bodies) >= self.config.batch
        return bodies

    def _parse(self, line: bytes, offset: int) -> dict | None:
        if not line.strip():
            return None
        try:
            value = json.loads(line)
        except ValueError as exc:
            value, error = None, f"invalid JSON ({exc})"
        else:
            error = None if isinstance(value, dict) else f"a JSON {type(value).__name__}, not an object"
        if error is None:
            return value
        if self.config.skip_invalid:
            self.ctx.logger.warning(
                "skipping line ending at byte %d of '%s': %s", offset, self.config.path, error
            )
            return None
        raise FatalError(
            f"line ending at byte {offset} of '{self.config.path}' is {error}; fix the file or set "
            f"skip_invalid: true"
        )

    @classmethod
    def check_config(cls, config, step) -> None:
        """Checks beyond the model that need no I/O; raise a SpecError subclass naming the field."""
        if config.path.endswith((".csv", ".json")) and not config.path.endswith(".jsonl"):
            raise ConfigError(
                f"'{config.path}' does not look like a JSON Lines file; use csv.poll for CSV, "
                f"or a .jsonl file with one JSON object per line",
                step=step.name,
                field="config.path",
            )
