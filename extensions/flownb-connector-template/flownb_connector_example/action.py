"""``example.format``: add a field made from a text template filled with the message's fields.

An action implements ``process(message, ctx)`` and returns a dict (one message), a list of dicts
(one message each) or ``None`` (filtered out). Raise ``flownb.Retry`` / a ``RetryableError`` for
"try again later" (retried with back-off, then dead-lettered); any other exception dead-letters
the message at once, with the error attached.
"""

from __future__ import annotations

import string

from pydantic import BaseModel, ConfigDict, Field

from flownb import Action
from flownb.errors import ConfigError, FatalError


class FormatConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a typo in the spec is an error that names the field
    field: str = Field(description="name of the field to set")
    template: str = Field(
        description="text with {placeholders} naming the message's fields, e.g. 'Hello {name}'"
    )
    upper: bool = Field(False, description="upper-case the result")


class Format(Action[FormatConfig]):
    """Set a field from a text template filled with the message's fields."""

    Config = FormatConfig

    @classmethod
    def check_config(cls, config, step) -> None:
        try:
            list(string.Formatter().parse(config.template))
        except ValueError as exc:
            raise ConfigError(
                f"template {config.template!r} is not valid: {exc}; write fields as {{name}} and "
                f"a literal brace as {{{{ or }}}}",
                step=step.name,
                field="config.template",
            ) from None

    def process(self, message, ctx):
        body = message.body
        try:
            text = self.config.template.format_map(body)
        except KeyError as exc:
            raise FatalError(
                f"the template needs field {exc} that this message does not have; fields: "
                f"{', '.join(sorted(body)) or '(none)'}"
            ) from None
        return {**body, self.config.field: text.upper() if self.config.upper else text}
