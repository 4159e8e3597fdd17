"""Components that break the one-result-per-input rule (registered on import), for the delivery
tests of both runtimes."""

from __future__ import annotations

from flownb.components.base import Action
from flownb.registry import register


@register("deliverytest.short")
class Short(Action):
    """Returns one result fewer than it was given (the last input has none)."""

    def process_batch(self, messages, ctx):
        return [m.body for m in messages][:-1]


@register("deliverytest.long")
class Long(Action):
    """Returns one result more than it was given."""

    def process_batch(self, messages, ctx):
        return [m.body for m in messages] + [{"extra": True}]


@register("deliverytest.raises")
class Raises(Action):
    """process_batch itself raises (not per message)."""

    def process_batch(self, messages, ctx):
        raise ValueError("the whole batch failed")
