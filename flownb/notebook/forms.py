"""Draw an ipywidgets form from a component's pydantic ``Config`` model, and read it back.

text → Text; int/float with a numeric default → IntText/FloatText; ``Literal``/``Enum`` → Dropdown;
bool → Checkbox; fields ending in ``_env`` → Text asking for an environment-variable *name* (a secret
never goes into a spec); durations (``30s``) and optional numbers → Text (pydantic parses them);
dicts, lists and anything else → a YAML Textarea.
"""

from __future__ import annotations

import enum
import types
import typing
from typing import Any, Literal

import ipywidgets as w
import yaml
from pydantic import BaseModel

from .._duration import format_duration, parse_duration

__all__ = ["ConfigForm"]

_UNSET = object()


def _unwrap(ann: Any) -> tuple[Any, bool]:
    """``(inner, optional)`` for ``X | None`` / ``Optional[X]``."""
    origin = typing.get_origin(ann)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return ann, False


def _choices(ann: Any) -> list | None:
    if typing.get_origin(ann) is Literal:
        return list(typing.get_args(ann))
    if isinstance(ann, type) and issubclass(ann, enum.Enum):
        return [m.value for m in ann]
    return None


def _has_parser(info) -> bool:
    return any(type(m).__name__ == "BeforeValidator" for m in info.metadata)


class _Field:
    """One form field: its widget and how to read a config value out of it."""

    def __init__(self, name: str, info, value: Any):
        self.name = name
        self.required = info.is_required()
        self.default = None if self.required else info.get_default(call_default_factory=True)
        ann, optional = _unwrap(info.annotation)
        self.kind = self._kind(name, ann, optional, info)
        help_text = info.description or ""
        label = name + (" *" if self.required else "")
        style = {"description_width": "11em"}
        layout = w.Layout(width="34em")
        current: Any = self.default if value is _UNSET else value
        if self.kind in ("int", "float") and isinstance(current, str):
            self.kind = "text"  # a template such as '{{ batch }}' or a duration string
        elif self.kind in ("int", "float") and not isinstance(current, (int, float)):
            self.kind = "yaml"  # not a number (null, a list): kept as written, validation names it
        if self.kind == "choice":
            opts = _choices(ann) or []
            options = ([("(default)", None)] if optional else []) + [(str(o), o) for o in opts]
            if isinstance(current, str) and current not in opts:
                options.append((current, current))  # a '{{ param }}' template keeps its place
                opts = [*opts, current]
            self.widget = w.Dropdown(options=options, value=current if current in opts else
                                     (None if optional else (opts[0] if opts else None)),
                                     description=label, style=style, layout=layout)
        elif self.kind == "bool":
            # indented by the label column, so the box lines up with the other fields' inputs
            self.widget = w.Checkbox(value=bool(current), description=label, indent=True, style=style,
                                     layout=w.Layout(width="auto"))
        elif self.kind == "int":
            self.widget = w.IntText(value=int(current), description=label, style=style, layout=layout)
        elif self.kind == "float":
            self.widget = w.FloatText(value=float(current), description=label, style=style, layout=layout)
        elif self.kind == "yaml":
            text = "" if current in (None, {}, []) and value is _UNSET else _yaml(current)
            example = "YAML, e.g. [a, b]" if typing.get_origin(ann) in (list, tuple, set) or ann in (list, tuple, set) \
                else "YAML, e.g. key: value"
            # as tall as what it holds (a mapping's fields are read whole, not scrolled), up to 16 lines
            self.widget = w.Textarea(value=text, description=label, placeholder=example, style=style,
                                     rows=max(3, min(text.count("\n") + 2, 16)), layout=w.Layout(width="48em"))
        else:
            text = "" if current is None else str(current)
            if _has_parser(info) and isinstance(current, float) and not isinstance(current, bool):
                text = format_duration(current)
            placeholder = "name of an environment variable, e.g. CRM_TOKEN" if self.kind == "env" else ""
            self.widget = w.Text(value=text, description=label, placeholder=placeholder, style=style,
                                 layout=layout, continuous_update=False)
            if self.kind == "env":
                help_text = (help_text + " — " if help_text else "") + \
                    "secret: give the NAME of an environment variable, never the value"
        self.widget.tooltip = help_text or None
        self.widget.add_class(f"flownb-config-{name}")

    @staticmethod
    def _kind(name: str, ann: Any, optional: bool, info) -> str:
        if name.endswith("_env"):
            return "env"
        if _choices(ann) is not None:
            return "choice"
        if ann is bool:
            return "bool"
        numeric_default = not info.is_required() and isinstance(info.get_default(), (int, float))
        if ann is int and numeric_default and not optional:
            return "int"
        if ann is float and numeric_default and not optional and not _has_parser(info):
            return "float"
        if ann in (str, int, float) or _has_parser(info):
            return "text"
        return "yaml"

    def read(self) -> Any:
        """The config value, or ``_UNSET`` to leave the key out (default / empty)."""
        v = self.widget.value
        if self.kind == "yaml":
            if not v.strip():
                return _UNSET
            try:
                v = yaml.safe_load(v)
            except yaml.YAMLError as exc:
                raise ValueError(f"'{self.name}' is not valid YAML: {getattr(exc, 'problem', exc)}") from None
        elif self.kind in ("text", "env"):
            if self.kind == "env":
                v = v.strip()
            if v.strip() == "":
                return _UNSET
        if not self.required and _same(v, self.default):
            return _UNSET
        return v


def _same(a: Any, b: Any) -> bool:
    if isinstance(b, (int, float)) and not isinstance(b, bool) and isinstance(a, str):
        try:
            return parse_duration(a) == float(b)  # '5m' == 300.0; '300' == 300
        except ValueError:
            return False
    try:
        return a == b or (str(a) == str(b) and not isinstance(a, bool))
    except Exception:  # an exotic default that cannot be compared: keep the value
        return False


def _yaml(value: Any) -> str:
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    return yaml.safe_dump(value, sort_keys=False, default_flow_style=False).strip()


class ConfigForm:
    """The form of one component config model; ``.config()`` reads a dict for ``Step.config``."""

    def __init__(self, model: type[BaseModel], config: dict | None = None, on_change=None):
        config = config or {}
        self.fields = [_Field(n, info, config.get(n, _UNSET)) for n, info in model.model_fields.items()]
        known = set(model.model_fields)
        self.extra = {k: v for k, v in config.items() if k not in known}  # kept: validation names them
        # shown open: required fields and those the config sets (a mapping's fields are its point);
        # the untouched optional ones are folded away, so the form stays short
        required = [f.widget for f in self.fields if f.required or f.name in config]
        optional = [f.widget for f in self.fields if not (f.required or f.name in config)]
        children = list(required)
        if optional:
            more = w.Accordion(children=[w.VBox(optional)], selected_index=None)
            more.set_title(0, f"options ({len(optional)})")
            more.add_class("flownb-config-options")
            children.append(more)
        self.widget = w.VBox(children)
        self.widget.add_class("flownb-config-form")
        if on_change is not None:
            for f in self.fields:
                f.widget.observe(lambda _c: on_change(), names="value")

    def config(self) -> dict:
        """The config dict (defaults and empty fields left out); ValueError for unparsable YAML."""
        out = dict(self.extra)
        for f in self.fields:
            v = f.read()
            if v is not _UNSET:
                out[f.name] = v
        return out

    def set(self, name: str, value: Any) -> None:
        for f in self.fields:
            if f.name == name:
                f.widget.value = _yaml(value) if f.kind == "yaml" else value
                return
        raise KeyError(name)
