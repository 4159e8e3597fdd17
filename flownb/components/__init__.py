"""Component base classes and built-in components (one module per family)."""

from .base import Action, Component, Context, PollingTrigger, WebhookTrigger, action, classify, polling_trigger

__all__ = ["Action", "Component", "Context", "PollingTrigger", "WebhookTrigger", "action",
           "polling_trigger", "classify"]
