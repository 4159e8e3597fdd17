"""Component registry: ``register`` / ``get`` / entry points (group ``flownb.components``).

Built-ins and third-party packages register the same way, through the entry-point group
``flownb.components`` (``key = "package.module:Class"``); entry points are loaded lazily, so a
worker imports only the components its step uses. ``register`` adds a class at run time (notebooks).
"""

from __future__ import annotations

import re
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from .errors import ConfigError, SpecError, UnknownComponentError, did_you_mean

if TYPE_CHECKING:
    from .components.base import Component
    from .flow import Flow, Step

__all__ = ["GROUP", "register", "get", "available", "describe", "validate_step", "validate_flow"]

GROUP = "flownb.components"
_registered: dict[str, type[Component]] = {}
_eps: dict[str, Any] | None = None


def _entry_points() -> dict[str, Any]:
    global _eps
    if _eps is None:
        _eps = {ep.name: ep for ep in entry_points(group=GROUP)}
    return _eps


def register(key: str, cls: type[Component] | None = None):
    """Register ``cls`` under ``key``; usable as a class decorator: ``@register("my.action")``."""
    def deco(c: type[Component]) -> type[Component]:
        c.key = key
        _registered[key] = c
        return c
    return deco(cls) if cls is not None else deco


def available() -> list[str]:
    return sorted(set(_registered) | set(_entry_points()))


def get(key: str, *, step: str | None = None) -> type[Component]:
    """The component class for ``key``; UnknownComponentError suggests the nearest installed key."""
    if key in _registered:
        return _registered[key]
    ep = _entry_points().get(key)
    if ep is None:
        raise UnknownComponentError(key, available(), step=step)
    try:
        cls = ep.load()
    except Exception as exc:  # a broken third-party package must not look like a missing one
        raise SpecError(f"component '{key}' is installed ({ep.value}) but fails to import: {exc!r}; "
                        f"reinstall the package that provides it", step=step, field="component") from exc
    cls.key = key
    _registered[key] = cls
    return cls


def describe(key: str) -> dict:
    """Key, kind, description and config fields (name, type, required, default, help)."""
    cls = get(key)
    fields = []
    for name, f in cls.Config.model_fields.items():
        fields.append({
            "name": name,
            "type": _type_name(f.annotation),
            "required": f.is_required(),
            "default": None if f.is_required() else f.get_default(call_default_factory=True),
            "help": f.description or "",
        })
    return {"key": key, "kind": cls.kind, "description": plain_text(cls.__doc__ or ""), "fields": fields}


_RST_ROLE = re.compile(r":[\w:]+:`~?([^`]+)`")


def plain_text(doc: str) -> str:
    """The first paragraph of a docstring as one line of plain text (no reStructuredText markup)."""
    para = []
    for line in doc.strip().splitlines():
        if not line.strip():
            break
        para.append(line.strip())
    text = _RST_ROLE.sub(r"\1", " ".join(para))
    return text.replace("``", "")


def _type_name(ann: Any) -> str:
    name = getattr(ann, "__name__", None)
    return name if name and not str(ann).startswith("typing.") else str(ann).replace("typing.", "")


def _config_error(exc: ValidationError, step: Step, cls: type[Component]) -> ConfigError:
    err = next((e for e in exc.errors() if e["type"] == "extra_forbidden"), exc.errors()[0])  # a typo first
    field = ".".join(str(p) for p in err["loc"]) or None
    allowed = list(cls.Config.model_fields)
    if err["type"] == "extra_forbidden":
        msg = (f"unknown config field{did_you_mean(str(err['loc'][-1]), allowed)} "
               f"'{step.component}' accepts: {', '.join(allowed)}")
    elif err["type"] == "missing":
        msg = f"required by '{step.component}'; add it under config (accepted: {', '.join(allowed)})"
    else:
        msg = f"{err['msg']} (got {err.get('input')!r})"
    return ConfigError(msg, step=step.name, field=f"config.{field}" if field else "config")


def validate_step(step: Step, *, trigger: bool) -> BaseModel:
    """Validate one (parameter-resolved) step against its component; return the config model."""
    cls = get(step.component, step=step.name)
    is_trigger = cls.kind != "action"
    if trigger and not is_trigger:
        raise ConfigError(f"'{step.component}' is an action, but the first step must be a trigger "
                          f"(a poll, webhook or schedule component)", step=step.name, field="component")
    if not trigger and is_trigger:
        raise ConfigError(f"'{step.component}' is a trigger; a flow has exactly one trigger, first",
                          step=step.name, field="component")
    raw = step.route.component_config() if step.route is not None else step.config
    try:
        config = cls.Config.model_validate(raw)
    except ValidationError as exc:
        raise _config_error(exc, step, cls) from None
    cls.check_config(config, step)
    return config


def validate_flow(flow: Flow) -> dict[str, BaseModel]:
    """Resolve parameters and validate every step; nothing runs if anything is wrong."""
    resolved = flow.resolved()
    out = {resolved.trigger.name: validate_step(resolved.trigger, trigger=True)}
    for s in [*resolved.actions, *resolved.error_steps]:
        out[s.name] = validate_step(s, trigger=False)
    return out


# -- the field tables of docs/components.md ------------------------------------------------------

_FIELDS_BLOCK = re.compile(r"(<!-- fields: ([\w.]+) -->\n).*?(<!-- /fields -->)", re.S)


def field_rows(key: str) -> list[tuple[str, str, str, str]]:
    """(field, type as written in YAML, default, help) of a component's config, required fields
    first: durations are ``duration`` with defaults such as ``30s``, a required field's default is
    ``required``."""
    import json

    from ._duration import format_duration, parse_duration
    model = get(key).Config.model_fields
    rows = []
    for f in describe(key)["fields"]:
        duration = any(getattr(m, "func", None) is parse_duration for m in model[f["name"]].metadata)
        if f["required"]:
            default = "required"
        elif f["default"] is None:
            default = "none"
        elif duration:
            default = format_duration(f["default"])
        else:
            default = json.dumps(f["default"], default=str)
        kind = "duration" if duration else f["type"]
        if kind.startswith("Literal["):  # the choices, as written in YAML
            kind = " | ".join(c.strip().strip("'\"") for c in kind[len("Literal["):-1].split(","))
        rows.append((f["name"], kind, default, f["help"]))
    rows.sort(key=lambda r: r[2] != "required")  # stable: the model's order within each group
    return rows


def fields_table(key: str) -> str:
    """A Markdown table of a component's config fields (name, type, default, help), rendered from
    its config model; docs/components.md holds one per component (tested: they must not drift)."""
    rows = ["| field | type | default | meaning |", "|---|---|---|---|"]
    for name, kind, default, help_ in field_rows(key):
        if default not in ("required", "none"):
            default = f"`{default}`"
        cell = help_.replace("|", "\\|") or "–"
        kind = kind.replace("|", "\\|")
        rows.append(f"| `{name}` | `{kind}` | {default} | {cell} |")
    return "\n".join(rows) + "\n"


def render_field_tables(text: str) -> str:
    """``text`` with every ``<!-- fields: KEY -->…<!-- /fields -->`` block rendered afresh."""
    return _FIELDS_BLOCK.sub(lambda m: m.group(1) + fields_table(m.group(2)) + m.group(3), text)


