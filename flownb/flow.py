"""Flow and Step: the pure model of a flow, and its YAML spec (load / save / validate).

A flow is a name, exactly one trigger and an ordered list of actions. ``load(save(flow)) == flow``.
Models are immutable: methods that change a flow return a new one (``with_parameters``, ``then``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from . import _yaml
from ._duration import Duration
from ._size import Size
from .errors import ParameterError, SpecError, did_you_mean
from .params import Param, coerce

__all__ = ["Flow", "Step", "RetryPolicy", "OnError", "RecordPolicy", "RouteSpec", "Branch", "load", "save", "step",
           "SPEC_VERSION"]

SPEC_VERSION = 1
DEFAULT_MAX_MESSAGE_BYTES = 8 * 1024 * 1024
#: the RabbitMQ queue topologies a spec may name (``topology:``); runtime/amqp/topology.py reads it
TOPOLOGIES = ("classic", "quorum")
SLUG = r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$"
_TEMPLATE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


class RetryPolicy(BaseModel):
    """Exponential back-off: attempt n waits ``min(max, initial * multiplier**(n-1))``."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    max_attempts: int = Field(5, ge=1)
    initial: Duration = 1.0
    max: Duration = 300.0
    multiplier: float = Field(2.0, ge=1.0)

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        return min(self.max, self.initial * self.multiplier ** max(attempt - 1, 0))


DEFAULT_RETRY = RetryPolicy()
_FIELD_PATH = re.compile(r"^[^.\s]+(\.[^.\s]+)*$")


