"""``route``: the component of a route step (``route:`` in the spec, :class:`flownb.flow.RouteSpec`).

It evaluates each branch's ``when`` (JSONata, truthy as in ``filter``, the same compiled code) on a
message and answers with the branches it takes (:class:`Routed`): ``mode: first`` the first that
holds, ``mode: all`` every one; none that holds gives the ``default`` branch when the route has one,
else nothing (the message is filtered, and counted as unmatched). The runtime core
(:class:`flownb.runtime.core.StepRunner`) turns that answer into one output per branch, each sent
to that branch's first step. An evaluation error or timeout dead-letters the message, as in a filter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .._duration import Duration
from ..errors import EvaluationTimeout
from ..flow import DEFAULT_BRANCH
from ..rules import _deadline
from ..rules._runtime import boolean
from ..rules.mapping import DEFAULT_TIMEOUT
from .base import Action, Context
from .mapping import compile_expression, guarded

if TYPE_CHECKING:
    from ..flow import RouteSpec

#: ``_branch`` of a row no branch matched (filtered), in flow.test and the preview
UNMATCHED = "(unmatched)"

__all__ = ["RouteAction", "RouteConfig", "Routed", "preview", "UNMATCHED"]


class RouteBranchConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    when: str


class RouteConfig(BaseModel):
    """Built from the step's ``route:`` (``RouteSpec.component_config``), never written as ``config:``."""

    model_config = ConfigDict(extra="forbid")
    branches: list[RouteBranchConfig] = Field(description="name and JSONata condition (`when`) of each "
                                              "branch, in order")
    mode: Literal["first", "all"] = Field("first", description="`first`: the first branch whose condition "
                                          "holds; `all`: every one (a copy each)")
    default: bool = Field(False, description="the route has a `default:` branch for unmatched messages "
                          "(else they are filtered and counted)")
    timeout: Duration = Field(DEFAULT_TIMEOUT, gt=0, description="longest evaluation of one message's "
                              "conditions (e.g. 10s, 500ms); past it the message is dead-lettered")


@dataclass(frozen=True)
class Routed:
    """The branches one message takes (empty: unmatched and filtered)."""

    branches: tuple[str, ...]


class RouteAction(Action[RouteConfig]):
    """Send each message down the branch(es) whose condition holds."""

    Config = RouteConfig
    json_native = True

    @classmethod
    def check_config(cls, config: RouteConfig, step) -> None:
        for i, b in enumerate(config.branches):
            compile_expression(b.when, step, f"route.branches.{i}.when")

    def setup(self) -> None:
        self._conds = [(b.name, compile_expression(b.when, None, f"route.branches.{i}.when").raw)
                       for i, b in enumerate(self.config.branches)]
        self._first = self.config.mode == "first"
        self._default: tuple[str, ...] = (DEFAULT_BRANCH,) if self.config.default else ()

    def choose(self, body: dict) -> Routed:
        taken: list[str] = []
        for name, cond in self._conds:
            if boolean(cond(body)):
                taken.append(name)
                if self._first:
                    break
        return Routed(tuple(taken) if taken else self._default)

    def process(self, message, ctx):
        return guarded(self, self.choose, message.body)

    def process_batch(self, messages, ctx):
        choose = self.choose
        return _deadline.each(self.config.timeout, lambda m: choose(m.body), messages, self._timed_out)

    def _timed_out(self) -> EvaluationTimeout:
        return EvaluationTimeout(self.config.timeout, step=self.ctx.step, field="route",
                                 expression="; ".join(b.when for b in self.config.branches))


def preview(route: RouteSpec, sample: Any, step: str = "route", limit: int | None = None):
    """``Mapping.preview`` for a route: one row per input row (a DataFrame keeps its index), the
    row's fields, ``_branch`` (the branch or branches it takes, ``"(unmatched)"`` when none: filtered)
    and ``_error`` (None when fine; else the error a run dead-letters it with). The very code a
    route step runs (:meth:`RouteAction.choose`, under the route's ``timeout``)."""
    import pandas as pd

    from ..message import Message
    from ..records import is_frame, to_records
    index = None
    if is_frame(sample):
        sample = sample if limit is None else sample.iloc[:limit]
        index = sample.index
    records = to_records(sample, limit)
    config = RouteConfig.model_validate(route.component_config())
    action = RouteAction(config, Context(flow="preview", step=step, config=config))
    action.setup()
    branches: list[str | None] = []
    errors: list[str | None] = []
    for body in records:
        try:
            taken = action.process(Message(body=body), action.ctx).branches
            branches.append(", ".join(taken) or UNMATCHED)
            errors.append(None)
        except Exception as exc:  # FlownbError: the message a run dead-letters the row with
            branches.append(None)
            errors.append(str(exc))
    frame = pd.DataFrame.from_records(records, index=index) if records else pd.DataFrame(index=index)
    frame["_branch"] = pd.Series(branches, index=frame.index, dtype=object)
    frame["_error"] = pd.Series(errors, index=frame.index, dtype=object)
    return frame
