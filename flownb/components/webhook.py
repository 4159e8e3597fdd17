"""The ``webhook`` trigger: each request to ``/hooks/<flow>/<token>`` becomes the first message of a run.

The component only declares and checks the configuration; requests are served by
:mod:`flownb.webhook` (``flownb run SPEC --port P`` locally, ``flownb worker SPEC --step <trigger>
--port P`` on RabbitMQ, and the Jupyter server extension for a flow registered by a kernel), all
through one request pipeline (:mod:`flownb.webhook.pipeline`) that applies this config. See
docs/webhook.md for the URL, the signing scheme and the status codes.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .._duration import Duration
from .._size import Size, parse_size  # noqa: F401  (parse_size is re-exported here)
from .base import WebhookTrigger

if TYPE_CHECKING:
    from ..flow import Step

__all__ = ["Webhook", "WebhookConfig", "parse_size", "DEFAULT_SIGNATURE_HEADER"]

DEFAULT_SIGNATURE_HEADER = "X-Flownb-Signature"


class WebhookConfig(BaseModel):
    """Configuration of a webhook trigger. Secrets are named by environment variable, never inlined."""

    model_config = ConfigDict(extra="forbid")
    token_env: str = Field(description="environment variable holding the URL token "
                                       "(/hooks/<flow>/<token>); at least 16 characters")
    hmac_secret_env: str | None = Field(None, description="environment variable holding the HMAC-SHA256 "
                                                          "secret; when set, every request must be signed")
    signature_header: str = Field(DEFAULT_SIGNATURE_HEADER,
                                  description="header carrying 't=<unix>,v1=<hex>'")
    tolerance: Duration = Field(300.0, description="how far the signed timestamp may be from now "
                                                   "(replay window), e.g. 5m")
    max_body: Size = Field(1024 * 1024, description="largest accepted request: the body plus the request headers "
                                                    "copied into its _headers, e.g. 1MiB (413 above)")
    max_depth: int = Field(64, ge=1, le=200, description="deepest accepted JSON nesting (400 above)")
    reply: Literal["async", "sync"] = Field("async", description="async: 202 {id} once queued; "
                                                                 "sync: 200 with the last step's output")
    timeout: Duration = Field(30.0, description="sync mode: how long to wait for the output (504 after)")
    retry_after: Duration = Field(1.0, description="Retry-After sent with 429 and 503")

    @model_validator(mode="after")
    def _check(self) -> WebhookConfig:
        for name in ("token_env", "hmac_secret_env"):
            value = getattr(self, name)
            if value is not None and not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", value):
                raise ValueError(f"{name} names an environment variable (letters, digits, _), got {value!r}; "
                                 f"put the secret itself in the environment, not in the spec")
        if not re.match(r"^[A-Za-z0-9-]+$", self.signature_header):
            raise ValueError(f"signature_header {self.signature_header!r} is not a valid header name")
        if self.timeout <= 0:
            raise ValueError("timeout must be greater than 0, e.g. '30s'")
        return self


class Webhook(WebhookTrigger[WebhookConfig]):
    """Receive HTTP POSTs at /hooks/<flow>/<token> (JSON, form or text); optional HMAC signature."""

    Config: ClassVar[type[BaseModel]] = WebhookConfig

    @classmethod
    def check_config(cls, config: BaseModel, step: Step) -> None:
        """Nothing beyond the model: the token and secret are read from the environment at serve time."""