class RecordPolicy(BaseModel):
    """The flight recorder (``record:`` in the spec; docs/debugging.md): the share of trace ids
    recorded (``sample``, decided per trace id, the same on every step and runtime), how long a
    recorded path is kept (``keep``) and the body fields replaced before anything is stored
    (``redact``: dotted paths such as ``customer.email``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    sample: float = Field(ge=0.0, le=1.0)
    keep: Duration = 7 * 86400.0
    redact: list[str] = Field(default_factory=list)

    @field_validator("keep")
    @classmethod
    def _keep_positive(cls, v: float) -> float:
        if v <= 0:
            raise ValueError("keep must be longer than 0 (e.g. '7d', '12h')")
        return v

    @field_validator("redact")
    @classmethod
    def _paths(cls, v: list[str]) -> list[str]:
        for path in v:
            if not isinstance(path, str) or not _FIELD_PATH.match(path):
                raise ValueError(f"redact entry {path!r} is not a field path; write a field name or a dotted "
                                 f"path such as 'customer.email' (no spaces, no empty parts)")
        return v


#: the component key of a route step (``route:`` instead of ``component:``/``config:`` in the spec)
ROUTE = "route"
#: the branch name of a route step's ``default`` steps (in counts, flow.test and the diagram)
DEFAULT_BRANCH = "default"


class Step(BaseModel):
    """One step: a trigger or an action, its component key and its config; or a route step
    (``route:``, :class:`RouteSpec`): named branches of steps, each taken when its condition holds."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str = Field(pattern=SLUG, max_length=63)
    component: str = Field(min_length=1)
    config: dict[str, Any] = Field(default_factory=dict)
    retry: RetryPolicy | None = None
    replicas: int = Field(1, ge=1)
    prefetch: int | None = Field(None, ge=1)
    #: a route step: its branches (the component is then ``route`` and the config empty)
    route: RouteSpec | None = None

    @model_validator(mode="before")
    @classmethod
    def _route_component(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("route") is not None and "component" not in data:
            return {**data, "component": ROUTE}
        return data

    @model_validator(mode="after")
    def _route_shape(self) -> Step:
        if self.route is not None:
            if self.component != ROUTE:
                raise ValueError(f"step '{self.name}' has 'route:' and component '{self.component}'; a route "
                                 f"step has no component: remove 'component:' (or the 'route:')")
            if self.config:
                raise ValueError(f"route step '{self.name}' has a 'config:'; a route step is configured by its "
                                 f"'route:' (mode, branches, default) only: remove 'config:'")
        elif self.component == ROUTE:
            raise ValueError(f"step '{self.name}' is a route step without 'route:'; write route: {{mode: first, "
                             f"branches: [{{name: ..., when: ..., steps: [...]}}], default: [...]}}")
        return self

    @property
    def retry_policy(self) -> RetryPolicy:
        return self.retry or DEFAULT_RETRY

    def spec(self) -> dict:
        """The step as it appears in flow.yaml (defaults left out)."""
        d = self.model_dump(mode="json", exclude_defaults=True)
        if self.route is not None:
            d.pop("component", None)
            d["route"] = self.route.spec()
        return d


class Branch(BaseModel):
    """One branch of a route step: taken when ``when`` (JSONata, truthy as in ``filter``) holds for
    the message; its ``steps`` run on it (none: it goes straight on to the step after the route)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str = Field(pattern=SLUG, max_length=63)
    when: str = Field(min_length=1)
    steps: list[Step] = Field(default_factory=list)

    @model_validator(mode="after")
    def _flat(self) -> Branch:
        if self.name == DEFAULT_BRANCH:
            raise ValueError("a branch cannot be named 'default'; put the steps for unmatched messages under "
                             "the route's 'default:' instead")
        _no_nested(self.steps, f"branch '{self.name}'")
        return self


def _no_nested(steps: list[Step], where: str) -> None:
    for s in steps:
        if s.route is not None:
            raise ValueError(f"step '{s.name}' in {where} is a route step; routes cannot be nested yet: move the "
                             f"inner route after the outer one (its branches rejoin there) or merge the conditions")


class RouteSpec(BaseModel):
    """A route step's branches: ``mode: first`` sends a message down the first branch whose ``when``
    holds, ``mode: all`` down every such branch (one copy each, with its own id); ``default`` (steps,
    possibly none) takes the messages no branch matched, which are otherwise filtered (and counted).
    The outputs of every branch go on to the step after the route step (they rejoin)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    mode: Literal["first", "all"] = "first"
    branches: list[Branch] = Field(min_length=1)
    default: list[Step] | None = None
    timeout: Duration = Field(10.0, gt=0)

    @model_validator(mode="after")
    def _names(self) -> RouteSpec:
        seen: set[str] = set()
        for b in self.branches:
            if b.name in seen:
                raise ValueError(f"branch name '{b.name}' is used twice in this route; name each branch once")
            seen.add(b.name)
        _no_nested(self.default or [], "the default branch")
        return self

    def chains(self) -> list[tuple[str, list[Step]]]:
        """(branch name, its steps) in order, the default last when set."""
        out = [(b.name, list(b.steps)) for b in self.branches]
        if self.default is not None:
            out.append((DEFAULT_BRANCH, list(self.default)))
        return out

    def preview(self, sample: Any, *, step: str = "route", limit: int | None = None):
        """Which branch each row of ``sample`` takes, as ``Mapping.preview`` shows a mapping: a
        DataFrame of the rows with ``_branch`` and ``_error`` (flownb.components.route.preview)."""
        from .components.route import preview
        return preview(self, sample, step, limit)

    def component_config(self) -> dict[str, Any]:
        """The config of the ``route`` component that evaluates the conditions."""
        return {"mode": self.mode, "branches": [{"name": b.name, "when": b.when} for b in self.branches],
                "default": self.default is not None, "timeout": self.timeout}

    def spec(self) -> dict:
        d = self.model_dump(mode="json", exclude_defaults=True)
        d["branches"] = []
        for b in self.branches:
            bd: dict[str, Any] = {"name": b.name, "when": b.when}
            if b.steps:
                bd["steps"] = [s.spec() for s in b.steps]
            d["branches"].append(bd)
        if self.default is not None:
            d["default"] = [s.spec() for s in self.default]
        return d


Step.model_rebuild()


def step(name: str, component: str, *, retry: RetryPolicy | dict | None = None, replicas: int = 1,
         prefetch: int | None = None, **config: Any) -> Step:
    """Shortcut: ``step("push", "http.request", method="POST", url="…")``."""
    return Step(name=name, component=component, config=config, retry=retry, replicas=replicas,
                prefetch=prefetch)


class OnError(BaseModel):
    """The flow's error flow: actions that receive its failures (dead letters, ``setup()`` failures,
    failed polls), batched: at most one delivery per ``every``, listing at most ``batch`` events (the
    rest are counted). In YAML, ``on_error:`` is this mapping or just the list of steps."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    steps: list[Step] = Field(min_length=1)
    batch: int = Field(50, ge=1, le=10_000)
    every: Duration = 60.0

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"steps": data} if isinstance(data, list) else data

    def spec(self) -> dict:
        d = self.model_dump(mode="json", exclude_defaults=True)
        d["steps"] = [s.spec() for s in self.steps]
        return d


class Flow(BaseModel):
    """A flow: one trigger, then ordered actions. Validate with :meth:`validate_components`."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)
    flownb: Literal[1] = 1
    name: str = Field(pattern=SLUG, max_length=50)
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=dict)
    requirements: list[str] = Field(default_factory=list)
    trigger: Step
    steps: list[Step] = Field(default_factory=list)
    #: the largest message a step or the trigger may emit (both runtimes, checked before publishing;
    #: keep it under the broker's own limit — RabbitMQ's max_message_size, 128 MiB by default)
    max_message_bytes: Size = DEFAULT_MAX_MESSAGE_BYTES
    #: actions that receive the flow's failures (docs/errors.md)
    on_error: OnError | None = None
    #: groups of consecutive action steps that run in ONE worker (container) on RabbitMQ, as one
    #: fused stage: ``fuse: [a, b]`` (one group) or ``fuse: [[a, b], [d, e]]``. The embedded runtime
    #: fuses by itself (docs/local.md); on RabbitMQ the default stays one worker per step
    fuse: list[list[str]] = Field(default_factory=list)

    @field_validator("fuse", mode="before")
    @classmethod
    def _fuse_groups(cls, v: Any) -> Any:
        if isinstance(v, list) and v and all(isinstance(x, str) for x in v):
            return [v]  # fuse: [a, b] is one group
        return v
    #: the flight recorder (opt-in): see :class:`RecordPolicy`
    record: RecordPolicy | None = None
    #: the RabbitMQ queue topology of the flow (docs/rabbitmq.md): ``classic`` (one broker node) or
    #: ``quorum`` (queues replicated across a cluster's nodes). Not set: ``FLOWNB_QUEUE_TYPE`` decides
    #: (default classic); ``flownb export`` writes ``quorum`` into a spec that leaves it unset
    topology: Literal["classic", "quorum"] | None = None

    @field_validator("topology", mode="before")
    @classmethod
    def _topology(cls, v: Any) -> Any:
        if v is not None and v not in TOPOLOGIES:
            raise ValueError(f"topology {v!r} is not a queue topology; write 'classic' (queues on one broker "
                             f"node) or 'quorum' (queues replicated across a RabbitMQ cluster), or leave it out")
        return v
    #: the folder of the spec file this flow was loaded from (not part of the spec): relative file
    #: paths in its steps' configs are read from there (:meth:`resolved`, docs/local.md)
    _spec_dir: Path | None = PrivateAttr(None)
    #: set on a :meth:`resolved` copy: the hash of the flow it was resolved from
    _hash: str | None = PrivateAttr(None)

    def __eq__(self, other: object) -> bool:
        """Equal specs are equal flows, wherever their files lie (the spec folder is not compared)."""
        if not isinstance(other, Flow):
            return NotImplemented
        return self.__dict__ == other.__dict__

    @property
    def spec_dir(self) -> Path | None:
        """The folder of the spec file this flow was loaded from; None for a flow built in code or
        loaded from YAML text (relative paths are then read from the current directory)."""
        return self._spec_dir

    def located(self, folder: str | Path | None) -> Flow:
        """A copy whose relative file paths are read from ``folder`` (as if its spec were saved there)."""
        copy = self.model_copy()
        copy._spec_dir = None if folder is None else Path(folder).resolve()
        return copy

    @field_validator("parameters")
    @classmethod
    def _param_names(cls, v: dict) -> dict:
        for name in v:
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
                raise ValueError(f"parameter name {name!r} must be an identifier (letters, digits, _)")
        return v

    @model_validator(mode="after")
    def _unique_names(self) -> Flow:
        seen: set[str] = set()
        for s in [*self.all_steps, *self.error_steps]:
            if s.name in seen:
                raise ValueError(f"step name '{s.name}' is used twice; step names must be unique across the "
                                 f"flow (the steps of route branches included: each runs as its own step)")
            seen.add(s.name)
        if self.trigger.route is not None:
            raise ValueError(f"the trigger '{self.trigger.name}' is a route step; a flow starts with a trigger: "
                             f"put the route step among the steps")
        _no_nested(self.error_steps, "on_error")
        self._check_fuse()
        return self

    def _check_fuse(self) -> None:
        names = [s.name for s in self.actions]
        links = self.links()
        used: set[str] = set()
        for group in self.fuse:
            if len(group) < 2:
                raise ValueError(f"fuse: {group} names {len(group)} step; a fused group runs two or more "
                                 f"consecutive action steps in one worker, e.g. fuse: [shape, keep]")
            for n in group:
                if n == self.trigger.name:
                    raise ValueError(f"fuse: '{n}' is the trigger; only action steps can be fused")
                if n not in names:
                    raise ValueError(f"fuse: no action step '{n}'{did_you_mean(n, names)} steps: "
                                     f"{', '.join(names)}")
                if n in used:
                    raise ValueError(f"fuse: step '{n}' is in two groups; each step runs in one worker")
                used.add(n)
            at = [names.index(n) for n in group]
            if at != list(range(at[0], at[0] + len(group))):
                order = ", ".join(names[min(at):max(at) + 1])
                raise ValueError(f"fuse: {group} are not consecutive steps in flow order; list them as "
                                 f"they follow each other (steps here: {order})")
            for a, b in zip(group, group[1:], strict=False):
                if self.step(a).route is not None or links[a] != b:
                    raise ValueError(f"fuse: '{a}' does not pass its messages to '{b}' alone (a route step, or "
                                     f"the end of a branch); a fused group follows one line of steps: a route "
                                     f"step can only end a group, and a group stays within one branch")

    def fused_group(self, name: str) -> list[str]:
        """The ``fuse`` group step ``name`` belongs to (``[name]`` when it is not fused)."""
        return next((list(g) for g in self.fuse if name in g), [name])

    # -- navigation ---------------------------------------------------------------------------
    @property
    def all_steps(self) -> list[Step]:
        """The trigger and every action step (:attr:`actions`)."""
        return [self.trigger, *self.actions]

    @property
    def actions(self) -> list[Step]:
        """Every action step that runs, each with its own queue: the steps in order, a route step
        followed by the steps of its branches (branch by branch, the default last)."""
        out: list[Step] = []
        for s in self.steps:
            out.append(s)
            if s.route is not None:
                for _b, chain in s.route.chains():
                    out.extend(chain)
        return out

    def links(self) -> dict[str, str | None]:
        """Where each step's outputs go: the next step of its line (a branch's last step: the step
        after its route step, where the branches rejoin; None at the end of the flow). A route
        step's entry is that rejoin step too; its outputs go where :meth:`branch_targets` says."""
        top = self.steps
        out: dict[str, str | None] = {self.trigger.name: top[0].name if top else None}
        for i, s in enumerate(top):
            after = top[i + 1].name if i + 1 < len(top) else None
            out[s.name] = after
            if s.route is not None:
                for _b, chain in s.route.chains():
                    for j, b in enumerate(chain):
                        out[b.name] = chain[j + 1].name if j + 1 < len(chain) else after
        return out

    def branch_targets(self, name: str) -> dict[str, str | None]:
        """Route step ``name``: branch name → the step a message taking it goes to (the branch's
        first step; an empty branch: the step after the route; None: the end of the flow)."""
        s = self.step(name)
        if s.route is None:
            raise SpecError(f"step '{name}' is not a route step", step=name)
        after = self.links()[name]
        return {b: (chain[0].name if chain else after) for b, chain in s.route.chains()}

    def branch_of(self, name: str) -> tuple[str, str] | None:
        """(route step, branch name) of a step inside a route branch; None for a step on the main line."""
        for s in self.steps:
            if s.route is not None:
                for b, chain in s.route.chains():
                    if any(c.name == name for c in chain):
                        return s.name, b
        return None

    @property
    def error_steps(self) -> list[Step]:
        """The ``on_error`` actions (not part of the flow's line of steps)."""
        return list(self.on_error.steps) if self.on_error is not None else []

    def step(self, name: str) -> Step:
        for s in self.all_steps:
            if s.name == name:
                return s
        names = [s.name for s in self.all_steps]
        raise SpecError(f"flow '{self.name}' has no step '{name}'{did_you_mean(name, names)} "
                        f"steps: {', '.join(names)}")

    def next_step(self, name: str) -> Step | None:
        """The step that receives the outputs of ``name`` (None after the last; :meth:`links`: a
        branch's last step is followed by the step after its route step)."""
        nxt = self.links()[self.step(name).name]
        return self.step(nxt) if nxt is not None else None

    # -- value-object edits (copies) ----------------------------------------------------------
    def then(self, *steps: Step) -> Flow:
        return self.model_copy(update={"steps": [*self.steps, *steps]}).revalidated()

    def revalidated(self) -> Flow:
        return Flow.model_validate(self.model_dump(mode="python")).located(self._spec_dir)

    def with_parameters(self, overrides: dict[str, Any] | None = None, **kw: Any) -> Flow:
        """A copy with parameter values overridden; unknown names are a ParameterError."""
        merged = dict(self.parameters)
        for name, value in {**(overrides or {}), **kw}.items():
            if name not in self.parameters:
                known = ", ".join(sorted(self.parameters)) or "(none: add a 'parameters:' section)"
                raise ParameterError(f"unknown parameter '{name}'{did_you_mean(name, self.parameters)} "
                                     f"known parameters: {known}", field=name)
            merged[name] = coerce(value, Param.of(name, self.parameters[name]))
        out = self.model_copy(update={"parameters": merged})
        out._hash = None  # other values: another spec
        return out

    def resolved(self, *, paths: bool = True) -> Flow:
        """A copy whose config strings have their ``{{ name }}`` templates filled from parameters and,
        for a flow loaded from a spec file (``paths=True``), whose relative file paths (the config
        fields a component names in ``local_paths``: csv.poll/csv.write ``path``, a ``sqlite:///``
        ``url``) are made absolute against the spec's folder — what every runtime runs.
        ``paths=False`` keeps them as written (an export, whose spec lands elsewhere)."""
        out = self._filled(paths)
        out._hash = self.spec_hash()  # the hash of the spec as written: the same wherever its file lies
        return out

    def _filled(self, paths: bool) -> Flow:
        data = self.model_dump(mode="python")
        branch_steps = [b for s in data["steps"] if s.get("route") for b in _route_steps(s["route"])]
        for s in data["steps"]:  # a route's conditions take {{ parameter }} templates too
            for b in (s.get("route") or {}).get("branches") or []:
                b["when"] = fill_templates(b["when"], self.parameters, s["name"])
        for s in (data["trigger"], *data["steps"], *branch_steps,
                  *((data.get("on_error") or {}).get("steps") or [])):
            s["config"] = fill_templates(s["config"], self.parameters, s["name"])
            if paths and self._spec_dir is not None:
                s["config"] = anchor_paths(s["component"], s["config"], self._spec_dir)
        return Flow.model_validate(data).located(self._spec_dir)

    # -- spec ---------------------------------------------------------------------------------
    def spec(self) -> dict:
        d = self.model_dump(mode="json", exclude_defaults=True)
        d = {"flownb": SPEC_VERSION, **d}
        d["trigger"] = self.trigger.spec()
        d["steps"] = [s.spec() for s in self.steps]
        if self.on_error is not None:
            d["on_error"] = self.on_error.spec()
        return d

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.spec(), sort_keys=False, allow_unicode=True, width=100)

    def spec_hash(self, short: bool = False) -> str:
        """A short hash of the spec (its canonical JSON, ``{{ parameter }}`` templates filled; 16 hex
        digits): equal for equal flows, whatever the YAML's layout, and the same for a flow and its
        :meth:`resolved` copy (what the runtimes run); deployments carry it so a changed spec rolls the
        workers. ``short``: its first 8 digits, which every message carries (``meta.spec``: the spec
        that produced it) — as a short git hash names a commit, at 18 bytes a message."""
        import hashlib
        import json
        full = self._hash
        if full is None:
            try:
                spec = self._filled(paths=False).spec()  # relative paths as written: not where the file lies
            except ParameterError:  # a template naming no parameter: validation reports it; hash as written
                spec = self.spec()
            full = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]
        return full[:8] if short else full

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(self.to_yaml(), encoding="utf-8")
        return path

    def validate_components(self) -> dict[str, BaseModel]:
        """Check every step against its installed component; return the parsed config models."""
        from .registry import validate_flow
        return validate_flow(self)

    # -- running and display (lazy imports keep the model free of runtimes) -------------------
    def test(self, sample: Any = None, **kw: Any):
        """Run the flow in memory on ``sample`` (DataFrame, list of dicts or one dict; rows become
        message bodies as in ``Mapping.preview``: docs/records.md); see runtime.local."""
        from .runtime.local import test_flow
        return test_flow(self, sample, **kw)

    def retest(self, dead_df: Any, from_step: str | None = None, until: str | None = None, *,
               live: bool = False):
        """Run this (fixed) flow in memory on dead letters (``flownb.dead_letters``), each from the
        step where it died, dry like ``flow.test`` unless ``live``; a before/after DataFrame (see
        flownb.workbench.retest)."""
        from .workbench import retest
        return retest(self, dead_df, from_step=from_step, until=until, live=live)

    def preview_poll(self, state: dict | None = None, **where: Any):
        """What the next poll would emit, as a DataFrame, committing nothing (``state_dir=`` or
        ``broker=``: from the saved cursor); see flownb.cursor.preview_poll."""
        from .cursor import preview_poll
        return preview_poll(self, state, **where)

    def sample(self, n: int = 100, state: dict | None = None, *, frame: bool = True):
        """Up to ``n`` records as the trigger reads them in production (its own poll on a scratch
        cursor: nothing moves), a DataFrame whose records are exactly those bodies (null as
        ``flownb.records.NULL``); ``frame=False``: the list of bodies. See flownb.cursor.sample."""
        from .cursor import sample
        return sample(self, n, state, frame=frame)

    def preview(self, step: str, sample: Any, limit: int | None = None, **kw: Any):
        """``Mapping.preview`` of the mapping step ``step`` in this flow's context (its
        ``max_message_bytes``; the warning about raw pandas samples): see flownb.rules.Mapping."""
        from .rules.mapping import Mapping
        s = self.resolved(paths=False).step(step)
        if s.component != "mapping":
            raise SpecError(f"step '{step}' is a '{s.component}' step; flow.preview shows a mapping step "
                            f"(a route step: flow.step('{step}').route.preview(sample); the whole flow: "
                            f"flow.test(sample))")
        m = Mapping(fields=s.config.get("fields"), expression=s.config.get("expression"))
        return m.preview(sample, limit, flow=self, step=step, **kw)

    def _repr_mimebundle_(self, include=None, exclude=None):
        from .display import flow_mimebundle
        return flow_mimebundle(self)


