"""Notebook experience: rich display, MappingEditor, FlowBuilder, Monitor (imports pandas/ipywidgets).

Imported lazily by ``flownb.MappingEditor`` & co., so workers never load ipywidgets.
"""

from __future__ import annotations

from .builder import FlowBuilder
from .display import FLOW_MIME, Table, flow_mimebundle, flow_svg, test_result_mimebundle
from .mapping_editor import MappingEditor
from .monitor import Monitor

__all__ = ["MappingEditor", "FlowBuilder", "Monitor", "Table", "FLOW_MIME", "flow_mimebundle", "flow_svg",
           "test_result_mimebundle"]
