"""``log``: write each message to the step's logger and pass it on unchanged."""

from __future__ import annotations

import logging
from typing import Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from .base import Action


class LogConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    level: Literal["debug", "info", "warning", "error"] = "info"
    prefix: str = Field("", description="text written before each body")
    passthrough: bool = Field(True, description="emit the message on to the next step")


class Log(Action[LogConfig]):
    """Log each message body, then pass it on."""

    Config = LogConfig

    def setup(self) -> None:
        self._level = getattr(logging, self.config.level.upper())

    def process(self, message, ctx):
        if ctx.logger.isEnabledFor(self._level):
            ctx.logger.log(self._level, "%s%s", self.config.prefix, orjson.dumps(message.body).decode())
        return message.body if self.config.passthrough else None
