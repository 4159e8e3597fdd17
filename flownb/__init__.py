"""flownb: integration flows built in Jupyter, run in production unchanged.

The public API is what ``__all__`` lists. Notebook-only parts (``Mapping`` preview on DataFrames,
``MappingEditor``, ``FlowBuilder``, ``Monitor``) are imported lazily, so a worker container never
imports pandas or ipywidgets.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from ._duration import Duration, format_duration, parse_duration
from .components.base import Action, Context, PollingTrigger, WebhookTrigger, action, polling_trigger
from .errors import (
    BrokerError,
    ConfigError,
    DeployError,
    ExpressionError,
    FatalError,
    FlownbError,
    MessageError,
    ParameterError,
    Retry,
    RetryableError,
    SpecError,
    StepError,
    UnknownComponentError,
)
from .flow import Flow, RetryPolicy, Step, load, save, step
from .message import Message
from .registry import register

__version__ = "0.1.0"

_LAZY = {
    "Mapping": "flownb.rules",
    "python_step": "flownb.components.python",
    "python_poll": "flownb.components.python",
    "MappingEditor": "flownb.notebook",
    "FlowBuilder": "flownb.notebook",
    "Monitor": "flownb.notebook",
    "DeadLetterWorkbench": "flownb.notebook",
    "TestResult": "flownb.runtime.local",
    "LocalRuntime": "flownb.runtime.local",
    "dead_letters": "flownb.workbench",
    "replay": "flownb.workbench",
    "trace": "flownb.recorder",
}

__all__ = [
    "__version__", "Flow", "Step", "RetryPolicy", "step", "load", "save", "Message",
    "Action", "PollingTrigger", "WebhookTrigger", "Context", "action", "polling_trigger", "register",
    "Duration", "parse_duration", "format_duration",
    "FlownbError", "SpecError", "ConfigError", "ParameterError", "ExpressionError",
    "UnknownComponentError", "MessageError", "StepError", "Retry", "RetryableError", "FatalError",
    "BrokerError", "DeployError",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'flownb' has no attribute '{name}'")
