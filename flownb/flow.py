"""Flow and Step: the pure model of a flow, and its YAML spec (load / save / validate).

A flow is a name, exactly one trigger and an ordered list of actions. ``load(save(flow)) == flow``.
Models are immutable: methods that change a flow return a new one (``with_parameters``, ``then``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from . import _yaml
from ._duration import Duration
from ._size import Size
from .errors import ParameterError, SpecError, did_you_mean
from .params import Param, coerce

__all__ = ["Flow", "Step", "RetryPolicy", "load", "save", "step", "SPEC_VERSION"]

SPEC_VERSION = 1
DEFAULT_MAX_MESSAGE_BYTES = 8 * 1024 * 1024
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


class Step(BaseModel):
    """One step: a trigger or an action, its component key and its config."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str = Field(pattern=SLUG, max_length=63)
    component: str = Field(min_length=1)
    config: dict[str, Any] = Field(default_factory=dict)
    retry: RetryPolicy | None = None
    replicas: int = Field(1, ge=1)
    prefetch: int | None = Field(None, ge=1)

    @property
    def retry_policy(self) -> RetryPolicy:
        return self.retry or DEFAULT_RETRY

    def spec(self) -> dict:
        """The step as it appears in flow.yaml (defaults left out)."""
        return self.model_dump(mode="json", exclude_defaults=True)


def step(name: str, component: str, *, retry: RetryPolicy | dict | None = None, replicas: int = 1,
         prefetch: int | None = None, **config: Any) -> Step:
    """Shortcut: ``step("push", "http.request", method="POST", url="…")``."""
    return Step(name=name, component=component, config=config, retry=retry, replicas=replicas,
                prefetch=prefetch)


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
        for s in self.all_steps:
            if s.name in seen:
                raise ValueError(f"step name '{s.name}' is used twice; step names must be unique")
            seen.add(s.name)
        return self

    # -- navigation ---------------------------------------------------------------------------
    @property
    def all_steps(self) -> list[Step]:
        return [self.trigger, *self.steps]

    def step(self, name: str) -> Step:
        for s in self.all_steps:
            if s.name == name:
                return s
        names = [s.name for s in self.all_steps]
        raise SpecError(f"flow '{self.name}' has no step '{name}'{did_you_mean(name, names)} "
                        f"steps: {', '.join(names)}")

    def next_step(self, name: str) -> Step | None:
        """The step after ``name`` (None after the last)."""
        names = [s.name for s in self.all_steps]
        i = names.index(self.step(name).name)
        return self.all_steps[i + 1] if i + 1 < len(names) else None

    # -- value-object edits (copies) ----------------------------------------------------------
    def then(self, *steps: Step) -> Flow:
        return self.model_copy(update={"steps": [*self.steps, *steps]}).revalidated()

    def revalidated(self) -> Flow:
        return Flow.model_validate(self.model_dump(mode="python"))

    def with_parameters(self, overrides: dict[str, Any] | None = None, **kw: Any) -> Flow:
        """A copy with parameter values overridden; unknown names are a ParameterError."""
        merged = dict(self.parameters)
        for name, value in {**(overrides or {}), **kw}.items():
            if name not in self.parameters:
                known = ", ".join(sorted(self.parameters)) or "(none: add a 'parameters:' section)"
                raise ParameterError(f"unknown parameter '{name}'{did_you_mean(name, self.parameters)} "
                                     f"known parameters: {known}", field=name)
            merged[name] = coerce(value, Param.of(name, self.parameters[name]))
        return self.model_copy(update={"parameters": merged})

    def resolved(self) -> Flow:
        """A copy whose config strings have their ``{{ name }}`` templates filled from parameters."""
        data = self.model_dump(mode="python")
        for key in ("trigger",):
            data[key]["config"] = fill_templates(data[key]["config"], self.parameters, data[key]["name"])
        for s in data["steps"]:
            s["config"] = fill_templates(s["config"], self.parameters, s["name"])
        return Flow.model_validate(data)

    # -- spec ---------------------------------------------------------------------------------
    def spec(self) -> dict:
        d = self.model_dump(mode="json", exclude_defaults=True)
        d = {"flownb": SPEC_VERSION, **d}
        d["trigger"] = self.trigger.spec()
        d["steps"] = [s.spec() for s in self.steps]
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
        try:
            spec = self.resolved().spec()
        except ParameterError:  # a template naming no parameter: validation reports it; hash as written
            spec = self.spec()
        return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:8 if short else 16]

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

    def _repr_mimebundle_(self, include=None, exclude=None):
        from .display import flow_mimebundle
        return flow_mimebundle(self)


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
        msg = err["msg"]
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
    if len(loc) >= 2 and loc[-2] == "retry":
        model = RetryPolicy
    return list(model.model_fields)


def load(source: str | Path) -> Flow:
    """Load a flow from a path to flow.yaml or from YAML text (bounded: see :mod:`flownb._yaml`)."""
    text, name = _read(source)
    return from_spec(_yaml.load(text, source=name), source=name)


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
