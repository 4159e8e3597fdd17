"""The secrets a flow reads: environment variables named by ``*_env`` config fields.

A spec never holds a secret; a field such as ``token_env: CRM_TOKEN`` names the variable that holds
it. :func:`required_env` lists every such variable with the step and field that name it (the one
walk of a flow's config for secrets: deploy, ``flownb validate`` and the runtimes use it), and
:func:`check_env` refuses to start when one is unset — before a single message is consumed, so an
unset secret is exit 2 naming the step, field and variable, not a dead letter per message.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping

from .errors import ConfigError

__all__ = ["EnvVar", "required_env", "missing_env", "check_env", "walk_config"]


@dataclass(frozen=True)
class EnvVar:
    step: str
    field: str     # dotted path in the step's config, e.g. "auth.token_env"
    name: str      # the environment variable


def walk_config(config: Any, path: str = "") -> Iterator[tuple[str, str, Any]]:
    """(dotted path, key, value) of every entry of a nested config, depth first."""
    if isinstance(config, dict):
        for k, v in config.items():
            where = f"{path}.{k}" if path else str(k)
            yield where, str(k), v
            yield from walk_config(v, where)
    elif isinstance(config, list):
        for i, v in enumerate(config):
            yield from walk_config(v, f"{path}[{i}]")


def required_env(flow: Any, steps: Iterable[str] | None = None) -> list[EnvVar]:
    """Every variable named by a ``*_env`` field of ``flow`` (of ``steps`` only, when given), in step
    order. A field left empty (``None``/``""``) names nothing."""
    only = set(steps) if steps is not None else None
    out: list[EnvVar] = []
    for s in flow.all_steps:
        if only is not None and s.name not in only:
            continue
        for where, key, value in walk_config(s.config):
            if key.endswith("_env") and isinstance(value, str) and value:
                out.append(EnvVar(s.name, where, value))
    return out


def missing_env(flow: Any, steps: Iterable[str] | None = None,
                environ: Mapping[str, str] | None = None) -> list[EnvVar]:
    env = os.environ if environ is None else environ
    return [v for v in required_env(flow, steps) if v.name not in env]


def check_env(flow: Any, steps: Iterable[str] | None = None, environ: Mapping[str, str] | None = None) -> None:
    """Raise ConfigError (exit 2) naming the step, field and variable of the first unset secret, and
    listing all of them when several are missing."""
    missing = missing_env(flow, steps, environ)
    if not missing:
        return
    first = missing[0]
    others = ""
    if len(missing) > 1:
        others = " (also unset: " + ", ".join(f"{v.name} for step '{v.step}' field '{v.field}'"
                                               for v in missing[1:]) + ")"
    raise ConfigError(f"environment variable '{first.name}' is not set{others}; export it before "
                      f"starting (nothing was consumed), or check the name with 'flownb validate --env'",
                      step=first.step, field=first.field)