def _route_steps(route: dict) -> list[dict]:
    """The step dicts of a dumped route's branches and default."""
    return [*(s for b in route["branches"] for s in b["steps"]), *(route.get("default") or [])]


def fill_templates(value: Any, params: dict[str, Any], step_name: str) -> Any:
    if isinstance(value, str):
        whole = _TEMPLATE.fullmatch(value.strip())
        if whole:
            return _param(whole.group(1), params, step_name)
        return _TEMPLATE.sub(lambda m: str(_param(m.group(1), params, step_name)), value)
    if isinstance(value, dict):
        return {k: fill_templates(v, params, step_name) for k, v in value.items()}
    if isinstance(value, list):
        return [fill_templates(v, params, step_name) for v in value]
    return value


def anchor_path(value: str, folder: Path) -> str:
    """``value`` made absolute against ``folder`` when it is a relative file path or glob, or a
    ``sqlite:///relative.db`` URL; anything else (absolute, ``~``, ``:memory:``, another URL, a
    ``{{ template }}``) is returned unchanged."""
    if not value or "{{" in value or value.startswith("~"):
        return value
    if value.startswith("sqlite:///"):
        rest = value[len("sqlite:///"):]
        if not rest or rest.startswith(("/", ":memory:")) or rest.split("?", 1)[0] == "":
            return value
        return "sqlite:///" + str(folder / rest)
    if "://" in value or Path(value).is_absolute():
        return value
    return str(folder / value)


