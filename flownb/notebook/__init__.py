"""Notebook experience: rich display, MappingEditor, FlowBuilder, Monitor (imports pandas/ipywidgets).

The widgets are imported lazily; the rich display they share with ``Flow``/``Message``/``TestResult``
reprs and export is :mod:`flownb.display`, which loads neither ipywidgets nor pandas.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from ..display import FLOW_MIME, Table, flow_mimebundle, flow_svg, test_result_mimebundle

_LAZY = {"MappingEditor": ".mapping_editor", "FlowBuilder": ".builder", "Monitor": ".monitor",
         "DeadLetterWorkbench": ".dead_letter_workbench"}

__all__ = ["MappingEditor", "FlowBuilder", "Monitor", "DeadLetterWorkbench", "Table", "FLOW_MIME", "flow_mimebundle",
           "flow_svg",
           "test_result_mimebundle"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'flownb.notebook' has no attribute '{name}'")