def anchor_paths(component: str, config: dict[str, Any], folder: Path) -> dict[str, Any]:
    """``config`` with the fields its component lists in ``local_paths`` anchored (:func:`anchor_path`);
    an unknown component is left alone (validation names it)."""
    from .errors import FlownbError
    from .registry import get

    try:
        fields = getattr(get(component), "local_paths", ())
    except FlownbError:
        return config
    out = dict(config)
    for name in fields:
        if isinstance(out.get(name), str):
            out[name] = anchor_path(out[name], folder)
    return out


def _param(name: str, params: dict[str, Any], step_name: str) -> Any:
    if name not in params:
        known = ", ".join(sorted(params)) or "(none)"
        raise ParameterError(f"'{{{{ {name} }}}}' names an unknown parameter{did_you_mean(name, params)} "
                             f"known parameters: {known}; add it under 'parameters:'", step=step_name)
    return params[name]


# -- module-level spec functions -------------------------------------------------------------

def _loc(err: Any) -> str:  # a pydantic ErrorDetails
    return ".".join(str(p) for p in err["loc"])


def from_spec(data: Any, *, source: str = "spec") -> Flow:
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a flow spec is a YAML mapping with 'name', 'trigger' and 'steps'")
    version = data.get("flownb", SPEC_VERSION)
    if version != SPEC_VERSION:
        raise SpecError(f"{source}: spec format version {version!r} is not supported; this flownb reads "
                        f"version {SPEC_VERSION}", field="flownb")
    try:
        return Flow.model_validate(data)
    except ValidationError as exc:
        err = next((e for e in exc.errors() if e["type"] == "extra_forbidden"), exc.errors()[0])  # a typo first
        loc = list(err["loc"])
        step_name = None
        if loc and loc[0] == "trigger":
            step_name = (data.get("trigger") or {}).get("name") if isinstance(data.get("trigger"), dict) else None
        elif len(loc) > 1 and loc[0] == "steps" and isinstance(loc[1], int):
            try:
                step_name = data["steps"][loc[1]].get("name")
            except (KeyError, IndexError, AttributeError, TypeError):
                step_name = None
        msg = err["msg"].removeprefix("Value error, ")  # our validators' messages are full sentences
        if err["type"] == "extra_forbidden":
            allowed = _allowed_fields(loc)
            msg = f"unknown field{did_you_mean(str(loc[-1]), allowed)} allowed: {', '.join(allowed)}"
        elif err["type"] == "missing":
            msg = "this field is required"
        raise SpecError(f"{source}: {msg}", step=step_name, field=_loc(err)) from None


def _allowed_fields(loc: list) -> list[str]:
    model: type[BaseModel] = Flow
    if loc and loc[0] == "trigger":
        model = Step
    elif loc and loc[0] == "steps":
        model = Step
        for i, part in enumerate(loc[:-1]):  # inside a route step: the route, a branch, a branch's step
            if part == "route":
                model = RouteSpec
            elif part == "branches" and model is RouteSpec:
                model = Branch
            elif part in ("steps", "default") and i > 0:
                model = Step
    if len(loc) >= 2 and loc[-2] == "retry":
        model = RetryPolicy
    if len(loc) == 2 and loc[0] == "record":
        model = RecordPolicy
    return list(model.model_fields)


def load(source: str | Path) -> Flow:
    """Load a flow from a path to flow.yaml or from YAML text (bounded: see :mod:`flownb._yaml`)."""
    text, name = _read(source)
    flow = from_spec(_yaml.load(text, source=name), source=name)
    if name != "spec":  # read from a file: its relative paths are read from the file's folder
        flow = flow.located(Path(name).parent)
    return flow


def _read(source: str | Path) -> tuple[str, str]:
    if isinstance(source, Path) or ("\n" not in str(source) and str(source).endswith((".yaml", ".yml"))):
        path = Path(source)
        if not path.exists():
            raise SpecError(f"spec file '{path}' does not exist; pass the path to a flow.yaml")
        if path.is_dir():
            raise SpecError(f"'{path}' is a directory; pass the path to a flow.yaml file in it")
        try:
            size = path.stat().st_size
            if size > _yaml.MAX_SPEC_BYTES:
                raise SpecError(f"spec file '{path}' is {size:,} bytes, over the limit of "
                                f"{_yaml.MAX_SPEC_BYTES:,} bytes; is this the right file?")
            raw = path.read_bytes()
        except OSError as exc:
            raise SpecError(f"cannot read spec file '{path}': {exc.strerror or exc}") from None
        return _decode(raw, path), str(path)
    return str(source), "spec"


def _decode(raw: bytes, path: Path) -> str:
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")) or (len(raw) > 1 and b"\x00" in raw[:64]):
        raise SpecError(f"spec file '{path}' is UTF-16 (or another wide encoding); flownb reads UTF-8 "
                        f"specs: save it as UTF-8 (e.g. iconv -f UTF-16 -t UTF-8)")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise SpecError(f"spec file '{path}' is not UTF-8: byte 0x{raw[exc.start]:02x} at line {line} "
                        f"(offset {exc.start}); flownb reads UTF-8 specs: save it as UTF-8 (e.g. iconv -f "
                        f"LATIN1 -t UTF-8)") from None


def save(flow: Flow, path: str | Path | None = None) -> str:
    """Return the YAML text of ``flow``; also write it to ``path`` when given."""
    text = flow.to_yaml()
    if path is not None:
        Path(path).write_text(text, encoding="utf-8")
    return text
